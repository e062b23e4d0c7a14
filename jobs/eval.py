"""`rdtf eval --checkpoint RUN --data HELDOUT --tasks it2v,interpolate,predict-post --out REPORT_DIR`: the paper's
measures (FVD, CLIP similarity, PSNR / SSIM, the denoising loss) on held-out stickers, written as report.json and
one self-contained page, index.html (the generated GIFs beside the real ones, embedded).

Under several processes (`torchrun --nproc_per_node N -m rdtf.jobs.cli eval ...`) every process scores every N-th
clip and rank 0 writes the report; the same report as one process. See docs/evaluate.md.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
from typing import Any

from rdtf.jobs.console import importing_quietly
from rdtf.schemas.config import ConfigError
from rdtf.schemas.reader import open_dataset
from rdtf.trainer.run_folder import config_path
from rdtf.trainer.tasks import MIN_KEYFRAMES, NUM_FRAMES, TASKS

DEFAULT_TASKS = (
    "it2v,interpolate,predict-post"  # the paper's three tables: text&image to GIF, interpolation, prediction
)
RANDOM_WARNING = "{what} weights are RANDOM: {measure} only shows that the measure runs (tests and demos)"
GIF_MS = 125  # 8 frames a second, as the pipeline samples
SHOWN_PX = 128  # examples are drawn this wide on the page (pixels scaled without smoothing)


def add_eval_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="score a trained run on held-out stickers: FVD, CLIP similarity, PSNR/SSIM, loss; report.json + HTML",
        description=(
            "Sample every task on held-out stickers with the last checkpoint of RUN_DIR and score it: FVD (I3D "
            "features against the real clips), CLIP similarity of the caption and the generated frames, PSNR and "
            "SSIM of generated frames (interpolate, predict-*), and the denoising loss, each per-clip measure with a "
            "95% interval over clips. Writes REPORT_DIR/report.json and REPORT_DIR/index.html."
        ),
        epilog="Measures, their variants and where to get the I3D weights: docs/evaluate.md.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a run folder written by rdtf train")
    parser.add_argument("--data", required=True, metavar="HELDOUT_DATASET", help="a dataset of clips not trained on")
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"comma-separated, of {','.join(TASKS)} (default: %(default)s)"
    )
    parser.add_argument(
        "--out", required=True, metavar="REPORT_DIR", help="a new or existing folder for report.json and index.html"
    )
    parser.add_argument(
        "--clips", type=int, default=64, help="score the first N held-out clips (file order; %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="every noise draw comes from it: same seed, same report")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the run's diffusion.sample_steps)")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per clip and task for the loss (%(default)s)")
    parser.add_argument(
        "--keyframes",
        type=int,
        default=8,
        help=f"k keyframes per held-out clip, {MIN_KEYFRAMES}..{NUM_FRAMES} (%(default)s)",
    )
    parser.add_argument(
        "--i3d-weights",
        required=True,
        metavar="PATH|random",
        help="the Kinetics-400 InceptionI3d state dict (i3d_pretrained_400.pt, docs/evaluate.md), or random",
    )
    parser.add_argument("--i3d-size", type=int, default=224, help="I3D input pixels (224, standard FVD)")
    parser.add_argument(
        "--clip-weights",
        metavar="PATH|random",
        help="open_clip checkpoint of the run's text.model (default: text.weights)",
    )
    parser.add_argument("--text-scale", type=float, help="text guidance (default: the run's diffusion.text_scale)")
    parser.add_argument("--image-scale", type=float, help="image guidance (default: the run's diffusion.image_scale)")
    parser.add_argument("--examples", type=int, default=4, help="clips shown on the page (%(default)s)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    parser.set_defaults(run=run, parser=parser)


def _init_processes() -> None:
    """Join the launcher's process group (torchrun sets WORLD_SIZE); one process needs none."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def run(args: argparse.Namespace) -> int:
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if unknown := [task for task in tasks if task not in TASKS]:
        args.parser.error(f"--tasks: unknown {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    # clips: FVD compares two sets; keyframes: fewer than MIN_KEYFRAMES leave a task nothing to give or predict
    least = {"clips": 2, "steps": 1, "draws": 1, "keyframes": MIN_KEYFRAMES, "i3d_size": 32, "examples": 0}
    for flag, minimum in least.items():
        if getattr(args, flag) is not None and getattr(args, flag) < minimum:
            args.parser.error(f"--{flag.replace('_', '-')} must be at least {minimum}")
    if args.keyframes > NUM_FRAMES:
        args.parser.error(f"--keyframes must be at most {NUM_FRAMES}, the frames of a generated clip")
    if os.path.exists(args.out) and not os.path.isdir(args.out):  # told now, not after the whole evaluation
        raise ConfigError(f"--out {args.out} is a file: give a folder for the report (new or existing)")
    config_path(args.checkpoint)  # a wrong run folder or held-out set is told before seconds of imports
    open_dataset(args.data)
    with importing_quietly():
        import torch.distributed as dist

        from rdtf.trainer.evaluate import CONFIDENCE, evaluate
        from rdtf.trainer.sample import load_run_config

    cfg = load_run_config(args.checkpoint)
    clip_weights = args.clip_weights or cfg.text.weights
    _init_processes()
    try:
        report = evaluate(
            args.checkpoint,
            args.data,
            clips=args.clips,
            steps=args.steps or cfg.diffusion.sample_steps,
            seed=args.seed,
            keyframes=args.keyframes,
            draws=args.draws,
            text_scale=args.text_scale,
            image_scale=args.image_scale,
            use_ema=not args.no_ema,
            tasks=tasks,
            i3d_weights=args.i3d_weights,
            i3d_size=args.i3d_size,
            clip_weights=clip_weights,
            examples=args.examples,
        )
    # a missing weights file, a held-out set that does not fit (HeldoutMismatch): every rank fails alike, rank 0
    # says it once
    except (FileNotFoundError, ConfigError) as error:
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"rdtf eval: error: {error}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 writes the report
        return 0
    warnings = [
        RANDOM_WARNING.format(what=what, measure=measure)
        for what, measure, weights in (("I3D", "FVD", args.i3d_weights), ("CLIP", "CLIP similarity", clip_weights))
        if weights == "random"
    ]
    os.makedirs(args.out, exist_ok=True)
    document = report.to_dict() | {"fvd_interval": None, "confidence": CONFIDENCE, "warnings": warnings}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(document, f, indent=2)
    with open(os.path.join(args.out, "index.html"), "w") as f:
        f.write(page(document, report.examples))
    print("\n".join(report.lines()))
    print(f"wrote {os.path.join(args.out, 'report.json')} and index.html")
    return 0


def gif_uri(frames: Any) -> str:
    """(f, h, w, 3) uint8 -> a data: URI of a looping GIF."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=GIF_MS, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value: float | None, interval: list[float] | None, digits: int) -> str:
    if value is None:
        return "&ndash;"
    text = f"{value:.{digits}f}"
    return text + (f" <small>[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]</small>" if interval else "")


def page(report: dict[str, Any], examples: list[dict[str, Any]]) -> str:
    """One self-contained HTML page: the measures per task, then each shown clip real and generated, as GIFs."""
    tasks = report["tasks"]
    columns = [("fvd", "FVD", 2), ("clip_similarity", "CLIP sim", 4), ("psnr", "PSNR dB", 2), ("ssim", "SSIM", 4)]
    columns.append(("loss", "loss", 4))
    head = "".join(f"<th>{title}</th>" for _, title, _ in columns)
    rows = []
    for task in tasks:
        cells = [
            _cell(report[key].get(task), report["intervals"].get(key, {}).get(task), digits)
            for key, _, digits in columns
        ]
        rows.append(f"<tr><th>{task}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    shown = []
    for example in examples:
        gifs = [("real", example["real"])] + [
            (task, example["generated"][task]) for task in tasks if task in example["generated"]
        ]
        figures = "".join(
            f'<figure><img src="{gif_uri(frames)}" width="{SHOWN_PX}"><figcaption>{name}</figcaption></figure>'
            for name, frames in gifs
        )
        caption = html.escape(example["caption"] or "(no caption)")
        shown.append(f"<div class=clip><p>{caption} <small>{example['sample_id'][:12]}</small></p>{figures}</div>")
    warnings = "".join(f"<p class=warn>{html.escape(w)}</p>" for w in report["warnings"])
    setup = (
        f"{html.escape(report['run_dir'])} ({report['checkpoint']}) on {report['clips']} clips of "
        f"{html.escape(report['data'])}; {report['steps']} DDIM steps, guidance {report['text_scale']:g} / "
        f"{report['image_scale']:g}, seed {report['seed']}, k = {report['keyframes']}, {report['world_size']} "
        f"process(es); I3D {html.escape(str(report['i3d_weights']))} at {report['i3d_size']} px, CLIP "
        f"{html.escape(str(report['clip_weights']))}"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rdtf eval: {html.escape(report["run_dir"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }} .warn {{ color: #b00; font-weight: bold; }}
figure {{ display: inline-block; margin: 4px; text-align: center; }} img {{ image-rendering: pixelated; }}
.clip {{ border-top: 1px solid #ddd; margin-top: 1em; }}
</style></head><body>
<h1>rdtf eval</h1>
<p>{setup}</p>{warnings}
<table><tr><th>task</th>{head}</tr>{"".join(rows)}</table>
<p><small>Brackets: the {100 * report["confidence"]:g}% t-interval of the mean over clips. FVD is a set measure: no
interval (docs/evaluate.md).
PSNR / SSIM and CLIP similarity count generated frames only; the GIFs keep the given frames, as rdtf sample
writes them.</small></p>
<h2>Examples</h2>{"".join(shown)}
</body></html>
"""
