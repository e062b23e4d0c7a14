"""Small curated datasets for trainer tests, written straight to Parquet with the sample schema (no Ray needed),
and a tiny VAE folder. Each clip is a coloured square moving over white: easy to learn, and every clip differs.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rdtf.schemas.dataset import KEYFRAME_COUNTS, SAMPLE_SCHEMA
from rdtf.schemas.frames import encode_frame
from rdtf.schemas.layout import DATA_DIR


def clip_frames(index: int, num_frames: int, size: int) -> np.ndarray:
    """(num_frames, size, size, 3) uint8: a square of a colour set by `index`, moving right."""
    rng = np.random.default_rng(index)
    colour = rng.integers(0, 200, 3)
    side = size // 3
    frames = np.full((num_frames, size, size, 3), 255, dtype=np.uint8)
    for f in range(num_frames):
        x = (f * size // (2 * num_frames) + index) % (size - side)
        frames[f, size // 3 : size // 3 + side, x : x + side] = colour
    return frames


def keyframe_sets(num_frames: int) -> list[list[int]]:
    """Evenly spread indices, k = 3..8 (repeats when the clip is shorter, as the pipeline's ping-pong does)."""
    return [np.linspace(0, num_frames - 1, k).round().astype(int).tolist() for k in KEYFRAME_COUNTS]


def make_dataset(root: str, files: int = 2, rows_per_file: int = 6, size: int = 32) -> str:
    """Write `files` shards of `rows_per_file` rows under root/data/; returns root."""
    os.makedirs(os.path.join(root, DATA_DIR), exist_ok=True)
    index = 0
    for file in range(files):
        rows = []
        for _ in range(rows_per_file):
            num_frames = 2 + index % 9
            frames = clip_frames(index, num_frames, size)
            rows.append(
                {
                    "sample_id": f"{index:064x}",
                    "source_uri": f"/made/clip_{index}.gif",
                    "source_id": None,
                    "format": "gif",
                    "num_bytes": 1000,
                    "width": size,
                    "height": size,
                    "num_frames": num_frames,
                    "frame_durations_ms": [125] * num_frames,
                    "frames": [encode_frame(f) for f in frames],
                    "frame_timestamps_ms": [125 * i for i in range(num_frames)],
                    "frame_size": size,
                    "keyframe_sets": keyframe_sets(num_frames),
                    "caption": f"a square of colour {index % 5}",
                    "caption_source": "given",
                    "spatial_entropy": 1.0,
                    "temporal_entropy": 1.0,
                    "static_difficulty": float(index % 10) / 10,
                    "clip_embedding": None,
                    "clip_score": None,
                    "tags": None,
                }
            )
            index += 1
        table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
        pq.write_table(table, os.path.join(root, DATA_DIR, f"part-{file:03d}.parquet"))
    return root


def tiny_vae_folder(path) -> str:
    """A 2-level AutoencoderKL (factor 2, 4 latent channels) with random weights, saved as a diffusers folder."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    vae.save_pretrained(path)
    return str(path)
