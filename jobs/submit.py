"""`rdtf submit preprocess INPUT... --out DATASET --address http://HEAD:8265`: `rdtf preprocess` as a Ray job.

The config is resolved here (--config, then --set) and shipped with this checkout's packages in the job's
`working_dir` (jobs/ray_jobs.py); the job runs a preflight (jobs/preflight.py: every node reads the inputs and
shares the output), then `python -m rdtf.jobs.cli preprocess ... --config` on the head node, which reaches the cluster's
workers from there.

One writer per output:
- the submission id is derived from the command, the inputs, the output and the resolved config, so submitting the
  same work again while it runs attaches to the running job (a later attempt, after the job ended, gets the next
  number: `rdtf-preprocess-<hash>-2`, and resumes what the earlier attempts left);
- other work on the same output is refused while a job writes it (the cluster's live jobs, and the output's lock
  when this machine can read the output), naming that job;
- two submissions that race past both checks meet the output lock inside the job (pipeline/lock.py): the second
  job fails naming the first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from typing import Any

from rdtf.jobs.ray_jobs import ADDRESS_ENV, ClusterError, connect, follow, outcome, working_dir
from rdtf.jobs.train import parse_sets
from rdtf.pipeline.config import PreprocessConfig
from rdtf.pipeline.lock import JOB_ENV, OutputLock, OutputLockedError, describe
from rdtf.schemas.config import ConfigError, load, to_dict
from rdtf.schemas.layout import DatasetLayout, check_uri

CONFIG_FILE = "rdtf_config.json"  # the resolved config, in the job's working_dir
# Read by the driver and every worker of the job: Ray Data's progress bars would fill the job log with redraws.
JOB_ENV_VARS = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}


def add_submit_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "submit",
        help="run a job on a Ray cluster through its job API",
        description="Submit rdtf work to a Ray cluster as a Ray job: this checkout's code and the resolved config "
        "travel with it; the cluster needs only the dependencies (ray_cluster.yaml, `make install`).",
        epilog="Follow and manage jobs with `rdtf jobs`. docs/scale-out.md",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    preprocess = kinds.add_parser(
        "preprocess",
        help="rdtf preprocess as a Ray job",
        description="`rdtf preprocess INPUT... --out DATASET` as a Ray job. Submitting the same work again while it "
        "runs attaches to the running job; after it stopped or failed, submitting again resumes it.",
    )
    preprocess.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="folders, globs, manifests or files, as the cluster sees them: "
        "absolute paths on a filesystem every node mounts, or URIs (s3://, gs://)",
    )
    preprocess.add_argument("--out", required=True, metavar="DATASET", help="absolute path or URI, as above")
    preprocess.add_argument(
        "--address", metavar="URL", help=f"the head's job API, http://HEAD:8265 (default ${ADDRESS_ENV})"
    )
    preprocess.add_argument("--config", metavar="FILE", help="YAML settings (configs/preprocess.yaml), read here")
    preprocess.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable"
    )
    preprocess.add_argument("--wait", action="store_true", help="follow the log; exit with the job's outcome")
    preprocess.set_defaults(run=run_preprocess)
    from rdtf.jobs.batch import add_batch_parser  # imported here: jobs.batch builds on this module

    add_batch_parser(kinds)


def cluster_path(value: str, flag: str) -> str:
    """A path as every node sees it: a URI, or an absolute path (the job runs in a folder of its own)."""
    check_uri(value)
    if "://" not in value and not os.path.isabs(value):
        raise ConfigError(
            f"{flag} {value!r}: give an absolute path (on a filesystem every node mounts) or a URI; a relative path "
            "would be read in the job's own folder on the cluster"
        )
    return value.rstrip("/") if len(value) > 1 else value


def work_id(command: str, inputs: list[str], out: str, config: dict[str, Any]) -> str:
    """`rdtf-<command>-<12 hex>` from everything that decides what the job writes."""
    work = json.dumps({"command": command, "inputs": inputs, "out": out, "config": config}, sort_keys=True)
    return f"rdtf-{command}-{hashlib.sha256(work.encode()).hexdigest()[:12]}"


def _live_job_on(client: Any, out: str) -> Any | None:
    """The cluster's running or pending job that writes `out`, if any."""
    for job in client.list_jobs():
        if not job.status.is_terminal() and (job.metadata or {}).get("rdtf_output") == out:
            return job
    return None


def _check_lock(out: str) -> None:
    """Refuse when the output's lock, read from this machine, has a live holder (a job of another cluster, or an
    `rdtf preprocess` run outside Ray Jobs). An output this machine cannot read is left to the job's own lock."""
    try:
        holder = OutputLock(DatasetLayout.at(out), owner="").live_holder()
    except (OSError, ValueError):
        return
    if holder is not None:
        raise OutputLockedError(
            f"{out} is being written by {describe(holder)} (host {holder.get('host')}, pid {holder.get('pid')}). "
            "Wait for it to finish (`rdtf jobs logs ID --follow`), or write to another --out."
        )


def _next_attempt(client: Any, base: str) -> str:
    """`base` for the first job of this work, then `base-2`, `base-3`, ... (Ray keeps ended jobs under their ids)."""
    taken = {job.submission_id for job in client.list_jobs()}
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def resolve(inputs: list[str], out: str, config_file: str | None, sets: dict[str, Any]) -> tuple[list, str, dict]:
    """(inputs, output, resolved config) of one preprocessing job, checked before anything is sent."""
    inputs = [cluster_path(value, "INPUT") for value in inputs]
    out = cluster_path(out, "--out")
    # The job reaches the cluster it runs on; the embedded-Ray settings (num_cpus) do not apply there.
    cfg = load(PreprocessConfig, config_file, sets | {"ray.address": "auto"})
    return inputs, out, to_dict(cfg)


def submit_preprocess(client: Any, inputs: list[str], out: str, config: dict[str, Any]) -> str:
    """Submit `rdtf preprocess` as a Ray job, or attach to the running job of the same work; returns the job id."""
    base = work_id("preprocess", inputs, out, config)
    address = client.get_address()
    running = _live_job_on(client, out)
    if running is not None and running.metadata.get("rdtf_work") == base:
        print(f"attached to job {running.submission_id} ({running.status}): it already runs this work", file=sys.stderr)
        return running.submission_id
    if running is not None:
        raise OutputLockedError(
            f"{out} is being written by Ray job {running.submission_id} ({running.status}) with other inputs or "
            f"settings. Wait for it (`rdtf jobs logs {running.submission_id} --follow`), stop it, or write to "
            "another --out."
        )
    _check_lock(out)
    job_id = _next_attempt(client, base)
    # The head's `python`: Ray must be started from the project's environment (ray_cluster.yaml).
    command = ["python", "-m", "rdtf.jobs.cli", "preprocess", *inputs, "--out", out, "--config", CONFIG_FILE]
    preflight = ["python", "-m", "rdtf.jobs.preflight", *inputs, "--out", out]  # every node reads and shares the paths
    with working_dir({CONFIG_FILE: json.dumps(config, indent=2)}) as folder:
        runtime_env = {"working_dir": folder, "env_vars": JOB_ENV_VARS | {JOB_ENV: job_id}}
        metadata = {"rdtf_command": "preprocess", "rdtf_output": out, "rdtf_work": base}
        try:
            client.submit_job(
                entrypoint=f"{shlex.join(preflight)} && {shlex.join([*command, '--no-progress'])}",
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata=metadata,
            )
        except RuntimeError as error:
            if "already exists" not in str(error):
                raise ClusterError(f"the Ray job API at {address} refused the job: {error}") from error
            print(f"attached to job {job_id}: submitted at the same moment from elsewhere", file=sys.stderr)
            return job_id
    print(f"submitted job {job_id} to {address}", file=sys.stderr)
    return job_id


def run_preprocess(args: argparse.Namespace) -> int:
    inputs, out, config = resolve(args.inputs, args.out, args.config, parse_sets(args.sets))
    client = connect(args.address)
    job_id = submit_preprocess(client, inputs, out, config)
    print(job_id)
    sys.stdout.flush()
    if not args.wait:
        print(f"follow it: rdtf jobs logs {job_id} --follow --address {client.get_address()}", file=sys.stderr)
        return 0
    try:
        follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nno longer following; job {job_id} runs on (rdtf jobs stop {job_id} ends it)", file=sys.stderr)
        return 130
    return outcome(client, job_id)
