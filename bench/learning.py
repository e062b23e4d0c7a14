"""Does it learn? (issue 15) The tiny preset trained on simple synthetic stickers and on the shared stickers, its
generated frames scored against the real ones beside two no-model baselines, at several points of training.

Run from the repository root (the shared part needs ../shared/data/stickers). With the defaults it took 74 min on 2
cores shared with other work, 38 of them training (docs/benchmarks.md, "Learning"):

    .venv/bin/python bench/learning.py --out /tmp/learning --docs docs/learning

1. A synthetic corpus made here: shapes that slide, grow or change colour, and static stickers (every frame the
   same), on light backgrounds, each with a caption; preprocessed by `rdtf preprocess`, then split by sample id into
   a training set and two held-out sets (moving, static). The shared stickers likewise (training and held out).
2. Each corpus: `rdtf train` of the tiny preset, a checkpoint every --eval-every steps (all kept).
3. Every checkpoint: `trainer.evaluate` on the same held-out clips and noise: the loss on the frames each task
   generates, and PSNR / SSIM of generated frames (interpolation, prediction) beside the baselines measured on the
   same frames: copy the nearest given frame, and uniform noise. This is the learning curve.
4. The last synthetic checkpoint: a guidance sweep (text scale x image scale), scored the same way.
5. Pictures: per corpus, held-out clips as rows of real frames, interpolation and prediction through `rdtf sample`
   (given frames marked), and t2v samples of the held-out captions beside the real clip (OUT/*.png, and --docs).
OUT/results.json holds every report; the markdown tables are printed (and written to --docs/results.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STICKERS = REPO.parent / "shared" / "data" / "stickers"
TINY = REPO / "configs" / "tiny.yaml"
EVAL_SEED = 0  # the evaluation noise: the same for every checkpoint
SYNTHETIC_HELDOUT_PERCENT = 15
# Guidance pairs (text, image) of the sweep; (1, 1) is the plain conditional prediction.
SWEEP = ((1.0, 1.0), (1.0, 2.0), (1.0, 4.0), (2.0, 2.0), (4.0, 4.0), (7.5, 7.5))
SHOW_TASKS = ("interpolate", "predict-post")  # rows of the picture, besides the real clip and t2v

if str(REPO) not in sys.path:  # run as a script from anywhere: the checkout's packages come first
    sys.path.insert(0, str(REPO))

from heldout import complete, is_heldout, preprocess, run_logged, split  # noqa: E402
from provenance import code_version, machine  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# The synthetic corpus

KINDS = ("sliding", "growing", "colour", "static")
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "orange": (250, 150, 20),
    "purple": (140, 50, 180),
}
BACKGROUNDS = ((235, 235, 235), (250, 240, 210), (215, 235, 250))


def sticker_frames(kind: str, shape: str, colour: str, rng: Any, size: int = 96, count: int = 8) -> list[Any]:
    """`count` RGB frames of one shape on a light background; `kind` says what changes from frame to frame."""
    from PIL import Image, ImageDraw

    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    r = int(rng.integers(size // 8, size // 4))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    other = list(PALETTE)[(list(PALETTE).index(colour) + 1 + int(rng.integers(len(PALETTE) - 1))) % len(PALETTE)]
    frames = []
    for t in range(count):
        phase = t / (count - 1)
        radius, x, fill = r, cx, PALETTE[colour]
        if kind == "sliding":
            x = int(r + (size - 2 * r) * phase)
        elif kind == "growing":
            radius = int(r * (0.5 + phase))
        elif kind == "colour":
            fill = tuple(int(a + (b - a) * phase) for a, b in zip(PALETTE[colour], PALETTE[other], strict=True))
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        box = (x - radius, cy - radius, x + radius, cy + radius)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=fill)
        frames.append(image)
    return frames


def make_synthetic(folder: Path, count: int, seed: int) -> Path:
    """`count` 8-frame GIFs at 8 fps (one frame per pipeline sample) and manifest.csv; returns the manifest."""
    import csv

    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        kind, shape, colour = KINDS[i % len(KINDS)], ("circle", "square")[(i // 4) % 2], list(PALETTE)[i % 5]
        frames = sticker_frames(kind, shape, colour, rng)
        name = f"{kind}_{i:03d}.gif"
        frames[0].save(folder / name, save_all=True, append_images=frames[1:], duration=125, loop=0)
        motion = {"colour": "changing colour", "static": "standing still"}.get(kind, kind)
        lines.append([name, f"a {colour} {shape} {motion}"])
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        writer.writerows(lines)
    return folder / "manifest.csv"


def synthetic_part(row: dict[str, Any]) -> str:
    if not is_heldout(row["sample_id"], SYNTHETIC_HELDOUT_PERCENT):
        return "train"
    return "heldout_static" if "standing still" in row["caption"] else "heldout_moving"


# ----------------------------------------------------------------------------------------------------------------
# Training, scoring, pictures


def train(data: Path, run: Path, steps: int, every: int, seed: int, overrides: list[str]) -> float:
    command = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", str(TINY), "--data", str(data)]
    command += ["--out", str(run), "--steps", str(steps), "--seed", str(seed)]
    settings = [f"run.checkpoint_every={every}", "run.keep_checkpoints=1000", f"run.log_every={every}"]
    settings += [f"curriculum.length={steps}", *overrides]
    for setting in settings:
        command += ["--set", setting]
    return run_logged(command, run.parent / f"{run.name}.log")


def score(run: Path, data: Path, tag: str, clips: int, steps: int, scales: tuple[float, float], draws: int) -> dict:
    from rdtf.trainer.evaluate import evaluate

    report = evaluate(
        str(run), str(data), clips=clips, steps=steps, seed=EVAL_SEED, draws=draws,
        text_scale=scales[0], image_scale=scales[1], step_tag=tag,
    )  # fmt: skip
    return report.to_dict() | {"lines": report.lines()}


def picture(run: Path, data: Path, clips: int, out: Path, scales: tuple[float, float]) -> None:
    """Rows per held-out clip: the real frames, then each SHOW_TASKS task through `rdtf sample` (given frames with
    a coloured border), then a t2v sample of its caption."""
    import tempfile

    from rdtf.trainer.evaluate import iter_clips
    from rdtf.trainer.media import frame_grid, read_frames, write_gif
    from rdtf.trainer.sample import GIVEN, SampleRequest, load_run_config, sample

    size = load_run_config(str(run)).latent.resolution
    rows, given = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (row, real) in iter_clips(str(data), clips, 8, size):
            gif = write_gif(real, os.path.join(tmp, f"real_{n}.gif"))
            rows.append(real)
            given.append([])
            for task in (*SHOW_TASKS, "t2v"):
                request = SampleRequest(
                    task=task, text=row["caption"] or "", gif=gif, seed=n, text_scale=scales[0], image_scale=scales[1]
                )
                rows.append(read_frames(sample(str(run), request, os.path.join(tmp, f"{task}_{n}.gif")), size, 8))
                given.append(GIVEN[task])
    frame_grid(rows, given).save(out)


# ----------------------------------------------------------------------------------------------------------------
# Tables


def curve_table(title: str, reports: dict[int, dict[str, Any]]) -> str:
    """Markdown: per checkpoint, loss on generated frames (mean over tasks) and PSNR / SSIM per frame task, with the
    baselines (the same at every checkpoint) as the last rows."""
    from rdtf.trainer.evaluate import FRAME_TASKS

    lines = [f"{title}:", ""]
    lines.append("| step | loss (generated frames, mean of 6 tasks) | " + " | ".join(FRAME_TASKS) + " |")
    lines.append("|---" * (len(FRAME_TASKS) + 2) + "|")
    for step, report in sorted(reports.items()):
        cells = [f"{report['psnr'][t]:.2f} dB / {report['ssim'][t]:.3f}" for t in FRAME_TASKS]
        lines.append(f"| {step} | {statistics.fmean(report['loss'].values()):.4f} | " + " | ".join(cells) + " |")
    last = reports[max(reports)]
    for name, scores in last["baselines"].items():
        cells = [f"{scores['psnr'][t]:.2f} dB / {scores['ssim'][t]:.3f}" for t in FRAME_TASKS]
        lines.append(f"| baseline: {name.replace('_', ' ')} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_table(title: str, report: dict[str, Any]) -> str:
    lines = [f"{title}:", "", "| " + " | ".join(report["loss"]) + " |", "|---" * len(report["loss"]) + "|"]
    return "\n".join([*lines, "| " + " | ".join(f"{v:.4f}" for v in report["loss"].values()) + " |"])


def sweep_table(reports: dict[str, dict[str, Any]]) -> str:
    from rdtf.trainer.evaluate import FRAME_TASKS

    lines = ["Guidance sweep on the last synthetic checkpoint (held-out moving clips), PSNR dB / SSIM:", ""]
    lines += ["| text, image scale | " + " | ".join(FRAME_TASKS) + " |", "|---" * (len(FRAME_TASKS) + 1) + "|"]
    for key, report in reports.items():
        cells = [f"{report['psnr'][t]:.2f} / {report['ssim'][t]:.3f}" for t in FRAME_TASKS]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (corpora, datasets, runs, results)")
    parser.add_argument("--docs", type=Path, help="also copy the pictures and results.md into this folder")
    parser.add_argument("--count", type=int, default=160, help="synthetic stickers to make (160)")
    parser.add_argument("--steps", type=int, default=300, help="training steps on the synthetic corpus (300)")
    parser.add_argument("--shared-steps", type=int, default=150, help="training steps on the shared stickers (150)")
    parser.add_argument("--eval-every", type=int, default=100, help="a checkpoint scored every N steps (100)")
    parser.add_argument("--eval-clips", type=int, default=8, help="held-out clips scored per set (8)")
    parser.add_argument("--eval-steps", type=int, default=10, help="DDIM steps of generation when scoring (10)")
    parser.add_argument("--eval-draws", type=int, default=2, help="noise draws per clip and task for the loss (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE passed on to `rdtf train`")
    parser.add_argument("--stickers", type=Path, default=STICKERS, help="the shared sticker corpus")
    parser.add_argument("--corpora", nargs="+", choices=("synthetic", "shared"), default=["synthetic", "shared"])
    parser.add_argument("--frame-size", type=int, default=256, help="pixels of the preprocessed frames (256)")
    parser.add_argument("--prepare-only", action="store_true", help="preprocess and split, then stop")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                        help="the guidance sweep on the last synthetic checkpoint (on)")  # fmt: skip
    args = parser.parse_args(argv)
    if min(args.steps, args.eval_every, args.eval_clips, args.eval_steps, args.eval_draws) < 1:
        parser.error("--steps, --eval-every, --eval-clips, --eval-steps and --eval-draws must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = str(args.threads)
    os.environ.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "RAY_USAGE_STATS_ENABLED": "0"})
    import torch

    # The library warnings of every model load (random text weights, no `accelerate`) say nothing new here: the
    # header says the text tower is random.
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    sections: list[str] = []
    pictures: list[Path] = []

    corpora = {}
    if "synthetic" in args.corpora:
        corpora["synthetic"] = make_synthetic(out / "synthetic_corpus", args.count, args.seed)
    shared_ready = complete(out / f"shared_full_{args.frame_size}px")  # prepared elsewhere (bench/gpu_session.py)
    if "shared" in args.corpora and ((args.stickers / "manifest.csv").is_file() or shared_ready):
        corpora["shared"] = args.stickers / "manifest.csv"
    elif "shared" in args.corpora:
        print(f"shared stickers skipped (not at {args.stickers})", flush=True)
    for corpus, manifest in corpora.items():
        full = out / f"{corpus}_full_{args.frame_size}px"
        print(f"{corpus}: preprocessing {manifest}", flush=True)
        preprocess(manifest, full, out / f"{corpus}_preprocess.log", ["--frame-size", str(args.frame_size)])
        if corpus == "synthetic":
            names, rule = ("train", "heldout_moving", "heldout_static"), synthetic_part
            text = f"held out when sha256(sample_id) < {SYNTHETIC_HELDOUT_PERCENT}% of 2^64; static by caption"
        else:
            names, text = ("train", "heldout"), "held out when sha256(sample_id) < 10% of 2^64"
            rule = lambda row: "heldout" if is_heldout(row["sample_id"]) else "train"  # noqa: E731
        parts = {name: out / f"{corpus}_{name}" for name in names}
        counts = split(full, parts, rule, text)
        print(f"{corpus}: {counts}", flush=True)
        if args.prepare_only:
            continue
        steps = args.steps if corpus == "synthetic" else args.shared_steps
        run = out / "runs" / f"{corpus}-tiny-steps{steps}-seed{args.seed}"
        run.parent.mkdir(exist_ok=True)
        seconds = train(parts["train"], run, steps, args.eval_every, args.seed, args.set)
        print(f"{corpus}: trained {steps} steps in {seconds:.0f} s ({seconds / steps:.2f} s/step)", flush=True)
        guidance = (1.0, 1.0)
        curves: dict[str, dict[int, dict[str, Any]]] = {}
        for name in names[1:]:
            clips = min(args.eval_clips, counts[name])
            curves[name] = {}
            for step in [*range(args.eval_every, steps, args.eval_every), steps]:
                report = score(run, parts[name], f"step-{step:08d}", clips, args.eval_steps, guidance, args.eval_draws)
                curves[name][step] = report
                print(f"{corpus} {name} step {step}: " + "; ".join(report["lines"][1:]), flush=True)
                results[corpus] = {"counts": counts, "train_s": seconds, "curves": curves}
                (out / "results.json").write_text(json.dumps(results, indent=2, default=str))  # so far, if cut short
            sections.append(curve_table(f"{corpus}, held-out {name.split('_')[-1]} clips ({clips})", curves[name]))
            sections.append(loss_table(f"{corpus}, {name}: loss on generated frames per task, last step", report))
        sweep = {}
        if corpus == "synthetic" and args.sweep:
            for scales in SWEEP:
                report = score(run, parts["heldout_moving"], f"step-{steps:08d}", args.eval_clips, args.eval_steps,
                               scales, 1)  # fmt: skip
                sweep[f"{scales[0]:g}, {scales[1]:g}"] = report
                print(f"sweep {scales}: " + "; ".join(report["lines"][2:]), flush=True)
            sections.append(sweep_table(sweep))
        image = out / f"learning_{corpus}.png"
        shown = parts[names[1]]
        picture(run, shown, 4, image, guidance)
        pictures.append(image)
        results[corpus] = {"counts": counts, "train_s": seconds, "curves": curves, "sweep": sweep,
                           "config": json.loads((run / "config.json").read_text())}  # fmt: skip

    header = [
        f"machine: {machine(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')}",
        f"date: {started.strftime('%Y-%m-%d %H:%M UTC')}; code: {code_version()}",
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"tiny preset, pixel space 32x32, random text tower; scored with {args.eval_steps} DDIM steps, guidance 1 "
        f"(text) 1 (image), seed {EVAL_SEED}; wall time {time.perf_counter() - clock:.0f} s",
    ]
    if args.prepare_only:
        print(f"datasets prepared in {out}")
        return 0
    results["header"] = header
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"
    print(f"\n{text}\nresults: {out / 'results.json'}; pictures: {', '.join(map(str, pictures))}")
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        (args.docs / "results.md").write_text(text)
        for image in pictures:
            (args.docs / image.name).write_bytes(image.read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
