"""`rdtf launch train --config F --data DATASET --out RUN`: `rdtf train` on several processes or machines, with
DeepSpeed's launcher (default) or on a Ray cluster through Ray Train (`--backend ray`). Both run the same
trainer/train.py loop, and both resume from the last checkpoint in RUN when launched again (docs/scale-out.md says
which to choose).

- deepspeed: `deepspeed [--hostfile HOSTS] --num_gpus N --module jobs.cli train ...` on this machine, which starts
  N processes on every host of HOSTS over SSH (pdsh); RUN and DATASET must be on storage every host reaches.
- ray: a Ray job (jobs/ray_jobs.py) whose driver (jobs/ray_train.py) runs a TorchTrainer of N workers; Ray Train
  makes the process group, DeepSpeed joins it. The job first runs the preflight of jobs/preflight.py: every node of
  the cluster must read DATASET and share RUN, or the job fails naming the node and the path before any training.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
from typing import Any

from rdtf.jobs.args import config_file, port, positive_float, positive_int
from rdtf.jobs.ray_jobs import ADDRESS_ENV, connect, follow, outcome, working_dir
from rdtf.jobs.submit import cluster_path
from rdtf.jobs.train import FLAG_KEYS, parse_sets
from rdtf.schemas.config import ConfigError, load, to_dict

CONFIG_FILE = "rdtf_train_config.json"  # the resolved config, in a Ray job's working_dir


def add_launch_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "launch",
        help="run training on several processes or machines (deepspeed launcher or Ray Train)",
        description="Launch `rdtf train` on several processes: DeepSpeed's launcher on this machine or the hosts of "
        "--hostfile, or Ray Train's TorchTrainer on a Ray cluster (--backend ray). Launching again on the same --out "
        "resumes from its last checkpoint.",
        epilog="docs/scale-out.md",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    train = kinds.add_parser("train", help="rdtf train on several processes")
    train.add_argument(
        "--config", required=True, type=config_file, metavar="FILE", help="a preset (tiny, small, paper) or a YAML file"
    )
    train.add_argument("--data", required=True, metavar="DATASET", help="a dataset every process can read")
    train.add_argument("--out", required=True, metavar="RUN", help="the run folder, on storage every process reaches")
    train.add_argument("--steps", type=int, help="train until this optimizer step (run.max_steps)")
    train.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable"
    )
    train.add_argument("--backend", choices=("deepspeed", "ray"), default="deepspeed", help="(deepspeed)")
    ds = train.add_argument_group("--backend deepspeed")
    ds.add_argument("--hostfile", metavar="HOSTS", help="DeepSpeed hostfile (`host slots=N` a line); default: here")
    ds.add_argument(
        "--num-gpus",
        type=positive_int,
        metavar="N",
        help="processes per host, one per GPU (CPU-only hosts: N processes)",
    )
    ds.add_argument("--master-port", type=port, help="rendezvous port on the first host (default: a free one)")
    ray = train.add_argument_group("--backend ray")
    ray.add_argument("--address", metavar="URL", help=f"the head's job API, http://HEAD:8265 (${ADDRESS_ENV})")
    ray.add_argument("--num-workers", type=positive_int, default=1, metavar="N", help="training processes (1)")
    ray.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL); default CPU (gloo)")
    ray.add_argument(
        "--cpus-per-worker", type=positive_float, default=1.0, help="CPUs per worker (1; 0.5 on small machines)"
    )
    ray.add_argument("--wait", action="store_true", help="follow the job's log; exit with its outcome")
    train.set_defaults(run=run_train)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(args: argparse.Namespace) -> list[str]:
    """The `rdtf train` options every process gets (the config file is read by each of them)."""
    extra = ["--steps", str(args.steps)] if args.steps is not None else []
    return [*extra, *(item for pair in args.sets for item in ("--set", pair))]


def deepspeed_command(args: argparse.Namespace) -> list[str]:
    """The deepspeed launcher's command line for `rdtf train` with these arguments."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if args.hostfile:
        if not os.path.isfile(args.hostfile):
            raise ConfigError(f"--hostfile {args.hostfile}: no such file")
        command += ["--hostfile", args.hostfile]
    if args.num_gpus is not None:
        command += ["--num_gpus", str(args.num_gpus)]
    command += ["--master_port", str(args.master_port or _free_port()), "--module", "rdtf.jobs.cli", "train"]
    return command + ["--config", args.config, "--data", args.data, "--out", args.out, *_train_args(args)]


def run_train(args: argparse.Namespace) -> int:
    from rdtf.trainer.config import TrainConfig  # torch-free, but not needed by `rdtf --help`

    overrides = {FLAG_KEYS["steps"]: args.steps} if args.steps is not None else {}
    cfg = load(TrainConfig, args.config, overrides | parse_sets(args.sets))  # a bad key fails here, before launching
    if args.backend == "deepspeed":
        if args.address or args.wait or args.use_gpu:
            raise ConfigError("--address, --wait and --use-gpu belong to --backend ray")
        return subprocess.run(deepspeed_command(args)).returncode
    if args.hostfile or args.num_gpus is not None:
        raise ConfigError("--hostfile and --num-gpus belong to --backend deepspeed; with ray use --num-workers")
    return _submit_ray(args, to_dict(cfg))


def ray_entrypoint(args: argparse.Namespace, data: str, out: str) -> str:
    """The Ray job's command: the preflight on every node (reads DATASET, shares RUN), then the Ray Train driver."""
    preflight = ["python", "-m", "rdtf.jobs.preflight", data, "--out", out]
    train = [
        *("python", "-m", "rdtf.jobs.ray_train", "--config", CONFIG_FILE, "--data", data, "--out", out),
        *("--num-workers", str(args.num_workers), "--cpus-per-worker", str(args.cpus_per_worker)),
        *(["--use-gpu"] if args.use_gpu else []),
    ]
    return f"{shlex.join(preflight)} && {shlex.join(train)}"


def _submit_ray(args: argparse.Namespace, config: dict[str, Any]) -> int:
    data, out = cluster_path(args.data, "--data"), cluster_path(args.out, "--out")
    client = connect(args.address)
    entrypoint = ray_entrypoint(args, data, out)
    with working_dir({CONFIG_FILE: json.dumps(config, indent=2)}) as folder:
        runtime_env = {"working_dir": folder, "env_vars": {"PYTHONUNBUFFERED": "1"}}
        metadata = {"rdtf_command": "train", "rdtf_output": out}
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)
    print(job_id)
    sys.stdout.flush()
    print(f"submitted job {job_id} to {client.get_address()}", file=sys.stderr)
    if not args.wait:
        return 0
    follow(client, job_id)
    return outcome(client, job_id)
