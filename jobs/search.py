"""`rdtf search DATASET "a cat waving hello" -k 20` (or `--image F.gif`): the stickers nearest to a text or an
example, by the CLIP embeddings of the dataset, embedded with the same CLIP checkpoint that made them.

The dataset's card names the CLIP model and its weights (with their sha256); another checkpoint would put the query
in another space, so it is refused. The index lives beside the dataset (jobs/search_index.py). See docs/query.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from rdtf.jobs.search_index import SearchError, build, load, save
from rdtf.schemas.reader import open_dataset


def add_search_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "search",
        help="find the stickers nearest to a text or an example GIF (CLIP embeddings, an index kept beside the data)",
        description=(
            "Embed TEXT (or the frames of --image) with the CLIP checkpoint that made the dataset's embeddings and "
            "print the k nearest stickers with their cosine similarity. The first search builds an index in "
            "DATASET/index/ (FAISS); it is rebuilt when the dataset's files change."
        ),
        epilog="The index, the CLIP checkpoint and the Python API: docs/query.md (Searching a dataset).",
    )
    parser.add_argument("dataset", metavar="DATASET", help="a dataset preprocessed with --clip-weights")
    parser.add_argument("text", metavar="TEXT", nargs="?", help="what to look for, in words")
    parser.add_argument("--image", metavar="FILE", help="search by example: a GIF, WebP, PNG or JPEG")
    parser.add_argument("-k", type=int, default=20, help="results to show (20)")
    parser.add_argument(
        "--clip-weights", metavar="PATH|random", help="the CLIP checkpoint (default: the one the card names)"
    )
    parser.add_argument("--rebuild", action="store_true", help="build the index again even if it is current")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.image is None):
        args.parser.error("give TEXT or --image FILE (one of them)")
    if args.k < 1:
        args.parser.error("-k must be at least 1")

    def announce(message: str) -> None:
        print(message, file=sys.stderr)

    found = search(args.dataset, args.text, image=args.image, k=args.k, clip_weights=args.clip_weights,
                   rebuild=args.rebuild, announce=announce)  # fmt: skip
    print_results(found)
    return 0


def search(
    dataset: str,
    text: str | None = None,
    *,
    image: str | None = None,
    k: int = 20,
    clip_weights: str | None = None,
    rebuild: bool = False,
    announce: Callable[[str], None] | None = None,
) -> pa.Table:
    """The k stickers of `dataset` nearest to `text` (or to the example file `image`), best first: sample_id,
    source_uri, caption and `score` (cosine similarity). Builds or refreshes the index in DATASET/index/ first."""
    if (text is None) == (image is None):
        raise SearchError("give a text or an image to search for (one of them)")
    # told before the seconds of loading CLIP (torch, open_clip) and building the index
    if text is not None and not text.strip():
        raise SearchError("the search text is empty")
    if image is not None and not os.path.isfile(image):
        raise SearchError(f"--image {image}: no such file")
    reader = open_dataset(dataset)
    clip = (reader.card.get("clip") or {}) if reader.card else {}
    if clip.get("status") == "skipped" or "model" not in clip:
        raise SearchError(f"{dataset} has no CLIP embeddings: preprocess it with --clip-weights PATH to search it")
    encoder = QueryEncoder(clip, clip_weights, int(reader.card.get("config", {}).get("clip", {}).get("seed", 0)))
    index = None if rebuild else load(reader.layout)
    if index is None:
        if announce:
            announce(f"building the search index of {dataset} (once; rebuilt when its files change) ...")
        index = build(reader, clip)
        save(reader.layout, index)
    vector = encoder.text(text) if text is not None else encoder.image(image, reader.card["config"]["decode"])
    return index.search(vector, k)


def print_results(found: pa.Table) -> None:
    width = max(20, min(80, shutil.get_terminal_size((160, 24)).columns - 40))
    print(f"{'rank':>4} {'score':>6}  {'sample_id':<12}  caption / source")
    for rank, row in enumerate(found.to_pylist(), start=1):
        caption = (row["caption"] or "")[:width]
        print(f"{rank:>4} {row['score']:6.3f}  {row['sample_id'][:12]}  {caption}  ({row['source_uri']})")


class QueryEncoder:
    """The dataset's CLIP model, loaded from the checkpoint the card names (checked by sha256), on the CPU."""

    def __init__(self, clip: dict[str, Any], weights: str | None, seed: int):
        from rdtf.pipeline.clip_models import RANDOM, checkpoint_path, file_sha256, load_model, resolve
        from rdtf.schemas.config import ConfigError

        source = weights or clip["weights"]
        try:
            resolved = resolve("--clip-weights", "clip.model", clip["model"], source)
            path = checkpoint_path(resolved)  # the file itself, a pretrained tag's cached download, or None (random)
        except ConfigError as error:
            raise SearchError(
                f"the dataset's embeddings were made by {clip['model']} with weights {clip['weights']!r}, which "
                f"cannot be loaded here ({error}): pass --clip-weights PATH to the same checkpoint"
            ) from None
        found = file_sha256(path) if path else RANDOM  # as the pipeline recorded it (Weights.sha256)
        expected = clip.get("weights_sha256") or clip["weights"]
        if found != expected:
            raise SearchError(
                f"--clip-weights {source!r} is not the checkpoint that made the dataset's embeddings "
                f"({clip['weights']!r}, sha256 {expected}): a query embedded by another model would not be comparable"
            )
        import open_clip

        self.model = load_model(resolved, seed)
        self.tokenizer = open_clip.get_tokenizer(clip["model"])
        self.preprocess = open_clip.get_model_preprocess_cfg(self.model)

    def text(self, text: str) -> np.ndarray:
        import torch

        with torch.inference_mode():
            embedding = self.model.encode_text(self.tokenizer([text]))[0].float()
        return torch.nn.functional.normalize(embedding, dim=-1).numpy()

    def image(self, path: str, decode: dict[str, Any]) -> np.ndarray:
        """Embed the example as the pipeline embedded each sticker: its frames sampled at decode.fps on the
        frame_size canvas (pipeline.probe, pipeline.frame_readers), each frame resized to the model's input,
        embedded, and the unit embeddings averaged and normalised. Big or hostile files are the user's own here."""
        import torch

        from rdtf.pipeline.config import SETTINGS_BEFORE_THEY_EXISTED
        from rdtf.pipeline.frame_readers import sampled_frames
        from rdtf.pipeline.probe import probe
        from rdtf.pipeline.stage import Reject

        with open(path, "rb") as f:
            data = f.read()
        try:
            facts = probe(data)
            frames, _ = sampled_frames(
                data, facts.format, facts.durations_ms, decode["fps"], decode["max_frames"], decode["frame_size"],
                decode.get("resample", SETTINGS_BEFORE_THEY_EXISTED["decode"]["resample"]),  # an older card: none
            )  # fmt: skip
        except Reject as error:
            raise SearchError(f"--image {path}: cannot be read as a sticker ({error.reason}: {error})") from None
        size = self.preprocess["size"] if isinstance(self.preprocess["size"], int) else self.preprocess["size"][0]
        mean = torch.tensor(self.preprocess["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess["std"]).view(1, 3, 1, 1)
        with torch.inference_mode():
            images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="bicubic", antialias=True)
            embeddings = self.model.encode_image((images - mean) / std).float()
            unit = torch.nn.functional.normalize(embeddings, dim=-1).mean(0)
        return torch.nn.functional.normalize(unit, dim=-1).numpy()
