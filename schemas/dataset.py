"""Arrow schemas of a curated dataset: one row per sticker, one reject row per unusable input.

The folder layout is in `schemas.layout`.
Every Parquet file carries SCHEMA_VERSION in its metadata under `rdtf.schema_version`; readers refuse major versions
other than READ_MAJORS.
"""

from __future__ import annotations

import pyarrow as pa

# Bump the major part when a reader of the old version could misread the new files.
# 1.1: source_version, truncated (nullable: 1.0 files read as null). 2.0: frames stored as raw RGB + zstd, not PNG
# (schemas/frames.py), which a 1.x reader would fail to decode; 1.x files are still read (READ_MAJORS).
SCHEMA_VERSION = "2.0"
READ_MAJORS = ("1", "2")  # the major versions this rdtf reads
VERSION_KEY = b"rdtf.schema_version"

# k keyframes per sample, k = 3..8 (paper: "k in 3..8 keyframes per GIF"); keyframe_sets[k - 3] has length k.
KEYFRAME_COUNTS = tuple(range(3, 9))

# Where a caption came from. Null caption means none was given and none was generated yet.
CAPTION_SOURCES = ("given", "coca", "tags")

# Every reason an input can end up in the rejects table, and what it means.
REJECT_REASONS = {
    "unreadable": "the path could not be opened or read",
    "empty_file": "the file has zero bytes",
    "file_too_large": "the file is larger than decode.max_file_bytes",
    "unsupported_format": "the bytes are not a GIF, WebP, PNG/APNG, JPEG, MP4 or WebM",
    "corrupt": "the decoder failed on the file (malformed)",
    "truncated": "the file ends before its last frame (decode.keep_truncated keeps the complete frames, marked)",
    "decoder_crash": "the decoder crashed its process on this file (the rest of its task was written)",
    "timeout": "decoding took longer than decode.timeout_s",
    "too_large": "decoding needed more memory than decode.max_memory_mb",
    "decompression_bomb": (
        "the pixels a decoder would allocate (each frame's canvas and own rectangle) exceed decode.max_total_pixels"
    ),
    "too_small": "the shorter side is below filters.min_side",
    "bad_aspect_ratio": "the long side over the short side exceeds filters.max_aspect_ratio",
    "too_few_frames": "fewer frames than filters.min_frames",
    "low_entropy": "spatial entropy below filters.min_spatial_entropy (a blank or near-uniform sticker)",
    "duplicate": "the same bytes as another input; kept_sample_id names the copy that was kept",
    "clip_score": "the CLIP score between caption and frames is below the threshold",
    "near_duplicate": "a CLIP embedding nearly equal to another sample's; kept_sample_id names the kept one",
    "internal_error": "rdtf itself failed on this input (a bug: please report the message)",
}

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # sha256 of the file's bytes, hex
        pa.field("source_uri", pa.string(), nullable=False),  # absolute path or URI as read
        pa.field("source_id", pa.string()),  # the id column of a manifest, if given
        # What identified the input's content when it was read ("size:mtime_ns"): a changed input is redone.
        pa.field("source_version", pa.string()),
        pa.field("format", pa.string(), nullable=False),  # gif | webp | apng | png | jpeg | mp4 | webm
        pa.field("num_bytes", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),  # original size, pixels
        pa.field("height", pa.int32(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),  # frames in the original
        pa.field("truncated", pa.bool_()),  # true: the file ended early and its complete frames were kept on request
        pa.field("frame_durations_ms", pa.list_(pa.int32()), nullable=False),  # display time of each original frame
        # Sampled frames at the training resolution, losslessly encoded (schemas/frames.py), with their display times.
        pa.field("frames", pa.list_(pa.binary()), nullable=False),
        pa.field("frame_timestamps_ms", pa.list_(pa.int32()), nullable=False),
        pa.field("frame_size", pa.int32(), nullable=False),  # frames are frame_size x frame_size
        # keyframe_sets[k - 3]: k indices into `frames`, in temporal order (ping-pong repeats when too few frames).
        pa.field("keyframe_sets", pa.list_(pa.list_(pa.int16())), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("caption_source", pa.string()),  # one of CAPTION_SOURCES, null when caption is null
        # Static difficulty (docs/entropy.md): entropies in bits, difficulty in [0, 1].
        pa.field("spatial_entropy", pa.float32(), nullable=False),
        pa.field("temporal_entropy", pa.float32(), nullable=False),
        pa.field("static_difficulty", pa.float32(), nullable=False),
        # Filled by the CLIP stage; null when it did not run.
        pa.field("clip_embedding", pa.list_(pa.float16())),  # unit norm
        pa.field("clip_score", pa.float32()),
        pa.field("tags", pa.list_(pa.struct([("tag", pa.string()), ("score", pa.float32())]))),
    ],
    metadata={VERSION_KEY: SCHEMA_VERSION.encode()},
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("sample_id", pa.string()),  # null when the bytes could not be read
        pa.field("source_version", pa.string()),  # as in SAMPLE_SCHEMA; null when it could not be read
        pa.field("stage", pa.string(), nullable=False),  # the pipeline stage that rejected it
        pa.field("reason", pa.string(), nullable=False),  # a key of REJECT_REASONS
        pa.field("message", pa.string(), nullable=False),  # what went wrong, for a person
        pa.field("kept_sample_id", pa.string()),  # for duplicate and near_duplicate
    ],
    metadata={VERSION_KEY: SCHEMA_VERSION.encode()},
)
