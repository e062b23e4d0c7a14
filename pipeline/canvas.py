"""Frames to the training canvas: transparency composited onto white, resized with the aspect kept, padded white."""

from __future__ import annotations

import numpy as np
from PIL import Image


def composite_on_white(frame: np.ndarray) -> np.ndarray:
    """(h, w, 4) RGBA or (h, w, 3) RGB uint8 -> (h, w, 3) RGB over a white background (as the paper does)."""
    if frame.shape[-1] == 3:
        return frame
    rgb = frame[..., :3].astype(np.uint16)
    alpha = frame[..., 3:].astype(np.uint16)
    # Integer "over" with rounding: exact for alpha 0 and 255.
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def fit_and_pad(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize (h, w, 3) so its longer side is `size`, keeping the aspect ratio, and centre it on a white square."""
    height, width = frame.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    image = Image.fromarray(np.ascontiguousarray(frame))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(image)
    return canvas
