"""How frames are stored in a dataset row: RGB uint8, losslessly encoded as PNG, one image per frame."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FRAME_FORMAT = "png"
# zlib level 1: about 3x faster to write than the default 6 and about 10% larger (measured on 256x256 stickers).
PNG_COMPRESS_LEVEL = 1


def encode_frame(frame: np.ndarray) -> bytes:
    """Encode one (h, w, 3) uint8 RGB frame."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_frames(encoded: list[bytes]) -> np.ndarray:
    """Decode a row's frames into one (f, h, w, 3) uint8 array."""
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded])
