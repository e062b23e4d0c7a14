"""open_clip models for the CLIP stage: the project's small configs, weights from a file, a tag or `random`.

`check_weights` runs on the driver before any input is read: it loads the model once on the CPU, so that a missing
or unusable checkpoint, an unknown model name or a tag that cannot be fetched fails at once with a ConfigError
naming the key. `load_model` is what each actor calls in its setup. No model hub is reachable on the project's
machines: tests and `rdtf demo` use `random` weights with `rdtf-tiny-clip` (pipeline/clip_configs/).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rdtf.schemas.config import ConfigError

CONFIG_DIR = Path(__file__).with_name("clip_configs")  # small configs, registered under their file names
RANDOM = "random"
RANDOM_WARNING = (
    "the CLIP weights are RANDOM: embeddings, scores, tags, captions and near-duplicates are meaningless "
    "(for tests and demos only; pass a checkpoint with --clip-weights PATH)"
)
HASH_CHUNK = 8 * 2**20  # bytes read at a time while hashing a checkpoint


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from, resolved: what the card records and what the actors load."""

    key: str  # the config key that named them, for errors: clip.weights or clip.captioner
    model: str  # open_clip config name
    source: str  # as given: a path, a tag or "random"
    kind: Literal["random", "file", "tag"]
    sha256: str  # of the checkpoint file; "random" for random weights

    def card(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"model": self.model, "weights": self.source, "weights_sha256": self.sha256}
        if self.kind == RANDOM:
            entry["warning"] = RANDOM_WARNING
        return entry


def register_configs() -> None:
    """Make pipeline/clip_configs/*.json known to open_clip (once per process)."""
    import open_clip

    if not all(p.stem in open_clip.list_models() for p in CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(CONFIG_DIR)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(key: str, model_key: str, model: str, source: str) -> Weights:
    """Say what `source` is for `model` without loading anything: random, a file, or a known pretrained tag."""
    import open_clip

    register_configs()
    if model not in open_clip.list_models():
        small = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise ConfigError(
            f"config key '{model_key}': {model!r} is not an open_clip model config "
            f"(see open_clip.list_models(); the project's small ones: {small})"
        )
    if source == RANDOM:
        return Weights(key, model, source, "random", RANDOM)
    if os.path.isfile(source):
        return Weights(key, model, source, "file", "")  # hashed by check_weights
    if source in open_clip.list_pretrained_tags_by_model(model):
        return Weights(key, model, source, "tag", "")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
    raise ConfigError(
        f"config key '{key}': {source!r} is not a checkpoint file (no such file), not an open_clip pretrained tag "
        f"of {model} (its tags: {tags}), and not 'random'"
    )


def checkpoint_path(weights: Weights) -> str | None:
    """The local file to load: the path itself, the download of a tag (fetched now), or None for random weights."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    if weights.kind == "file":
        return weights.source
    if weights.kind == "tag":
        try:
            return download_pretrained(get_pretrained_cfg(weights.model, weights.source))
        except Exception as error:  # network, hub or cache failures all end here
            raise ConfigError(
                f"config key '{weights.key}': cannot fetch the pretrained weights {weights.source!r} of "
                f"{weights.model} ({type(error).__name__}: {error}). No model hub may be reachable from this "
                f"machine: download the checkpoint elsewhere and pass its path (open_clip {open_clip.__version__})."
            ) from error
    return None


def load_model(weights: Weights, seed: int, device: str = "cpu", precision: str = "fp32") -> Any:
    """Build the model in eval mode. Random weights are seeded, so every process builds the same model."""
    import open_clip
    import torch

    register_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(
        weights.model, pretrained=checkpoint_path(weights), device=device, precision=precision
    )
    return model.eval()


def check_weights(key: str, model_key: str, model: str, source: str, seed: int, captioner: bool = False) -> Weights:
    """Resolve `source` and load it once on this CPU: a clear ConfigError now instead of failing actors later."""
    weights = resolve(key, model_key, model, source)
    path = checkpoint_path(weights)
    try:
        loaded = load_model(weights, seed)
    except Exception as error:
        raise ConfigError(
            f"config key '{key}': cannot load {source!r} into the open_clip model {model} "
            f"({type(error).__name__}: {str(error)[:500]})"
        ) from error
    if captioner and not hasattr(loaded, "generate"):
        raise ConfigError(f"config key '{model_key}': {model} is not a CoCa model: it cannot generate captions")
    if captioner:
        from open_clip import coca_model

        if not coca_model._has_transformers:
            raise ConfigError(f"config key '{key}': CoCa captioning needs transformers<4.57 (see docs/install.md)")
    return weights if path is None else Weights(key, model, source, weights.kind, file_sha256(path))
