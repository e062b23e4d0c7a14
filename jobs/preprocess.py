"""`rdtf preprocess INPUT... --out DATASET_DIR`: the curated-dataset job, with flags mapped onto its config."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.config import PreprocessConfig
from pipeline.runner import run_preprocess
from schemas.config import load

# flag -> dotted config key; flags override the --config file.
FLAG_KEYS = {
    "address": "ray.address",
    "num_cpus": "ray.num_cpus",
    "rows_per_shard": "ray.rows_per_shard",
    "fps": "decode.fps",
    "max_frames": "decode.max_frames",
    "frame_size": "decode.frame_size",
    "max_total_pixels": "decode.max_total_pixels",
    "min_side": "filters.min_side",
    "max_aspect_ratio": "filters.max_aspect_ratio",
    "min_frames": "filters.min_frames",
    "min_spatial_entropy": "filters.min_spatial_entropy",
    "path_column": "inputs.path_column",
    "caption_column": "inputs.caption_column",
    "id_column": "inputs.id_column",
}


def add_preprocess_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "preprocess",
        help="turn animated stickers into a curated Parquet dataset",
        description=(
            "Decode stickers (GIF, animated WebP, APNG, PNG/JPEG/WebP stills, MP4/WebM) at a low frame rate, "
            "de-duplicate them, filter them, score their static difficulty and pick keyframes; write Parquet "
            "shards, a rejects table and card.json. Re-running on the same --out resumes: inputs already "
            "written (as rows or rejects) are skipped."
        ),
        epilog="Settings: docs/preprocess.md. Every input ends as a row or a reject: see docs/rejects.md.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a folder (recursive), a glob, a manifest "
        "(.csv/.jsonl/.parquet with a path column and optional caption and id), or a file; "
        "local paths or URIs (s3://, gs://, ...)",
    )
    parser.add_argument("--out", required=True, metavar="DATASET_DIR", help="where the dataset is written")
    parser.add_argument("--config", metavar="FILE", help="YAML settings (see configs/preprocess.yaml)")
    parser.add_argument("--address", help="run on this Ray cluster (default: an embedded local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray (default: all)")
    parser.add_argument("--rows-per-shard", type=int, help="inputs per task and rows per Parquet file (128)")
    parser.add_argument("--fps", type=float, help="frames per second sampled by display time (8)")
    parser.add_argument("--max-frames", type=int, help="at most this many frames per sample (16)")
    parser.add_argument("--frame-size", type=int, help="training resolution, square, pixels (256)")
    parser.add_argument("--max-total-pixels", type=int, help="decompression-bomb limit on width*height*frames")
    parser.add_argument("--min-side", type=int, help="reject stickers whose shorter side is smaller (32)")
    parser.add_argument("--max-aspect-ratio", type=float, help="reject stickers more elongated than this (3.0)")
    parser.add_argument("--min-frames", type=int, help="reject stickers with fewer frames (1)")
    parser.add_argument("--min-spatial-entropy", type=float, help="reject stickers below this entropy, bits (0.5)")
    parser.add_argument("--path-column", help="manifest column with paths/URIs")
    parser.add_argument("--caption-column", help="manifest column with captions")
    parser.add_argument("--id-column", help="manifest column with your own ids")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars even at a terminal")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}
    cfg = load(PreprocessConfig, args.config, overrides)
    summary = run_preprocess(args.inputs, args.out, cfg, show_progress=False if args.no_progress else None)
    print("\n".join(summary.lines()))
    return 0
