"""Settings of `rdtf preprocess`, validated before any input is touched (see schemas.config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.config import require

# Extensions that folder and glob discovery pick up; manifests may name any file.
STICKER_EXTENSIONS = ("gif", "webp", "png", "apng", "jpg", "jpeg", "mp4", "webm")


@dataclass
class InputConfig:
    """How inputs are found and which manifest columns hold what."""

    path_column: str | None = None  # manifest column of paths/URIs; None: the first of uri, path, file, source_uri
    caption_column: str | None = None  # None: the first of caption, text (if any)
    id_column: str | None = None  # None: `id` if present
    extensions: tuple[str, ...] = STICKER_EXTENSIONS  # lower-case, without the dot

    def __post_init__(self) -> None:
        require(len(self.extensions) > 0, "inputs.extensions", "name at least one extension")


@dataclass
class DecodeConfig:
    """Frame sampling, training resolution and the limits that protect workers from hostile files."""

    fps: float = 8.0  # frames per second sampled by display time ("decoded at a low frame rate")
    max_frames: int = 16  # at most this many frames per sample; longer clips are sampled evenly over their length
    frame_size: int = 256  # frames are resized (aspect kept) and padded with white to this square, pixels
    max_file_bytes: int = 64 * 2**20  # larger files are rejected unread (file_too_large)
    # width x height x frames above this is a decompression bomb (a 512x512 GIF of 1024 frames is exactly 2**28).
    max_total_pixels: int = 2**28

    def __post_init__(self) -> None:
        require(0 < self.fps <= 60, "decode.fps", f"must be in (0, 60], got {self.fps}")
        require(1 <= self.max_frames <= 256, "decode.max_frames", f"must be in [1, 256], got {self.max_frames}")
        require(16 <= self.frame_size <= 2048, "decode.frame_size", f"must be in [16, 2048], got {self.frame_size}")
        require(self.max_file_bytes > 0, "decode.max_file_bytes", "must be positive")
        require(self.max_total_pixels > 0, "decode.max_total_pixels", "must be positive")


@dataclass
class FilterConfig:
    """VSD2M-style curation thresholds; each failing input becomes a reject with its reason code."""

    min_side: int = 32  # too_small: shorter side in pixels; below this an 8x upscale to 256 is mostly blur
    max_aspect_ratio: float = 3.0  # bad_aspect_ratio: long side / short side
    min_frames: int = 1  # too_few_frames: a one-frame sticker is data too (image-to-GIF conditioning)
    min_spatial_entropy: float = 0.5  # low_entropy: bits; blank and near-uniform stickers fall below (docs/entropy.md)

    def __post_init__(self) -> None:
        require(self.min_side >= 1, "filters.min_side", "must be at least 1")
        require(self.max_aspect_ratio >= 1.0, "filters.max_aspect_ratio", "must be at least 1.0")
        require(self.min_frames >= 1, "filters.min_frames", "must be at least 1")
        require(0 <= self.min_spatial_entropy <= 8, "filters.min_spatial_entropy", "must be in [0, 8] bits")


@dataclass
class DifficultyConfig:
    """Weights of the static difficulty score (docs/entropy.md)."""

    spatial_weight: float = 0.4  # how much a busy picture counts
    temporal_weight: float = 0.6  # how much motion counts: the harder part for a video model

    def __post_init__(self) -> None:
        require(self.spatial_weight >= 0, "difficulty.spatial_weight", "must be non-negative")
        require(self.temporal_weight >= 0, "difficulty.temporal_weight", "must be non-negative")
        require(
            self.spatial_weight + self.temporal_weight > 0, "difficulty", "spatial_weight + temporal_weight must be > 0"
        )


@dataclass
class RayConfig:
    """Where the job runs and how it is cut into tasks."""

    address: str | None = None  # an existing cluster ("auto", "ray://host:10001", ...); None: embedded local Ray
    num_cpus: int | None = None  # CPUs of the embedded instance; None: all of this machine's
    object_store_mb: int = 512  # embedded object store; 512 MiB ran every pipeline stage at full speed here
    rows_per_shard: int = 128  # inputs per task and at most this many rows per Parquet file

    def __post_init__(self) -> None:
        require(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", "must be at least 1")
        require(self.object_store_mb >= 75, "ray.object_store_mb", "Ray needs at least 75 MiB")
        require(self.rows_per_shard >= 1, "ray.rows_per_shard", "must be at least 1")


@dataclass
class PreprocessConfig:
    """Everything `rdtf preprocess` does; saved in the dataset card."""

    inputs: InputConfig = field(default_factory=InputConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    ray: RayConfig = field(default_factory=RayConfig)
