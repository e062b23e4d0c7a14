"""`rdtf demo`: the main job end to end on a small embedded default, for a first look (what `make demo` runs)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rdtf.jobs.console import importing_quietly
from rdtf.jobs.corpus import make_corpus
from rdtf.pipeline.config import ClipConfig, PreprocessConfig
from rdtf.schemas.config import load
from rdtf.schemas.reader import open_dataset

TINY_PRESET = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"

# The CLIP stage with random weights and the project's tiny model: nothing to download (its results mean nothing,
# and the summary says so).
DEMO_CLIP = ClipConfig(model="rdtf-tiny-clip", weights="random")


def add_demo_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="preprocess a small corpus, train the tiny model on it and sample a GIF, all on this machine",
        description="Make a small synthetic sticker corpus (or take --input), preprocess it into a dataset on an "
        "embedded Ray, train the tiny preset on it for a few CPU minutes and sample a GIF; say where everything "
        "is. Nothing is downloaded: the CLIP stage and the text tower use random weights, and say so.",
    )
    parser.add_argument("--out", default="demo_out", help="folder for the corpus and the dataset (demo_out)")
    parser.add_argument("--input", help="a folder of your own stickers instead of the synthetic corpus")
    parser.add_argument("--count", type=int, default=24, help="synthetic stickers to make (24)")
    parser.add_argument("--train-steps", type=int, default=100, help="CPU training steps of the tiny preset (100)")
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
    from rdtf.pipeline.runner import run_preprocess  # imported here: Ray loads slowly

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
    print(
        f"demo: look into the dataset: `rdtf stats {dataset} --html {dataset}.html`, "
        f'`rdtf query {dataset} "SELECT reason, message FROM rejects"` (docs/query.md)'
    )
    train_and_sample(dataset, args.out, args.train_steps)
    return 0


def train_and_sample(dataset: str, out: str, steps: int) -> None:
    """A short run of the tiny preset on this dataset (pixel space, random text tower), then samples: a t2v GIF and
    an interpolation of one of the dataset's stickers beside the real one."""
    from rdtf.trainer.config import TrainConfig  # imported here: torch, DeepSpeed and diffusers load slowly

    with importing_quietly():
        from rdtf.trainer.sample import SampleRequest, sample
        from rdtf.trainer.train import train

    run_dir, gif = os.path.join(out, "run"), os.path.join(out, "sample_t2v.gif")
    overrides = {"run.max_steps": steps, "run.checkpoint_every": steps, "curriculum.length": steps}
    cfg = load(TrainConfig, str(TINY_PRESET), overrides)
    print(f"demo: training the tiny preset for {steps} steps on the CPU (pixel space 32x32, random text weights)")
    summary = train(cfg, dataset, run_dir)
    print("\n".join(summary.lines()))
    sample(run_dir, SampleRequest(task="t2v", text="a red circle bouncing"), gif)
    print(f"demo: sampled {gif} (t2v, 8 frames) -- try `rdtf sample --checkpoint {run_dir} --task ...` for the rest")
    picture, name = show_interpolation(dataset, run_dir, out)
    print(
        f"demo: {picture} (and interpolation.gif): top row the real {name} at 32x32, bottom row the model's "
        "interpolation of it -- frames 0, 2, 4, 6 given (pink border), 1, 3, 5, 7 generated. It is rough: a "
        f"1.4 M-parameter model after {summary.samples} training clips on 2 CPU cores, with a random text tower; "
        "docs/learning.md shows what longer training gives."
    )


def show_interpolation(dataset: str, run_dir: str, out: str) -> tuple[str, str]:
    """Interpolate the dataset's first sticker with the run's weights (`rdtf sample`'s path); write the real and the
    generated frames as a picture (interpolation.png) and side by side as a GIF (interpolation.gif)."""
    import numpy as np

    from rdtf.trainer.evaluate import iter_clips
    from rdtf.trainer.media import frame_grid, read_frames, write_gif
    from rdtf.trainer.sample import GIVEN, SampleRequest, load_run_config, sample

    size = load_run_config(run_dir).latent.resolution
    _, (row, real) = next(iter_clips(dataset, 1, 8, size))
    real_gif = write_gif(real, os.path.join(out, "interpolation_real.gif"))
    request = SampleRequest(task="interpolate", text=row["caption"] or "", gif=real_gif)
    generated = read_frames(sample(run_dir, request, os.path.join(out, "interpolation_sample.gif")), size, 8)
    picture = os.path.join(out, "interpolation.png")
    frame_grid([real, generated], [[], GIVEN["interpolate"]], scale=4).save(picture)
    write_gif(np.concatenate([real, generated], axis=2), os.path.join(out, "interpolation.gif"))
    sources = open_dataset(dataset).read(columns=["sample_id", "source_uri"]).to_pylist()  # a demo-sized dataset
    return picture, next(os.path.basename(r["source_uri"]) for r in sources if r["sample_id"] == row["sample_id"])
