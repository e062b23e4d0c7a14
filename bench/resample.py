"""Benchmark of decode.resample: speed and quality of each downscale filter against Lanczos on the shared stickers.

Run from the repository root (needs the shared sticker corpus beside the checkout, ../shared/data/stickers):

    .venv/bin/python bench/resample.py                 # all 299 stickers, about 1 min on 2 CPUs

Every sticker is sampled as the pipeline samples it (decode.fps, decode.max_frames), its sampled frames composited
(pipeline.gif), and each distinct sampled frame put on the canvas (pipeline.canvas.to_canvas) with every filter in
turn, in this process. Only frames larger than the canvas are resized differently by the filters, so the figures
are over those frames: time per frame of to_canvas (median of REPEATS passes), and the difference of its canvas to
Lanczos's (mean absolute difference in levels of 255 over the RGB values and over the grey levels the entropy
stage sees, PSNR over the RGB values, the largest single difference) and of the stored spatial entropy H_s
(docs/entropy.md). "box" and "bilinear" are measured for comparison
only: they are not decode.resample choices. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
STICKERS = REPO.parent / "shared" / "data" / "stickers"
REPEATS = 3  # timing passes per filter; the median is reported

if str(REPO) not in sys.path:  # run as a script from anywhere: the checkout's packages come first
    sys.path.insert(0, str(REPO))

from provenance import code_version, machine  # noqa: E402

from rdtf.pipeline import canvas  # noqa: E402
from rdtf.pipeline.config import DecodeConfig  # noqa: E402
from rdtf.pipeline.entropy import grey_frames, spatial_entropy  # noqa: E402
from rdtf.pipeline.frame_readers import FRAME_READERS  # noqa: E402
from rdtf.pipeline.probe import probe  # noqa: E402
from rdtf.pipeline.sampling import schedule  # noqa: E402

# Measured beside decode.resample's choices, for comparison: Pillow's own filters at any factor, no reduce first.
COMPARED = {"box": (Image.Resampling.BOX, None), "bilinear": (Image.Resampling.BILINEAR, None)}


def downscaled_frames(stickers: Path, cfg: DecodeConfig) -> tuple[list[Image.Image], int, int]:
    """The distinct sampled frames, composited, that are larger than the canvas; and all distinct sampled frames and
    the stickers they come from."""
    with open(stickers / "manifest.csv", newline="") as f:
        paths = [stickers / row["file"] for row in csv.DictReader(f)]
    larger, total = [], 0
    for path in paths:
        data = path.read_bytes()
        facts = probe(data)
        indices, _ = schedule(facts.durations_ms, cfg.fps, cfg.max_frames)
        frames = FRAME_READERS[facts.format](data, set(indices.tolist()))
        total += len(frames)
        larger += [frame for frame in frames.values() if max(frame.size) > cfg.frame_size]
    return larger, total, len(paths)


def timed(frames: list[Image.Image], size: int, name: str) -> tuple[float, np.ndarray]:
    """Median seconds per frame of to_canvas with filter `name`, and the canvases (f, size, size, 3)."""
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = [canvas.to_canvas(frame, size, name) for frame in frames]
        seconds.append((time.perf_counter() - start) / len(frames))
    return statistics.median(seconds), np.stack(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--stickers", type=Path, default=STICKERS, help="the shared sticker corpus")
    args = parser.parse_args(argv)
    cfg = DecodeConfig()
    frames, total, count = downscaled_frames(args.stickers, cfg)
    if not frames:
        print(f"no sampled frame of {args.stickers} is larger than {cfg.frame_size} pixels", file=sys.stderr)
        return 2
    canvas.DOWNSCALE.update(COMPARED)  # this process only: the compared filters through the same code path
    results = {name: timed(frames, cfg.frame_size, name) for name in canvas.DOWNSCALE}
    _, reference = results["lanczos"]
    reference_grey = grey_frames(reference)
    reference_entropy = np.array([spatial_entropy(g[None]) for g in reference_grey])
    print(f"{machine()}; code {code_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{len(frames)} of the {total} distinct sampled frames of {count} stickers are larger than the canvas\n")
    print("| filter | to_canvas per frame | vs lanczos: mean abs diff RGB | grey | PSNR | max diff | abs diff H_s |")
    print("|---|---|---|---|---|---|---|")
    for name, (seconds, out) in results.items():
        diff = np.abs(out.astype(np.int16) - reference.astype(np.int16))
        mse = float(np.mean(diff.astype(np.float64) ** 2))
        psnr = "identical" if mse == 0 else f"{10 * np.log10(255**2 / mse):.1f} dB"
        grey = grey_frames(out)
        entropy = np.array([spatial_entropy(g[None]) for g in grey])
        grey_diff = np.abs(grey.astype(np.int16) - reference_grey.astype(np.int16)).mean()
        choice = "" if name in COMPARED else " (decode.resample)"
        print(
            f"| {name}{choice} | {seconds * 1e3:.2f} ms | {diff.mean():.2f} | {grey_diff:.2f} | {psnr} | "
            f"{diff.max()} | {np.abs(entropy - reference_entropy).mean():.3f} bits |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
