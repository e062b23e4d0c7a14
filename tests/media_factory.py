"""Small sticker files in every input format, made in memory for tests (Pillow for images, PyAV for videos)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image


def noise_frames(count: int, width: int = 48, height: int = 40, seed: int = 0) -> list[Image.Image]:
    """`count` distinct RGB frames of random pixels (encoders merge identical consecutive frames)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def solid_frames(colours: Sequence[tuple[int, ...]], width: int = 48, height: int = 40) -> list[Image.Image]:
    """One flat frame per colour; RGBA if the colours have four components."""
    mode = "RGBA" if len(colours[0]) == 4 else "RGB"
    return [Image.new(mode, (width, height), tuple(colour)) for colour in colours]


def image_bytes(frames: Sequence[Image.Image], fmt: str, durations_ms: Sequence[int] | None = None, **options) -> bytes:
    """Save `frames` with Pillow as `fmt` ("GIF", "PNG", "WEBP", "JPEG"): animated when more than one frame."""
    buffer = io.BytesIO()
    if len(frames) > 1:
        options.update(save_all=True, append_images=list(frames[1:]), loop=0, duration=list(durations_ms or []))
    frames[0].save(buffer, format=fmt, **options)
    return buffer.getvalue()


def video_bytes(frames: Sequence[np.ndarray], container: str, codec: str, fps: int = 10) -> bytes:
    """Encode (h, w, 3) uint8 RGB frames with PyAV: e.g. ("mp4", "mpeg4") or ("webm", "libvpx-vp9")."""
    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        output.mux(stream.encode())
    return buffer.getvalue()


def grey_ramp_video_frames(count: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """Flat frames getting lighter, so decoded frames can be told apart despite lossy coding."""
    return [np.full((height, width, 3), 30 + 200 * i // max(1, count - 1), dtype=np.uint8) for i in range(count)]
