"""Read, probe and decode inputs: ProbeStage refuses what must not be decoded, DecodeStage decodes what was sampled.

GIFs are composited as browsers show them by pipeline.gif (disposal 0-3, partial frames, clipping to the logical
screen, transparency). Animated WebP and APNG are composited by Pillow (libwebp's and its own APNG
disposal/blend); MP4 and WebM are decoded by decord.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from pipeline.canvas import to_canvas
from pipeline.config import DecodeConfig
from pipeline.gif import composite, parse_gif
from pipeline.probe import complete_part, probe
from pipeline.read_bytes import read_bytes
from pipeline.sampling import schedule
from pipeline.stage import Reject, Stage


class ProbeStage(Stage):
    """Reads each kept input and its headers; rejects unsupported formats, corrupt headers, decompression bombs and
    (unless decode.keep_truncated) truncated files. A kept truncated file goes on cut to its complete frames."""

    name = "probe"
    reads = ("source_uri",)
    writes = ("data", "format", "width", "height", "num_frames", "frame_durations_ms", "truncated")

    def __init__(self, cfg: DecodeConfig):
        self.cfg = cfg

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        data = read_bytes(row["source_uri"], self.cfg.max_file_bytes)
        facts = probe(data)
        pixels = facts.decoded_pixels
        if pixels > self.cfg.max_total_pixels:
            raise Reject(
                "decompression_bomb",
                f"{facts.width}x{facts.height}, {facts.num_frames} frames: {pixels} decoded pixels is over "
                f"decode.max_total_pixels={self.cfg.max_total_pixels}",
            )
        if facts.truncation is not None and not self.cfg.keep_truncated:
            raise Reject(
                "truncated",
                f"{facts.truncation.message(facts.num_frames)}; decode.keep_truncated=true keeps the complete "
                "frames, with the row marked truncated",
            )
        return {
            "data": complete_part(data, facts),
            "format": facts.format,
            "width": facts.width,
            "height": facts.height,
            "num_frames": facts.num_frames,
            "frame_durations_ms": facts.durations_ms,
            "truncated": facts.truncated,
        }


def _gif_frames(data: bytes, wanted: set[int]) -> dict[int, Image.Image]:
    return composite(data, parse_gif(data), wanted)


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


FRAME_READERS = {
    "gif": _gif_frames,
    "webp": _pillow_frames,
    "apng": _pillow_frames,
    "png": _pillow_frames,
    "jpeg": _pillow_frames,
    "mp4": _video_frames,
    "webm": _video_frames,
}


class DecodeStage(Stage):
    """Decodes the frames on screen at the sampled times onto the square training canvas."""

    name = "decode"
    reads = ("data", "format", "frame_durations_ms")
    writes = ("frames", "frame_timestamps_ms")

    def __init__(self, cfg: DecodeConfig):
        self.cfg = cfg

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        indices, timestamps = schedule(row["frame_durations_ms"], self.cfg.fps, self.cfg.max_frames)
        wanted = set(indices.tolist())
        try:
            decoded = FRAME_READERS[row["format"]](row["data"], wanted)
        except Image.DecompressionBombError as error:
            raise Reject("decompression_bomb", str(error)) from error
        except Exception as error:
            raise Reject("corrupt", f"cannot decode {row['format']} frames: {error}") from error
        missing = sorted(wanted - set(decoded))
        if missing:
            raise Reject(
                "corrupt", f"the decoder stopped before frame {missing[0]} of {len(row['frame_durations_ms'])}"
            )
        canvas = {i: to_canvas(frame, self.cfg.frame_size) for i, frame in decoded.items()}
        return {"frames": np.stack([canvas[i] for i in indices.tolist()]), "frame_timestamps_ms": timestamps.tolist()}
