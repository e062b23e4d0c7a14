"""VSD2M-style curation filters, each with its reason code: size, aspect ratio and frame count before decoding,
information entropy after."""

from __future__ import annotations

from typing import Any

from rdtf.pipeline.config import FilterConfig
from rdtf.pipeline.stage import Reject, Stage


class MetadataFilterStage(Stage):
    """Rejects by header facts alone, so that nothing is decoded for inputs that would be thrown away."""

    name = "filter"
    reads = ("width", "height", "num_frames")
    writes = ()

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        width, height, frames = row["width"], row["height"], row["num_frames"]
        if min(width, height) < self.cfg.min_side:
            raise Reject("too_small", f"{width}x{height} has a side below filters.min_side={self.cfg.min_side}")
        ratio = max(width, height) / min(width, height)
        if ratio > self.cfg.max_aspect_ratio:
            raise Reject(
                "bad_aspect_ratio",
                f"{width}x{height} has aspect {ratio:.2f} > filters.max_aspect_ratio={self.cfg.max_aspect_ratio}",
            )
        if frames < self.cfg.min_frames:
            raise Reject("too_few_frames", f"{frames} frames < filters.min_frames={self.cfg.min_frames}")
        return {}


class EntropyFilterStage(Stage):
    """Rejects blank and near-uniform stickers by their spatial entropy (the VSD2M 'low information entropy')."""

    name = "filter"
    reads = ("spatial_entropy",)
    writes = ()

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["spatial_entropy"] < self.cfg.min_spatial_entropy:
            raise Reject(
                "low_entropy",
                f"spatial entropy {row['spatial_entropy']:.3f} bits < filters.min_spatial_entropy="
                f"{self.cfg.min_spatial_entropy}",
            )
        return {}
