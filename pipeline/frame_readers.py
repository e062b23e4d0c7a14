"""One input's sampled frames on the training canvas: what the decoder process runs (pipeline.isolation).

GIFs are composited as browsers show them by pipeline.gif (disposal 0-3, partial frames, clipping to the logical
screen, transparency). Animated WebP and APNG are composited by Pillow (libwebp's and its own APNG
disposal/blend); MP4 and WebM are decoded by decord. This module imports no more than the decoders need (no
pyarrow), so that the decoder process starts fast and small.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rdtf.pipeline.canvas import to_canvas
from rdtf.pipeline.gif import composite, parse_gif
from rdtf.pipeline.sampling import schedule
from rdtf.pipeline.stage import Reject


def _gif_frames(data: bytes, wanted: set[int]) -> dict[int, Image.Image]:
    # The composited frames' transparent pixels are white: read without their alpha, they are the frames over white.
    gif = parse_gif(data)
    size = (gif.width, gif.height)
    return {i: Image.frombytes("RGB", size, rgba, "raw", "RGBX") for i, rgba in composite(data, gif, wanted).items()}


def _pillow_frames(data: bytes, wanted: set[int]) -> dict[int, Image.Image]:
    frames: dict[int, Image.Image] = {}
    with Image.open(io.BytesIO(data)) as image:
        # An APNG's default image may sit outside the animation: Pillow shows it as frame 0, browsers never do.
        first = 1 if image.info.get("default_image") else 0
        for index in sorted(wanted):
            image.seek(index + first)
            frames[index] = image.convert("RGBA")
    return frames


def _video_frames(data: bytes, wanted: set[int]) -> dict[int, Image.Image]:
    import decord  # see pipeline.probe: only videos need it

    indices = sorted(wanted)
    batch = decord.VideoReader(io.BytesIO(data)).get_batch(indices).asnumpy()
    return {index: Image.fromarray(frame) for index, frame in zip(indices, batch, strict=True)}


# What a format's reader (and pipeline.probe) imports on first use; the decoder process imports it beforehand,
# outside its limits, so that no input is charged for it (decord: 1.5 s, 830 MB).
LIBRARIES = {"mp4": ("decord",), "webm": ("decord",)}

FRAME_READERS = {
    "gif": _gif_frames,
    "webp": _pillow_frames,
    "apng": _pillow_frames,
    "png": _pillow_frames,
    "jpeg": _pillow_frames,
    "mp4": _video_frames,
    "webm": _video_frames,
}


def sampled_frames(
    data: bytes,
    fmt: str,
    durations_ms: list[int],
    fps: float,
    max_frames: int,
    frame_size: int,
    resample: str,
) -> tuple[np.ndarray, list[int]]:
    """The frames on screen at the sampled times, (f, frame_size, frame_size, 3) uint8, and those times; or Reject.

    `resample` is decode.resample (pipeline.canvas.DOWNSCALE)."""
    indices, timestamps = schedule(durations_ms, fps, max_frames)
    wanted = set(indices.tolist())
    try:
        decoded = FRAME_READERS[fmt](data, wanted)
    except Image.DecompressionBombError as error:
        raise Reject("decompression_bomb", str(error)) from error
    except MemoryError:
        raise  # not a malformed file: the decoder process makes it too_large
    except Exception as error:
        raise Reject("corrupt", f"cannot decode {fmt} frames: {error}") from error
    missing = sorted(wanted - set(decoded))
    if missing:
        raise Reject("corrupt", f"the decoder stopped before frame {missing[0]} of {len(durations_ms)}")
    canvas = {i: to_canvas(frame, frame_size, resample) for i, frame in decoded.items()}
    return np.stack([canvas[i] for i in indices.tolist()]), timestamps.tolist()
