"""`rdtf submit batch SPEC.yaml`: many preprocessing jobs from one spec (one per input partition or dataset, each
with its own output), validated whole before the first is submitted, and a summary table at the end.

A spec (paths of config files are read relative to the spec):

    address: http://127.0.0.1:8265     # optional; --address and RAY_API_SERVER_ADDRESS also work
    config: configs/preprocess.yaml    # optional, for every job
    set: {decode.fps: 4}               # optional, for every job
    jobs:
      - inputs: [s3://bucket/stickers/part-0/]
        out: s3://bucket/datasets/part-0
      - inputs: [/shared/more/stickers.csv]
        out: /shared/datasets/more
        set: {filters.min_frames: 2}   # on top of the batch's
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from rdtf.jobs.ray_jobs import ADDRESS_ENV, connect, job_info, wait_until_done
from rdtf.jobs.submit import resolve, submit_preprocess
from rdtf.pipeline.lock import OutputLockedError
from rdtf.schemas.config import ConfigError, load, require


@dataclass
class BatchJob:
    """One job: `rdtf preprocess INPUTS --out OUT` with its own settings over the batch's."""

    inputs: tuple[str, ...] = ()  # folders, globs, manifests or files as the cluster sees them (absolute or URIs)
    out: str = ""  # absolute path or URI; one job per output
    config: str | None = None  # a YAML file read here, instead of the batch's config
    set: dict[str, Any] = field(default_factory=dict)  # dotted config keys, over the batch's `set`


@dataclass
class BatchSpec:
    """Everything `rdtf submit batch` submits."""

    jobs: tuple[BatchJob, ...] = ()
    address: str | None = None  # the job API, http://HEAD:8265; --address wins
    config: str | None = None  # a YAML file read here, for every job
    set: dict[str, Any] = field(default_factory=dict)  # dotted config keys for every job

    def __post_init__(self) -> None:
        require(len(self.jobs) > 0, "jobs", "list at least one job (inputs and out)")
        require(isinstance(self.set, dict), "set", f"expected a mapping of config keys, got {self.set!r}")
        seen: dict[str, int] = {}
        for i, job in enumerate(self.jobs):
            require(len(job.inputs) > 0, f"jobs[{i}].inputs", "name at least one input")
            require(job.out != "", f"jobs[{i}].out", "give the job's output")
            require(isinstance(job.set, dict), f"jobs[{i}].set", f"expected a mapping of config keys, got {job.set!r}")
            out = job.out.rstrip("/")
            require(out not in seen, f"jobs[{i}].out", f"{job.out} is also the output of jobs[{seen.get(out)}]")
            seen[out] = i


def add_batch_parser(kinds: Any) -> None:
    parser = kinds.add_parser(
        "batch",
        help="many preprocessing jobs from one spec",
        description="Submit one `rdtf preprocess` Ray job per entry of SPEC.yaml (its format: jobs/batch.py), after "
        "checking the whole spec; print a table of the jobs. Jobs of the same work already running are attached to.",
    )
    parser.add_argument("spec", metavar="SPEC.yaml")
    parser.add_argument("--address", metavar="URL", help=f"the head's job API (spec's address, ${ADDRESS_ENV})")
    parser.add_argument("--wait", action="store_true", help="wait for every job; exit 0 only if all SUCCEEDED")
    parser.set_defaults(run=run_batch)


def _in_spec_folder(spec_path: str, path: str | None) -> str | None:
    return None if path is None else os.path.join(os.path.dirname(os.path.abspath(spec_path)), path)


def run_batch(args: argparse.Namespace) -> int:
    spec = load(BatchSpec, args.spec)
    resolved = []
    for i, job in enumerate(spec.jobs):  # every job checked before the first is submitted
        config = _in_spec_folder(args.spec, job.config or spec.config)
        try:
            resolved.append(resolve(list(job.inputs), job.out, config, spec.set | job.set))
        except ConfigError as error:
            raise ConfigError(f"jobs[{i}]: {error}") from error
    client = connect(args.address or spec.address)
    rows = []  # (job id, output, status or why it was refused)
    for inputs, out, config in resolved:
        try:
            job_id = submit_preprocess(client, inputs, out, config)
            rows.append((job_id, out, str(job_info(client, job_id).status)))
        except OutputLockedError as error:
            rows.append(("-", out, f"REFUSED: {error}"))
    if args.wait:
        rows = [(i, out, str(wait_until_done(client, i).status) if i != "-" else s) for i, out, s in rows]
    width = max(len(i) for i, _, _ in rows)
    print(f"{'JOB':<{width}}  {'STATUS':<10} OUTPUT")
    for job_id, out, status in rows:
        print(f"{job_id:<{width}}  {status.split(':')[0]:<10} {out}")
    for _, out, status in rows:
        if status.startswith("REFUSED"):
            print(f"{out}: {status}", file=sys.stderr)
    failed = [r for r in rows if r[2] != "SUCCEEDED"] if args.wait else [r for r in rows if r[0] == "-"]
    return 1 if failed else 0
