"""One GPU session of rdtf's device checks, prepared here and run there in one call (docs/benchmarks.md, "GPU").

The lent GPU machine has its own python3 and torch and reaches no package index, and each session gets minutes of it,
so everything is prepared on this machine first and the run keeps to a time budget:

    .venv/bin/python bench/gpu_session.py prepare                 # here: .gpu/ (wheels, datasets), git-ignored
    # there, with .gpu carried (the command the device tool runs):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && \\
        PYTHONPATH=/tmp/site:.gpu/site python3 bench/gpu_session.py run --out $OUT --budget 500

`run` does, in this order, each part in its own process with its own time limit, writing what it has so far under
--out after every part (a part that fails or runs out of time is reported and the next one starts):
1. the machine: GPU, torch, and a bf16 matrix product's rate (the peak the MFU figures are shares of);
2. a 60-step probe of the tiny preset at --micro-batch times a step, so that the learning runs fit their time;
3. bench/learning.py on the synthetic corpus at the longest budget that fits (the learning curve against
   copy-nearest, issue 15); the tiny preset's step is host-bound on a GPU (docs/benchmarks.md), so a larger
   micro-batch than the CPU's 4 sees more clips in the same time;
4. with --train-step, bench/train_step.py: paper and small presets in bf16 under DeepSpeed ZeRO-2: clips/s, MFU,
   peak memory, the largest micro-batch (issue 5);
5. bench/learning.py on the shared stickers with the time left.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU_DIR = REPO / ".gpu"  # git-ignored through .git/info/exclude; carried to the device machine
PYTHON_TAG = "3.12"  # the device machine's python3
# What the device image lacks (its torch, numpy, pyarrow, PIL, scikit-image, tensorboard, yaml are used as they are).
WHEELS = (
    "diffusers==0.39.0",
    "open_clip_torch==3.3.0",
    "ftfy==6.3.1",
    "wcwidth==0.9.4",
    "hjson==3.1.0",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
)
LEARNING = ["--count", "600", "--frame-size", "64"]  # the same arguments in both places: the datasets must match


def prepare(args: argparse.Namespace) -> int:
    """Fill .gpu/: wheels for python 3.12, DeepSpeed's Python files (it ships no wheel; its ops are not needed with
    torch's AdamW), rdtf's metadata (`rdtf --version`), and the learning datasets, preprocessed here."""
    import deepspeed

    wheels, site = GPU_DIR / "whl", GPU_DIR / "site"
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.rmtree(site, ignore_errors=True)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (28, 17)] + ["--platform=manylinux2014_x86_64"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation=cp",
         f"--python-version={PYTHON_TAG}", *platforms, "-d", str(wheels), *WHEELS],
        check=True,
    )  # fmt: skip
    source = Path(deepspeed.__file__).parent
    for path in source.rglob("*.py"):
        target = site / "deepspeed" / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for info in [*source.parent.glob("deepspeed-*.dist-info"), *REPO.glob("*.egg-info")]:
        shutil.copytree(info, site / info.name)
    learning = [sys.executable, str(REPO / "bench" / "learning.py"), "--out", str(GPU_DIR / "learning"), *LEARNING]
    subprocess.run([*learning, "--prepare-only"], check=True)
    size = sum(p.stat().st_size for p in GPU_DIR.rglob("*") if p.is_file())
    print(f"prepared {GPU_DIR}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the tree)")
    return 0


class Session:
    """Runs the parts in order within the budget; keeps the log and the summary under `out` up to date."""

    def __init__(self, out: Path, budget: float):
        self.out, self.deadline, self.started = out, time.monotonic() + budget, time.monotonic()
        self.work = Path("/tmp/rdtf-gpu")
        self.summary: list[str] = []
        self.kept: list[Path] = []  # files of the parts so far, bundled with the log
        self.log = self.work / "log.txt"
        self.work.mkdir(parents=True, exist_ok=True)
        self.log.touch()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def part(self, name: str, command: list[str], limit: float) -> bool:
        """Run `command` (from the repository root) for at most `limit` seconds; True when it exited 0."""
        limit = min(limit, self.left())
        if limit < 20:
            self.note(f"{name}: skipped ({self.left():.0f} s left)")
            return False
        started = time.monotonic()
        with open(self.log, "a") as log:
            log.write(f"\n===== {name}: {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        took = time.monotonic() - started
        outcome = "ok" if code == 0 else ("out of time" if code is None else f"failed (exit {code})")
        self.note(f"{name}: {outcome} in {took:.0f} s")
        return code == 0

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.summary.append(line)
        self.save()

    def save(self, extra: list[Path] = ()) -> None:
        """Rewrite summary.md and bundle.tar.gz: the log and every file kept so far (`extra` joins them)."""
        self.kept += extra
        (self.out / "summary.md").write_text("\n".join(self.summary) + "\n")
        with tarfile.open(self.out / "bundle.tar.gz", "w:gz") as tar:
            tar.add(self.log, arcname="log.txt")
            for path in self.kept:
                tar.add(path, arcname=f"{path.parent.name}/{path.name}")


def machine_report(session: Session) -> float | None:
    """GPU, torch and the bf16 matrix rate (TFLOP/s, median of 10 after warm-up, random data)."""
    import torch

    if not torch.cuda.is_available():
        session.note(f"machine: no GPU, torch {torch.__version__}: a dry run of the parts on the CPU")
        return None
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    peak = 2 * 8192**3 / sorted(times)[5] / 1e12
    session.note(f"machine: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 matmul {peak:.0f} TFLOP/s")
    return peak


def seconds_per_step(learning_dir: Path, session: Session, batch: int) -> float | None:
    """Train 60 steps of the tiny preset with a checkpoint every 20; a step's time from the checkpoints' times."""
    run = session.work / "probe"
    command = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", "configs/tiny.yaml"]
    command += ["--data", str(learning_dir / "synthetic_train"), "--out", str(run), "--steps", "60"]
    settings = ("run.checkpoint_every=20", "run.keep_checkpoints=10", "run.log_every=20", f"optim.micro_batch={batch}")
    for setting in settings:
        command += ["--set", setting]
    if not session.part(f"probe (tiny, micro-batch {batch}, 60 steps)", command, 120):
        return None
    stamps = {}
    for folder in (run / "checkpoints").glob("step-*"):
        stamps[int(folder.name.split("-")[1])] = max(p.stat().st_mtime for p in folder.rglob("*") if p.is_file())
    value = (stamps[60] - stamps[20]) / 40
    session.note(f"tiny preset: {value * 1000:.0f} ms per training step at micro-batch {batch} (steps 20-60)")
    return value


def learning_part(session: Session, corpus: str, seconds: float, step_time: float, batch: int, clips: int) -> None:
    """bench/learning.py on one corpus, with as many steps as about 60% of `seconds` trains (the rest scores three
    checkpoints and draws the pictures); what it has is kept under --out even when it runs out of time."""
    every = int(0.6 * seconds / step_time) // 3 // 10 * 10
    if every < 10:
        session.note(f"learning {corpus}: skipped ({seconds:.0f} s is too little)")
        return
    steps, docs = 3 * every, session.out / f"learning_{corpus}"
    command = [sys.executable, "bench/learning.py", "--out", str(GPU_DIR / "learning"), *LEARNING]
    command += ["--corpora", corpus, "--steps", str(steps), "--shared-steps", str(steps), "--eval-every", str(every)]
    command += ["--eval-clips", str(clips), "--threads", "8", "--docs", str(docs), "--no-sweep"]
    command += ["--set", f"optim.micro_batch={batch}"]
    session.part(f"learning {corpus} ({steps} steps at micro-batch {batch}, scored every {every})", command, seconds)
    results, runs = GPU_DIR / "learning" / "results.json", GPU_DIR / "learning" / "runs"
    kept = [*runs.glob(f"{corpus}-*/metrics.jsonl"), *runs.glob(f"{corpus}-*.log")]
    if results.is_file():
        kept.append(session.work / f"learning_{corpus}.json")
        shutil.copy(results, kept[-1])
        results.unlink()  # the next corpus starts its own
    session.save(kept)


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    session = Session(args.out, args.budget)
    peak = machine_report(session)
    batch = args.micro_batch if peak is not None else 4  # the dry run on a CPU: the CPU's micro-batch
    clips = 32 if peak is not None else 4
    step_time = seconds_per_step(GPU_DIR / "learning", session, batch)
    if step_time is not None:
        learning_part(session, "synthetic", args.synthetic_share * session.left(), step_time, batch, clips)
    if args.train_step:
        command = [sys.executable, "bench/train_step.py", "--steps", "10", "--out", str(args.out / "train_step.json")]
        if peak is None:  # the dry run: the smallest shapes
            command += ["--presets", "tiny", "--baseline-channels", "32", "64", "--batch", "1", "--steps", "2"]
            command += ["--no-fit"]
        else:
            command += ["--peak-tflops", f"{peak:.0f}", "--max-batch", "64"]
        session.part("train step (paper, small, bf16, ZeRO-2)", command, min(150.0, 0.5 * session.left()))
    if step_time is not None:
        learning_part(session, "shared", session.left() - 10, step_time, batch, clips)
    session.note(f"session: {time.monotonic() - session.started:.0f} s of a {args.budget:.0f} s budget")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("prepare", help="here: fill .gpu/ with wheels and datasets")
    there = steps.add_parser("run", help="on the GPU machine: the checks, within --budget seconds")
    there.add_argument("--out", type=Path, required=True)
    there.add_argument("--budget", type=float, default=500.0, help="seconds for all parts (500)")
    there.add_argument("--micro-batch", type=int, default=32, help="the learning runs' micro-batch on a GPU (32)")
    there.add_argument("--synthetic-share", type=float, default=0.7,
                       help="share of the time after the probe for the synthetic learning run (0.7)")  # fmt: skip
    there.add_argument("--train-step", action=argparse.BooleanOptionalAction, default=True,
                       help="measure the paper and small presets' training step (on)")  # fmt: skip
    args = parser.parse_args(argv)
    return prepare(args) if args.step == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
