"""Settings of `rdtf preprocess`, validated before any input is touched (see schemas.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from rdtf.schemas.config import require

# Extensions that folder and glob discovery pick up; manifests may name any file.
STICKER_EXTENSIONS = ("gif", "webp", "png", "apng", "jpg", "jpeg", "mp4", "webm")
# decode.resample: the filters of pipeline.canvas.DOWNSCALE (named here so that the config does not import Pillow).
Resample = Literal["lanczos", "reduce_lanczos"]
# Settings added after datasets were made that change the stored result, with the value every dataset made before
# them has: a card without one reads as that value, so such a dataset resumes with it and refuses another.
SETTINGS_BEFORE_THEY_EXISTED: dict[str, dict[str, Any]] = {"decode": {"resample": "lanczos"}}


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
class InjectedFault:
    """A testing aid: the decoder process fails on purpose on every input whose source_uri contains `match`."""

    match: str = ""  # a substring of source_uri (required)
    # abort: os.abort() (decoder_crash); segfault: reads address 0 (decoder_crash); sleep: 30 x decode.timeout_s
    # (timeout); allocate: 2 x decode.max_memory_mb, 16 MiB at a time (too_large)
    action: Literal["abort", "segfault", "sleep", "allocate"] = "abort"

    def __post_init__(self) -> None:
        require(self.match != "", "decode.fault_injection.match", "must not be empty (it would match every input)")


@dataclass
class DecodeConfig:
    """Frame sampling, training resolution and the limits that protect workers from hostile files."""

    fps: float = 8.0  # frames per second sampled by display time ("decoded at a low frame rate")
    max_frames: int = 16  # at most this many frames per sample; longer clips are sampled evenly over their length
    frame_size: int = 256  # frames are resized (aspect kept) and padded with white to this square, pixels
    # How frames larger than frame_size are shrunk (pipeline/canvas.py, docs/preprocess.md "The canvas"):
    # reduce_lanczos (box-reduce by the whole factor, then Lanczos) or lanczos (datasets made before this setting).
    resample: Resample = "reduce_lanczos"
    max_file_bytes: int = 64 * 2**20  # larger files are rejected unread (file_too_large)
    # Pixels a decoder allocates above this is a decompression bomb: per frame, the canvas it is composited into
    # plus the frame's own rectangle (a 512x512 GIF of 512 full frames is exactly 2**28); width x height x frames
    # for videos and stills.
    max_total_pixels: int = 2**28
    # A file that ends before its last frame is rejected (truncated); true keeps its complete frames, in a row
    # marked truncated.
    keep_truncated: bool = False
    # Each input is probed and decoded in a child process (pipeline/isolation.py), within these limits:
    timeout_s: float = 60.0  # timeout: seconds one input's probe or decode may take (real stickers: under 1 s)
    max_memory_mb: int = 1024  # too_large: MiB of memory one input's decoding may add to the decoder process
    fault_injection: tuple[InjectedFault, ...] = ()  # testing aid: make the decoder fail on chosen inputs

    def __post_init__(self) -> None:
        require(0 < self.fps <= 60, "decode.fps", f"must be in (0, 60], got {self.fps}")
        require(1 <= self.max_frames <= 256, "decode.max_frames", f"must be in [1, 256], got {self.max_frames}")
        require(16 <= self.frame_size <= 2048, "decode.frame_size", f"must be in [16, 2048], got {self.frame_size}")
        require(
            self.resample in get_args(Resample),
            "decode.resample",
            f"must be one of {', '.join(get_args(Resample))}, got {self.resample!r}",
        )
        require(self.max_file_bytes > 0, "decode.max_file_bytes", "must be positive")
        require(self.max_total_pixels > 0, "decode.max_total_pixels", "must be positive")
        require(
            isinstance(self.keep_truncated, bool),
            "decode.keep_truncated",
            f"must be true or false, not {self.keep_truncated!r}",
        )
        require(self.timeout_s > 0, "decode.timeout_s", f"must be positive, got {self.timeout_s}")
        require(self.max_memory_mb > 0, "decode.max_memory_mb", f"must be positive, got {self.max_memory_mb}")

    def fault_for(self, source_uri: str) -> str | None:
        """The action of the first injected fault that matches this input (None for every input in production)."""
        return next((f.action for f in self.fault_injection if f.match in source_uri), None)


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
    # Ray retries of a task or CLIP actor that failed (a node lost, a worker killed): bounded, so that a task failing
    # the same way every time stops the job (a re-run resumes) instead of running forever. An input's decoder
    # failing is never one: it is a reject (decoder_crash, timeout, too_large).
    max_retries: int = 3

    def __post_init__(self) -> None:
        require(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", "must be at least 1")
        require(self.object_store_mb >= 75, "ray.object_store_mb", "Ray needs at least 75 MiB")
        require(self.rows_per_shard >= 1, "ray.rows_per_shard", "must be at least 1")
        require(self.max_retries >= 0, "ray.max_retries", f"must be at least 0, got {self.max_retries}")


@dataclass
class BookkeepingConfig:
    """Where the driver keeps its lists (inputs, ledger, hashes, duplicates): a DuckDB database in a local temporary
    folder (pipeline/workspace.py), so that its memory stays bounded whatever the number of inputs."""

    # DuckDB's memory_limit, MiB: joins, group-bys and sorts past it spill to temp_dir. The driver's peak is about
    # this plus Python, pyarrow and Ray's client (docs/benchmarks.md, "Bookkeeping at scale").
    memory_mb: int = 512
    threads: int | None = None  # DuckDB's worker threads; None: one per core, at most one per 128 MiB of memory_mb
    temp_dir: str | None = None  # local folder for the database and its spill files; None: the system's temp folder

    def __post_init__(self) -> None:
        require(self.memory_mb >= 64, "bookkeeping.memory_mb", f"must be at least 64, got {self.memory_mb}")
        require(self.threads is None or self.threads >= 1, "bookkeeping.threads", "must be at least 1 (or null)")


@dataclass
class ClipConfig:
    """The CLIP stage (docs/clip.md): embeddings, caption scores, zero-shot tags, captions and near-duplicates."""

    weights: str | None = None  # a checkpoint file, an open_clip pretrained tag, or "random"; None: stage skipped
    model: str = "ViT-B-32"  # an open_clip config name, or one of pipeline/clip_configs/ (rdtf-tiny-clip)
    seed: int = 0  # seeds "random" weights, so that every actor builds the same model
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the Ray cluster has GPUs, else cpu
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on cuda, fp32 on cpu
    # Images per forward pass. Every pass holds exactly this many (the last one of a batch padded), so an embedding
    # never depends on which other frames shared its pass; the padding costs at most one pass per block.
    batch_size: int = 128
    pool_size: int | None = None  # actors; None: one per GPU share on cuda (GPUs / num_gpus), 1 on cpu
    num_gpus: float = 1.0  # GPUs per actor on cuda; fractional (0.5) puts several actors on one GPU
    # CPUs per actor (its torch threads: at least 1). Fractional, because on a small machine a pool of 1-CPU actors
    # leaves the decode tasks no CPU and the job hangs (measured on 2 CPUs, docs/stack-notes).
    num_cpus: float = 0.5
    num_tags: int = 5  # zero-shot tags kept per sample, with their scores
    vocabulary: str | None = None  # tag vocabulary file, one tag a line; None: pipeline/sticker_vocabulary.txt
    captioner: str | None = None  # CoCa weights (file, tag or "random") for inputs without a caption; None: from tags
    captioner_model: str = "coca_ViT-B-32"  # the CoCa config of `captioner`
    caption_batch_size: int = 16  # images per CoCa generate call (padded like batch_size)
    caption_max_tokens: int = 20  # generated caption length limit, tokens
    min_clip_score: float | None = None  # clip_score reject: given captions scoring below (cosine); None: off
    near_duplicate_threshold: float | None = None  # near_duplicate reject: embedding cosine at or above; None: off
    # Rows per cluster of the near-duplicate pass: pairs are compared only within a cluster, so its cost is about
    # rows x near_duplicate_cluster_rows dot products instead of rows squared.
    near_duplicate_cluster_rows: int = 20_000

    def __post_init__(self) -> None:
        require(self.weights is None or self.weights.strip() != "", "clip.weights", "must not be empty")
        require(self.model.strip() != "", "clip.model", "must name an open_clip config")
        require(self.batch_size >= 1, "clip.batch_size", "must be at least 1")
        require(self.pool_size is None or self.pool_size >= 1, "clip.pool_size", "must be at least 1")
        require(0 < self.num_gpus <= 8, "clip.num_gpus", f"must be in (0, 8], got {self.num_gpus}")
        require(0 < self.num_cpus <= 256, "clip.num_cpus", f"must be in (0, 256], got {self.num_cpus}")
        require(1 <= self.num_tags <= 50, "clip.num_tags", f"must be in [1, 50], got {self.num_tags}")
        require(self.caption_batch_size >= 1, "clip.caption_batch_size", "must be at least 1")
        require(
            6 <= self.caption_max_tokens <= 76,
            "clip.caption_max_tokens",
            f"must be in [6, 76] (CoCa generates at least 5 tokens), got {self.caption_max_tokens}",
        )
        require(
            self.min_clip_score is None or -1 <= self.min_clip_score <= 1,
            "clip.min_clip_score",
            "is a cosine: must be in [-1, 1] (or null: off)",
        )
        require(
            self.near_duplicate_threshold is None or 0 < self.near_duplicate_threshold <= 1,
            "clip.near_duplicate_threshold",
            "is a cosine: must be in (0, 1] (or null: off)",
        )
        require(self.near_duplicate_cluster_rows >= 2, "clip.near_duplicate_cluster_rows", "must be at least 2")

    @property
    def enabled(self) -> bool:
        return self.weights is not None


@dataclass
class PreprocessConfig:
    """Everything `rdtf preprocess` does; saved in the dataset card."""

    inputs: InputConfig = field(default_factory=InputConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    bookkeeping: BookkeepingConfig = field(default_factory=BookkeepingConfig)
