"""`rdtf demo`: the main job end to end on a small embedded default, for a first look (what `make demo` runs)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from jobs.corpus import make_corpus
from pipeline.config import ClipConfig, PreprocessConfig
from pipeline.runner import run_preprocess
from schemas.reader import open_dataset

# The CLIP stage with random weights and the project's tiny model: nothing to download (its results mean nothing,
# and the summary says so).
DEMO_CLIP = ClipConfig(model="rdtf-tiny-clip", weights="random")


def add_demo_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="preprocess a small corpus end to end on an embedded Ray (makes the corpus unless --input is given)",
        description="Make a small synthetic sticker corpus (or take --input), preprocess it into a dataset, and "
        "say where everything is. Runs on this machine only; nothing is downloaded.",
    )
    parser.add_argument("--out", default="demo_out", help="folder for the corpus and the dataset (demo_out)")
    parser.add_argument("--input", help="a folder of your own stickers instead of the synthetic corpus")
    parser.add_argument("--count", type=int, default=24, help="synthetic stickers to make (24)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.input:
        source = args.input
        print(f"demo: preprocessing your folder {source}")
    else:
        source = os.path.join(args.out, "corpus")
        made = make_corpus(source, count=args.count)
        print(f"demo: made {len(made)} synthetic stickers (some deliberately broken) in {source}")
        source = os.path.join(source, "manifest.csv")
    dataset = os.path.join(args.out, "dataset")
    summary = run_preprocess([source], dataset, PreprocessConfig(clip=DEMO_CLIP))
    print("\n".join(summary.lines()))
    reader = open_dataset(dataset)
    table = reader.read(columns=["source_uri", "caption", "caption_source", "static_difficulty"])
    print(f"demo: {reader.num_rows} rows; the three hardest by static difficulty (caption, and where it came from):")
    for row in sorted(table.to_pylist(), key=lambda r: -r["static_difficulty"])[:3]:
        name, caption = os.path.basename(row["source_uri"]), row["caption"] or ""
        print(f"  {row['static_difficulty']:.3f}  {name}  {caption} ({row['caption_source']})")
    print(
        f"demo: rejects with reasons: {dataset}/rejects/ -- read them with schemas.open_dataset('{dataset}').rejects()"
    )
    return 0
