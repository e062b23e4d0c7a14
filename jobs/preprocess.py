"""`rdtf preprocess INPUT... --out DATASET_DIR`: the curated-dataset job, with flags mapped onto its config."""

from __future__ import annotations

import argparse
from typing import Any

from rdtf.pipeline.config import PreprocessConfig
from rdtf.schemas.config import load

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
    "clip_model": "clip.model",
    "clip_weights": "clip.weights",
    "clip_device": "clip.device",
    "clip_precision": "clip.precision",
    "clip_batch_size": "clip.batch_size",
    "clip_actors": "clip.pool_size",
    "clip_gpus": "clip.num_gpus",
    "clip_cpus": "clip.num_cpus",
    "num_tags": "clip.num_tags",
    "captioner": "clip.captioner",
    "captioner_model": "clip.captioner_model",
    "min_clip_score": "clip.min_clip_score",
    "near_duplicate_threshold": "clip.near_duplicate_threshold",
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
    parser.add_argument("--max-total-pixels", type=int, help="decompression-bomb limit on decoded pixels (2**28)")
    parser.add_argument("--min-side", type=int, help="reject stickers whose shorter side is smaller (32)")
    parser.add_argument("--max-aspect-ratio", type=float, help="reject stickers more elongated than this (3.0)")
    parser.add_argument("--min-frames", type=int, help="reject stickers with fewer frames (1)")
    parser.add_argument("--min-spatial-entropy", type=float, help="reject stickers below this entropy, bits (0.5)")
    parser.add_argument("--path-column", help="manifest column with paths/URIs")
    parser.add_argument("--caption-column", help="manifest column with captions")
    parser.add_argument("--id-column", help="manifest column with your own ids")
    clip = parser.add_argument_group(
        "CLIP stage (docs/clip.md)",
        "embeddings, CLIP scores, zero-shot tags, captions for inputs without one, and "
        "near-duplicates; runs only when weights are given (--clip-weights or clip.weights in --config)",
    )
    clip.add_argument(
        "--clip-weights",
        metavar="PATH|TAG|random",
        help="a local open_clip checkpoint, an open_clip pretrained tag (needs a reachable model hub), or 'random' "
        "(tests and demos only: the results mean nothing)",
    )
    clip.add_argument("--clip-model", metavar="NAME", help="open_clip config name (ViT-B-32; small: rdtf-tiny-clip)")
    clip.add_argument("--no-clip", action="store_true", help="skip the CLIP stage even if the config gives weights")
    clip.add_argument("--clip-device", choices=["auto", "cpu", "cuda"], help="auto: cuda when the cluster has GPUs")
    clip.add_argument("--clip-precision", choices=["auto", "fp32", "bf16", "fp16"], help="auto: bf16 on GPU")
    clip.add_argument("--clip-batch-size", type=int, help="images per forward pass (128)")
    clip.add_argument("--clip-actors", type=int, help="actors in the pool (one per GPU share on cuda, 1 on cpu)")
    clip.add_argument("--clip-gpus", type=float, help="GPUs per actor on cuda; 0.5 puts two actors on a GPU (1)")
    clip.add_argument("--clip-cpus", type=float, help="CPUs per actor (0.5)")
    clip.add_argument("--num-tags", type=int, help="zero-shot tags kept per sample (5)")
    clip.add_argument(
        "--captioner", metavar="PATH|TAG|random", help="CoCa weights for inputs without a caption (default: from tags)"
    )
    clip.add_argument("--captioner-model", metavar="NAME", help="CoCa config of --captioner (coca_ViT-B-32)")
    clip.add_argument("--min-clip-score", type=float, help="reject given captions scoring below this cosine (off)")
    clip.add_argument(
        "--near-duplicate-threshold", type=float, help="reject near-duplicates at or above this cosine (off)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars even at a terminal")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}
    if args.no_clip:
        overrides["clip.weights"] = None
    cfg = load(PreprocessConfig, args.config, overrides)
    from rdtf.pipeline.runner import run_preprocess  # imported here: Ray loads slowly, and train/sample never need it

    summary = run_preprocess(args.inputs, args.out, cfg, show_progress=False if args.no_progress else None)
    print("\n".join(summary.lines()))
    return 0
