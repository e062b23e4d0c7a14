"""The paper's ablation table (issue 12), one `rdtf train` flag per row, every run scored by `trainer.evaluate`.

Rows (paper v1, text&image to GIF, FVD): DFGN with a 3D-conv temporal layer 492.31; DFGN (STI) 478.47; + dual masks
459.21 (= curriculum none); + curriculum linear 451.65; + curriculum adaptive 442.18. One more row is rdtf's own: the
adaptive curriculum with rdtf's sample-level pacing on (rdtf's default). The paper's rows run with pacing off.

Run from the repository root (needs the shared sticker corpus beside the checkout, ../shared/data/stickers):

    .venv/bin/python bench/ablation.py --out /tmp/ablation --out-md /tmp/ablation/table.md   # tiny, CPU
    .venv/bin/python bench/ablation.py --preset small --vae models/sd-vae \\
        --text-weights models/open_clip_vit_b32.pt --steps 5000 --eval-clips 0 --eval-steps 10 --out /tmp/abl-small

1. `rdtf preprocess` of the stickers (no CLIP stage) into OUT/full; skipped when OUT/full is complete.
2. The split of bench/heldout.py: a row is held out when sha256(sample_id) falls in the first HELDOUT_PERCENT
   percent; OUT/train and OUT/heldout (bench/heldout.py).
3. Every row x seed trained in its own `rdtf train` subprocess with the row's flags and `curriculum.length` = the
   steps (the static schedule spans the run); a run that already has its final checkpoint is not trained again.
4. Every run evaluated on the same held-out clips with the same noise: the denoising loss per task, PSNR/SSIM of
   interpolation and prediction, and FVD of it2v (the table's task) and the frame tasks with I3D weights from
   --i3d-weights. With `random` (the default: no I3D file here) FVD is only a relative number between these runs.
5. Mean and sample standard deviation over the seeds per row, and of the difference from the STI row with the same
   seed (same data order and, but for the temporal layers, the same initial weights). OUT/results.json holds every
   report; the Markdown table is printed (and written to --out-md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STICKERS = REPO.parent / "shared" / "data" / "stickers"
PRESETS = {"tiny": REPO / "configs" / "tiny.yaml", "small": REPO / "configs" / "small.yaml"}
# row -> (`rdtf train` flags, the paper's FVD for it); the paper's rows train without rdtf's sample pacing
ROWS: dict[str, tuple[list[str], float | None]] = {
    "3D conv": (
        ["--temporal-layer", "conv3d", "--dual-masks", "off", "--curriculum", "none", "--pacing", "off"],
        492.31,
    ),
    "STI": (["--temporal-layer", "sti", "--dual-masks", "off", "--curriculum", "none", "--pacing", "off"], 478.47),
    "STI + dual masks (curriculum none)": (["--dual-masks", "on", "--curriculum", "none", "--pacing", "off"], 459.21),
    "+ curriculum linear": (["--dual-masks", "on", "--curriculum", "linear", "--pacing", "off"], 451.65),
    "+ curriculum adaptive": (["--dual-masks", "on", "--curriculum", "adaptive", "--pacing", "off"], 442.18),
    "+ rdtf pacing (rdtf default)": (["--dual-masks", "on", "--curriculum", "adaptive", "--pacing", "on"], None),
}
REFERENCE = "STI"  # the paired differences are taken from this row
FVD_TASKS = ("it2v", "interpolate", "predict-post")  # it2v: the table's task; the frame tasks also have PSNR/SSIM
EVAL_SEED = 0  # the evaluation noise: the same for every run
# Generation guidance: 1 is the plain conditional prediction, what a model has learnt without extrapolation.
GUIDANCE = 1.0

if str(REPO) not in sys.path:  # run as a script from anywhere: the checkout's packages come first
    sys.path.insert(0, str(REPO))

from heldout import HELDOUT_PERCENT, is_heldout, preprocess, run_logged, split  # noqa: E402
from provenance import code_version, machine  # noqa: E402


def slug(row: str) -> str:
    """A row's name in run folders and --rows: "+ curriculum linear" -> "curriculum-linear"."""
    return re.sub(r"[^a-z0-9]+", "-", row.lower()).strip("-")


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation


def train_command(args: argparse.Namespace, data: Path, run: Path, row: str, seed: int) -> list[str]:
    command = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", str(PRESETS[args.preset])]
    command += ["--data", str(data), "--out", str(run), "--steps", str(args.steps), "--seed", str(seed)]
    command += [*ROWS[row][0], "--set", f"curriculum.length={args.steps}"]
    command += ["--set", f"run.checkpoint_every={args.steps}", "--set", f"run.log_every={max(1, args.steps // 10)}"]
    if args.preset == "small":
        command += ["--set", f"latent.vae_path={args.vae}", "--set", f"text.weights={args.text_weights}"]
    return command


def train_run(args: argparse.Namespace, data: Path, run: Path, row: str, seed: int) -> float | None:
    """Train one run (or finish it); None when it already had its final checkpoint."""
    from rdtf.trainer import checkpoint, run_folder

    if checkpoint.latest_tag(str(run)) == run_folder.tag(args.steps):
        return None
    run.mkdir(parents=True, exist_ok=True)
    return run_logged(train_command(args, data, run, row, seed), run.parent / f"{run.name}.log")


def task_mix(run: Path) -> dict[str, int]:
    """Optimizer steps per task, from the run's metrics.jsonl."""
    from rdtf.trainer.tasks import TASKS

    with open(run / "metrics.jsonl") as f:
        counts = Counter(json.loads(line)["task"] for line in f)
    return {task: counts.get(task, 0) for task in TASKS}


# ----------------------------------------------------------------------------------------------------------------
# Summary


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """One evaluation report as {"loss/mean": ..., "fvd/it2v": ..., "psnr/interpolate": ..., ...}."""
    flat = {"loss/mean": statistics.fmean(report["loss"].values())}
    flat |= {f"loss/{task}": value for task, value in report["loss"].items()}
    flat |= {f"fvd/{task}": value for task, value in report["fvd"].items()}
    flat |= {f"psnr/{task}": value for task, value in report["psnr"].items()}
    return flat | {f"ssim/{task}": value for task, value in report["ssim"].items()}


def summarize(reports: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per row: mean and std over seeds of every metric, and of its difference from REFERENCE with the same seed."""
    summary: dict[str, Any] = {}
    reference = {seed: flat_metrics(report) for seed, report in reports[REFERENCE].items()}
    for row, by_seed in reports.items():
        flats = {seed: flat_metrics(report) for seed, report in by_seed.items()}
        if not flats:
            continue
        summary[row] = {}
        for key in flats[next(iter(flats))]:
            summary[row][key] = spread([flat[key] for flat in flats.values()])
            paired = [flats[s][key] - reference[s][key] for s in flats if s in reference]
            if paired:
                summary[row][f"{key} - ref"] = spread(paired)
    return summary


def cell(stats: dict[str, float], digits: int) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def tables(
    summary: dict[str, Any], baseline: dict[str, dict[str, float]], mixes: dict[str, list[dict[str, int]]], i3d: str
) -> str:
    """Markdown: the table's rows with FVD (it2v), the loss and PSNR/SSIM, the no-model baseline, the task mix."""
    from rdtf.trainer.evaluate import FRAME_TASKS
    from rdtf.trainer.tasks import TASKS

    frame_tasks = [task for task in FRAME_TASKS if task in FVD_TASKS]
    label = "random I3D: relative only" if i3d == "random" else "I3D " + Path(i3d).name
    lines = [
        f'Mean ± std over seeds; "vs STI" is the paired difference from the STI run of the same seed. FVD ({label}) '
        "and loss: lower is better; PSNR/SSIM of the generated frames that were not given: higher is better.",
        "",
        "| row | paper FVD | FVD it2v | vs STI | loss (mean of tasks) | vs STI | "
        + " | ".join(f"{t} PSNR dB | {t} SSIM | {t} FVD" for t in frame_tasks)
        + " |",
        "|---" * (6 + 3 * len(frame_tasks)) + "|",
    ]
    for row, stats in summary.items():
        paper = ROWS[row][1]
        cells = [f"{paper:.2f}" if paper is not None else "(rdtf)", cell(stats["fvd/it2v"], 2)]
        cells.append(cell(stats["fvd/it2v - ref"], 2) if row != REFERENCE else "")
        cells += [cell(stats["loss/mean"], 4), cell(stats["loss/mean - ref"], 4) if row != REFERENCE else ""]
        for t in frame_tasks:
            cells += [cell(stats[f"psnr/{t}"], 2), cell(stats[f"ssim/{t}"], 3), cell(stats[f"fvd/{t}"], 2)]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    copies = [x for t in frame_tasks for x in (f"{baseline['psnr'][t]:.2f}", f"{baseline['ssim'][t]:.3f}", "")]
    lines.append("| no model: copy the nearest given frame | | | | | | " + " | ".join(copies) + " |")
    lines += ["", "Denoising loss per task on the held-out clips (mean ± std over seeds):", ""]
    lines += ["| row | " + " | ".join(FVD_TASKS) + " |", "|---" * (len(FVD_TASKS) + 1) + "|"]
    for row, stats in summary.items():
        lines.append(f"| {row} | " + " | ".join(cell(stats[f"loss/{t}"], 4) for t in FVD_TASKS) + " |")
    lines += ["", "Optimizer steps per task during training (mean over seeds):", ""]
    lines += ["| row | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    for row, runs in mixes.items():
        if runs:
            lines.append(
                f"| {row} | " + " | ".join(f"{statistics.fmean(m[t] for m in runs):.1f}" for t in TASKS) + " |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="tiny", help="tiny (CPU) or small (one GPU)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every run (300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run.seed values (0 1 2)")
    parser.add_argument(
        "--rows", nargs="+", choices=[slug(row) for row in ROWS], help="only these rows (default: all; STI always)"
    )
    parser.add_argument("--i3d-weights", default="random", help="an I3D state dict file for FVD, or random (random)")
    parser.add_argument("--i3d-size", type=int, default=112, help="I3D input pixels (112; 224 is the standard FVD)")
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
    if args.i3d_weights != "random" and not Path(args.i3d_weights).is_file():
        parser.error(f"--i3d-weights {args.i3d_weights} is not a file (docs/evaluate.md says where it comes from)")
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

    rows = [row for row in ROWS if row == REFERENCE or args.rows is None or slug(row) in args.rows]
    runs: list[dict[str, Any]] = []
    reports: dict[str, dict[int, dict[str, Any]]] = {row: {} for row in rows}
    mixes: dict[str, list[dict[str, int]]] = {row: [] for row in rows}
    for seed in args.seeds:  # seed-major: an interrupted ablation has whole seeds of every row
        for row in rows:
            run = out / "runs" / f"{args.preset}-steps{args.steps}-{slug(row)}-seed{seed}"
            train_s = train_run(args, out / "train", run, row, seed)
            report = evaluate(
                str(run),
                str(out / "heldout"),
                clips=args.eval_clips or None,
                steps=args.eval_steps,
                seed=EVAL_SEED,
                draws=args.eval_draws,
                text_scale=args.guidance,
                image_scale=args.guidance,
                tasks=FVD_TASKS,
                i3d_weights=args.i3d_weights,
                i3d_size=args.i3d_size,
            )
            reports[row][seed] = report.to_dict()
            mixes[row].append(task_mix(run))
            runs.append(
                {"row": row, "seed": seed, "train_s": train_s, "task_mix": mixes[row][-1], "eval": report.to_dict()}
            )
            trained = f"trained in {train_s:.0f} s" if train_s is not None else "already trained"
            print(f"{run.name}: {trained}; " + "; ".join(report.lines()[1:]), flush=True)

    baseline = runs[0]["eval"]["baselines"]["copy_nearest"]  # every run is scored on the same clips
    summary = summarize(reports)
    markdown = tables(summary, baseline, mixes, args.i3d_weights)
    header = [
        f"machine: {machine(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')}",
        f"date: {started.strftime('%Y-%m-%d %H:%M UTC')}; code: {code_version()}",
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"preset {args.preset}, {args.steps} steps, seeds {' '.join(map(str, args.seeds))}; clips: {counts['train']} "
        f"train, {counts['heldout']} held out, {runs[0]['eval']['clips']} of them scored with "
        f"{args.eval_draws} noise draws, {args.eval_steps} DDIM steps, guidance {args.guidance:g}, seed {EVAL_SEED}, "
        f"I3D {args.i3d_weights} at {args.i3d_size} px; "
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
