"""Curriculum ablation (issue 6): one preset trained with curriculum `none`, `linear` and `adaptive` for the same steps
and seeds on the shared stickers, every run scored on the same held-out clips by `trainer.evaluate`.

Run from the repository root (needs the shared sticker corpus beside the checkout, ../shared/data/stickers):

    .venv/bin/python bench/curriculum_ablation.py --out /tmp/ablation   # tiny on CPU: about 33 min on 2 busy cores
    .venv/bin/python bench/curriculum_ablation.py --preset small --vae models/sd-vae \\
        --text-weights models/open_clip_vit_b32.pt --steps 2000 --out /tmp/ablation-small   # one GPU

1. `rdtf preprocess` of the stickers (no CLIP stage) into OUT/full; skipped when OUT/full is complete.
2. The split: a row is held out when sha256(sample_id) read as a number falls in the first HELDOUT_PERCENT percent,
   so the split depends on nothing but the row. OUT/train and OUT/heldout get one Parquet file per file of OUT/full,
   with the dataset's Parquet schema and metadata (`SAMPLE_SCHEMA`), and a card.json saying how they were made.
3. Every mode x seed trained in its own `rdtf train` subprocess, with `curriculum.length` = the steps so that the
   static schedule spans the run; a run that already has its final checkpoint is not trained again.
4. Every run evaluated on the same held-out clips (the first --eval-clips) with the same seed, so on the same noise
   (docs/evaluate.md).
5. Mean and sample standard deviation over the seeds per mode; the same for the difference from `none` of the
   same seed (same initial weights and data order), and a no-model baseline (every frame not given is a copy of the
   nearest given frame). OUT/results.json holds every report; the markdown tables are printed (and --out-md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STICKERS = REPO.parent / "shared" / "data" / "stickers"
PRESETS = {"tiny": REPO / "configs" / "tiny.yaml", "small": REPO / "configs" / "small.yaml"}
MODES = ("none", "linear", "adaptive")
EVAL_SEED = 0  # the evaluation noise: the same for every run
# Generation guidance: 1 is the plain conditional prediction, what a model has learnt without extrapolation. The
# runs' own 7.5 (what `rdtf sample` uses; --guidance 7.5) magnifies the errors of an under-trained model.
GUIDANCE = 1.0

if str(REPO) not in sys.path:  # run as a script from anywhere: the checkout's packages come first
    sys.path.insert(0, str(REPO))

from heldout import HELDOUT_PERCENT, is_heldout, preprocess, run_logged, split  # noqa: E402
from provenance import code_version, machine  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Data: preprocess, then split


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation


def train_command(args: argparse.Namespace, data: Path, run: Path, mode: str, seed: int) -> list[str]:
    command = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", str(PRESETS[args.preset])]
    command += ["--data", str(data), "--out", str(run), "--steps", str(args.steps), "--seed", str(seed)]
    command += ["--curriculum", mode, "--set", f"curriculum.length={args.steps}"]
    command += ["--set", f"run.checkpoint_every={args.steps}", "--set", f"run.log_every={max(1, args.steps // 10)}"]
    if args.preset == "small":
        command += ["--set", f"latent.vae_path={args.vae}", "--set", f"text.weights={args.text_weights}"]
    return command


def train_run(args: argparse.Namespace, data: Path, run: Path, mode: str, seed: int) -> float | None:
    """Train one run (or finish it); None when it already had its final checkpoint."""
    from rdtf.trainer import checkpoint

    if checkpoint.latest_tag(str(run)) == checkpoint.tag(args.steps):
        return None
    run.mkdir(parents=True, exist_ok=True)
    return run_logged(train_command(args, data, run, mode, seed), run.parent / f"{run.name}.log")


def task_mix(run: Path) -> dict[str, int]:
    """Optimizer steps per task, from the run's metrics.jsonl."""
    from rdtf.trainer.masks import TASKS

    with open(run / "metrics.jsonl") as f:
        counts = Counter(json.loads(line)["task"] for line in f)
    return {task: counts.get(task, 0) for task in TASKS}


# ----------------------------------------------------------------------------------------------------------------
# Summary


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """One evaluation report as {"loss/t2v": ..., "loss/mean": ..., "psnr/interpolate": ..., ...}."""
    flat = {f"loss/{task}": value for task, value in report["loss"].items()}
    flat["loss/mean"] = statistics.fmean(report["loss"].values())
    flat |= {f"psnr/{task}": value for task, value in report["psnr"].items()}
    return flat | {f"ssim/{task}": value for task, value in report["ssim"].items()}


def summarize(reports: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per mode: mean and std over seeds of every metric, and of its difference from `none` with the same seed."""
    summary: dict[str, Any] = {}
    for mode, by_seed in reports.items():
        flats = {seed: flat_metrics(report) for seed, report in by_seed.items()}
        nones = {seed: flat_metrics(report) for seed, report in reports["none"].items()}
        summary[mode] = {}
        for key in flats[next(iter(flats))]:
            summary[mode][key] = spread([flat[key] for flat in flats.values()])
            summary[mode][f"{key} - none"] = spread([flats[s][key] - nones[s][key] for s in flats if s in nones])
    return summary


def cell(stats: dict[str, float], digits: int) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def tables(
    summary: dict[str, Any], baseline: dict[str, dict[str, float]], mixes: dict[str, list[dict[str, int]]]
) -> str:
    """Markdown: the loss table, the generation table (with the no-model baseline), and the task mix trained."""
    from rdtf.trainer.evaluate import FRAME_TASKS
    from rdtf.trainer.masks import TASKS

    lines = ["Denoising loss on the held-out clips (lower is better), mean ± std over seeds:", ""]
    lines += ["| curriculum | " + " | ".join(TASKS) + " | mean | mean - none (paired) |"]
    lines += ["|---" * (len(TASKS) + 3) + "|"]
    for mode, stats in summary.items():
        row = [cell(stats[f"loss/{t}"], 4) for t in TASKS] + [cell(stats["loss/mean"], 4)]
        row.append(cell(stats["loss/mean - none"], 4) if mode != "none" else "")
        lines.append(f"| {mode} | " + " | ".join(row) + " |")
    lines += ["", "Generated frames that were not given against the real ones (higher is better):", ""]
    lines += ["| curriculum | " + " | ".join(f"{t} PSNR dB | {t} SSIM" for t in FRAME_TASKS) + " |"]
    lines += ["|---" * (2 * len(FRAME_TASKS) + 1) + "|"]
    for mode, stats in summary.items():
        row = [f"{cell(stats[f'psnr/{t}'], 2)} | {cell(stats[f'ssim/{t}'], 3)}" for t in FRAME_TASKS]
        lines.append(f"| {mode} | " + " | ".join(row) + " |")
    row = [f"{baseline['psnr'][t]:.2f} | {baseline['ssim'][t]:.3f}" for t in FRAME_TASKS]
    lines.append("| no model: copy the nearest given frame | " + " | ".join(row) + " |")
    lines += ["", "Optimizer steps per task during training (mean over seeds):", ""]
    lines += ["| curriculum | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    for mode, runs in mixes.items():
        lines.append(f"| {mode} | " + " | ".join(f"{statistics.fmean(m[t] for m in runs):.1f}" for t in TASKS) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="tiny", help="tiny (CPU) or small (one GPU)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of every run (20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run.seed values (0 1 2)")
    parser.add_argument("--out", type=Path, required=True, help="work folder: datasets, runs, results.json")
    parser.add_argument("--vae", type=Path, help="small: a local diffusers AutoencoderKL folder")
    parser.add_argument("--text-weights", type=Path, help="small: a local open_clip ViT-B-32 checkpoint file")
    parser.add_argument(
        "--eval-clips", type=int, default=12, help="held-out clips scored, the first in file order; 0: all (12)"
    )
    parser.add_argument("--eval-steps", type=int, default=2, help="DDIM steps when generating frames (2)")
    parser.add_argument("--eval-draws", type=int, default=1, help="noise draws per clip and task for the loss (1)")
    parser.add_argument(
        "--guidance", type=float, default=GUIDANCE, help=f"text and image guidance of generation ({GUIDANCE:g})"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process (1)")
    parser.add_argument("--stickers", type=Path, default=STICKERS, help="the shared sticker corpus")
    parser.add_argument("--out-md", type=Path, help="also write the markdown tables to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or len(set(args.seeds)) < 2:
        parser.error("--steps must be at least 1 and --seeds must name at least 2 different seeds (for a spread)")
    if args.preset == "small":
        import torch

        missing = [
            flag for flag, value in (("--vae", args.vae), ("--text-weights", args.text_weights)) if value is None
        ]
        if missing:
            parser.error(
                f"--preset small trains on VAE latents with a pretrained text tower: give {' and '.join(missing)}"
            )
        if not (args.vae / "config.json").is_file():
            parser.error(f"--vae {args.vae} is not a diffusers AutoencoderKL folder (no config.json)")
        if not args.text_weights.is_file():
            parser.error(f"--text-weights {args.text_weights} is not a file")
        if not torch.cuda.is_available():
            parser.error("--preset small needs a GPU (none is visible); use --preset tiny on a CPU")
    if not (args.stickers / "manifest.csv").is_file():
        parser.error(f"the sticker corpus is not at {args.stickers} (see --stickers)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = str(args.threads)
    os.environ.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "RAY_USAGE_STATS_ENABLED": "0"})
    import torch

    from rdtf.trainer.evaluate import evaluate

    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"preprocessing {args.stickers} into {out / 'full'}", flush=True)
    preprocess(args.stickers / "manifest.csv", out / "full", out / "preprocess.log")
    rule = f"held out when sha256(sample_id)[:8 bytes] < {HELDOUT_PERCENT}% of 2^64 (bench/heldout.py)"
    parts = {"train": out / "train", "heldout": out / "heldout"}
    counts = split(out / "full", parts, lambda row: "heldout" if is_heldout(row["sample_id"]) else "train", rule)
    print(f"split: {counts['train']} clips to train on, {counts['heldout']} held out", flush=True)

    runs: list[dict[str, Any]] = []
    reports: dict[str, dict[int, dict[str, Any]]] = {mode: {} for mode in MODES}
    mixes: dict[str, list[dict[str, int]]] = {mode: [] for mode in MODES}
    for seed in args.seeds:  # seed-major: an interrupted ablation has whole seeds of every mode
        for mode in MODES:
            run = out / "runs" / f"{args.preset}-steps{args.steps}-{mode}-seed{seed}"
            train_s = train_run(args, out / "train", run, mode, seed)
            report = evaluate(
                str(run),
                str(out / "heldout"),
                clips=args.eval_clips or None,
                steps=args.eval_steps,
                seed=EVAL_SEED,
                draws=args.eval_draws,
                text_scale=args.guidance,
                image_scale=args.guidance,
            )
            reports[mode][seed] = report.to_dict()
            mixes[mode].append(task_mix(run))
            runs.append(
                {"mode": mode, "seed": seed, "train_s": train_s, "task_mix": mixes[mode][-1], "eval": report.to_dict()}
            )
            trained = f"trained in {train_s:.0f} s" if train_s is not None else "already trained"
            print(f"{run.name}: {trained}; " + "; ".join(report.lines()[1:]), flush=True)

    baseline = runs[0]["eval"]["baselines"]["copy_nearest"]  # every run is scored on the same clips
    summary = summarize(reports)
    markdown = tables(summary, baseline, mixes)
    header = [
        f"machine: {machine(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')}",
        f"date: {started.strftime('%Y-%m-%d %H:%M UTC')}; code: {code_version()}",
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"preset {args.preset}, {args.steps} steps, seeds {' '.join(map(str, args.seeds))}; clips: {counts['train']} "
        f"train, {counts['heldout']} held out, {len(runs[0]['eval']['sample_ids'])} of them scored with "
        f"{args.eval_draws} noise draws, {args.eval_steps} DDIM steps, guidance {args.guidance:g}, seed {EVAL_SEED}; "
        f"wall time {time.perf_counter() - clock:.0f} s",
    ]
    results = {
        "header": header,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "split": counts,
        "runs": runs,
        "summary": summary,
        "baseline": baseline,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = "\n".join(header) + "\n\n" + markdown
    print(f"\n{text}\n\nresults: {out / 'results.json'}")
    if args.out_md is not None:
        args.out_md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
