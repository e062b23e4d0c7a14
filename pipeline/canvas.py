"""Frames to the training canvas: transparency composited onto white, resized with the aspect kept, padded white."""

from __future__ import annotations

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
# decode.resample: how a frame larger than the canvas is shrunk (docs/preprocess.md, "The canvas"), as
# (Pillow filter, reducing_gap). Pillow's `reducing_gap` first shrinks by the integer factor
# int(scale / reducing_gap) with a box filter (`Image.reduce`), then finishes with the filter.
#   lanczos: Lanczos; the gap of 2 reduces only from 4x down, so a 512 -> 256 sticker is all Lanczos (1.6 ms a frame)
#   reduce_lanczos: box-reduce by the whole factor, Lanczos for the fraction left: 512 -> 256 is a 2x2 mean (0.11 ms)
DOWNSCALE: dict[str, tuple[Image.Resampling, float]] = {
    "lanczos": (Image.Resampling.LANCZOS, 2.0),
    "reduce_lanczos": (Image.Resampling.LANCZOS, 1.0),
}


def to_canvas(frame: Image.Image, size: int, resample: str) -> np.ndarray:
    """RGBA or RGB frame -> (size, size, 3) uint8: over white (as the paper does), longer side = size, centred."""
    width, height = frame.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if frame.mode == "RGBA":
        flat = Image.new("RGB", frame.size, WHITE)
        flat.paste(frame, mask=frame)  # "over" with the frame's own alpha
    else:
        flat = frame if frame.mode == "RGB" else frame.convert("RGB")
    if scale < 1:
        method, gap = DOWNSCALE[resample]
        flat = flat.resize((new_w, new_h), method, reducing_gap=gap)
    elif (new_w, new_h) != (width, height):
        flat = flat.resize((new_w, new_h), Image.Resampling.BICUBIC)  # upscaling: Lanczos costs 2x for no gain
    if (new_w, new_h) == (size, size):  # a square frame fills the canvas: no padding to paste it into
        return np.asarray(flat)
    canvas = Image.new("RGB", (size, size), WHITE)
    canvas.paste(flat, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)
