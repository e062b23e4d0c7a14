"""The driver of `rdtf launch train --backend ray`, run as a Ray job: a Ray Train TorchTrainer whose workers each
run trainer/train.py's `train()`. Ray Train makes the process group (gloo on CPU, NCCL on GPU) and sets RANK,
WORLD_SIZE and LOCAL_RANK; the trainer finds the group made and DeepSpeed joins it.

Checkpoints are the trainer's own (DeepSpeed's, in RUN/checkpoints on storage every node reaches): a worker group
that Ray restarts, or a job launched again on the same RUN, resumes from the last one. Each one is also reported to
Ray Train (`ray.train.report`, with its step and loss) as a small checkpoint that points at it (POINTER_FILE: the
step, the loss and the checkpoint's folder or URI), not as a copy: a copy would write every checkpoint twice. So
`Result.checkpoint` and Ray's records name the trainer's checkpoints, which `rdtf sample`/`eval`/`export` read.

Run by the job only: `python -m rdtf.jobs.ray_train --config rdtf_train_config.json --data D --out RUN --num-workers N`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

POINTER_FILE = "rdtf_checkpoint.json"  # the checkpoint Ray Train keeps: where the trainer's own one is


def report_checkpoint(record: dict[str, Any]) -> None:
    """On every worker after each checkpoint (Ray Train wants as many reports from each): rank 0's report carries
    the pointer as a Ray Train checkpoint, which Ray copies into its storage before this returns."""
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(record)
        return
    with tempfile.TemporaryDirectory(prefix="rdtf-pointer-") as folder:
        with open(os.path.join(folder, POINTER_FILE), "w") as f:
            json.dump(record, f)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the same `train()` as `rdtf train`, its checkpoints and summary reported to Ray Train."""
    import ray.train

    from rdtf.jobs.console import importing_quietly, quiet_libraries
    from rdtf.schemas.config import from_dict
    from rdtf.trainer.config import TrainConfig

    quiet_libraries()
    with importing_quietly():
        from rdtf.trainer.train import train

    summary = train(from_dict(TrainConfig, config["config"]), config["data"], config["out"], report_checkpoint)
    if summary.is_main:
        print("\n".join(summary.lines()), flush=True)
    ray.train.report({"end_step": summary.end_step, "last_loss": summary.last_loss})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdtf.jobs.ray_train")
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-workers", type=int, required=True)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--use-gpu", action="store_true")
    args = parser.parse_args(argv)

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rdtf.jobs.train import run_lock

    with open(args.config) as f:
        config = json.load(f)
    resources = {"CPU": args.cpus_per_worker} | ({"GPU": 1} if args.use_gpu else {})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config, "data": args.data, "out": args.out},
        scaling_config=ScalingConfig(
            num_workers=args.num_workers, use_gpu=args.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if args.use_gpu else "gloo"),
        # Ray Train's own records, and its checkpoints: pointers to the trainer's (report_checkpoint).
        run_config=RunConfig(name="ray_train", storage_path=os.path.join(args.out, "ray_train")),
    )
    with run_lock(args.out):  # the driver holds the run folder's lock while the workers train (jobs/train.py)
        trainer.fit()  # raises when the workers failed (after Ray Train's retries): the job then FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
