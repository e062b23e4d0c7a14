"""Read, probe and decode inputs: ProbeStage refuses what must not be decoded, DecodeStage decodes what was sampled.

Both stages hand the untrusted bytes to the worker's decoder process (pipeline.isolation), never parse them in the
worker itself: an input whose probe or decode crashes, hangs or runs out of memory becomes a reject (decoder_crash,
timeout, too_large), and the rest of the task goes on. The decoders are in pipeline.probe and pipeline.frame_readers.
"""

from __future__ import annotations

from typing import Any

from rdtf.pipeline.config import DecodeConfig
from rdtf.pipeline.frame_readers import LIBRARIES, sampled_frames
from rdtf.pipeline.isolation import decoder_process
from rdtf.pipeline.probe import complete_part, probe, sniff
from rdtf.pipeline.read_bytes import read_bytes
from rdtf.pipeline.stage import Reject, Resources, Stage


def decoder_resources(cfg: DecodeConfig, memory_per_row: int = 0) -> Resources:
    """One CPU, and the decoder process's memory limit (its own 34 MB at start aside)."""
    return Resources(num_cpus=1.0, memory=cfg.max_memory_mb * 2**20, memory_per_row=memory_per_row)


class ProbeStage(Stage):
    """Reads each kept input and its headers; rejects unsupported formats, corrupt headers, decompression bombs and
    (unless decode.keep_truncated) truncated files. A kept truncated file goes on cut to its complete frames."""

    name = "probe"
    reads = ("source_uri",)
    writes = ("data", "format", "width", "height", "num_frames", "frame_durations_ms", "truncated")

    def __init__(self, cfg: DecodeConfig):
        self.cfg = cfg
        # A row's file bytes are not counted: their bound (max_file_bytes) would reserve gigabytes for 0.2 MB.
        self.resources = decoder_resources(cfg)

    def setup(self) -> None:
        decoder_process(self.cfg.max_memory_mb).start()

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        data = read_bytes(row["source_uri"], self.cfg.max_file_bytes)
        facts = decoder_process(self.cfg.max_memory_mb).run(
            probe, data, timeout_s=self.cfg.timeout_s, imports=LIBRARIES.get(sniff(data), ())
        )
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


class DecodeStage(Stage):
    """Decodes the frames on screen at the sampled times onto the square training canvas."""

    name = "decode"
    reads = ("source_uri", "data", "format", "frame_durations_ms")  # source_uri: for decode.fault_injection
    writes = ("frames", "frame_timestamps_ms")

    def __init__(self, cfg: DecodeConfig):
        self.cfg = cfg
        self.resources = decoder_resources(cfg, memory_per_row=cfg.max_frames * cfg.frame_size**2 * 3)

    def setup(self) -> None:
        decoder_process(self.cfg.max_memory_mb).start()

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        frames, timestamps = decoder_process(cfg.max_memory_mb).run(
            sampled_frames,
            row["data"],
            row["format"],
            row["frame_durations_ms"],
            cfg.fps,
            cfg.max_frames,
            cfg.frame_size,
            cfg.resample,
            timeout_s=cfg.timeout_s,
            imports=LIBRARIES.get(row["format"], ()),
            fault=cfg.fault_for(row["source_uri"]),
        )
        return {"frames": frames, "frame_timestamps_ms": timestamps}
