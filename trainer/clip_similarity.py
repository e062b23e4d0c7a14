"""CLIP similarity of generated clips: the cosine between the caption's and each frame's open_clip embedding, averaged
over the frames, with the run's own open_clip model (text.model) and both of its towers from one checkpoint.

The weights are the run's text.weights unless given (a local open_clip checkpoint, or `random` for tests and demos,
drawn from text.random_seed as the text tower is). The paper reports it as a cosine in [-1, 1] (0.376 for RDTF),
not CLIPScore's 100 * max(cos, 0). See ../docs/evaluate.md ("CLIP similarity").
"""

from __future__ import annotations

import logging
import os

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from rdtf.schemas.config import ConfigError
from rdtf.trainer.text import CONFIG_DIR

log = logging.getLogger("rdtf.eval")

RANDOM = "random"


def check_weights(weights: str, model: str) -> None:
    """Fail before any work when the checkpoint file is missing, naming it and where it comes from."""
    if weights != RANDOM and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"CLIP weights {weights} not found: give the local open_clip checkpoint of {model} (by default the "
            "run's text.weights, the file its text tower was loaded from) with --clip-weights PATH, or 'random'"
        )


class ClipSimilarity:
    """The whole open_clip model (image and text towers), frozen, on one device."""

    def __init__(self, model: str, weights: str, seed: int, device: torch.device):
        check_weights(weights, model)
        open_clip.add_model_config(CONFIG_DIR)
        if weights == RANDOM:
            log.warning("CLIP weights are random: CLIP similarity only shows that the measure runs (tests, demos)")
        try:
            with torch.random.fork_rng():  # random weights from the seed alone, as trainer.text does
                torch.manual_seed(seed)
                self.model = open_clip.create_model(model, pretrained=None if weights == RANDOM else weights)
        except RuntimeError as error:
            raise ConfigError(f"--clip-weights {weights} does not fit open_clip model {model}: {error}") from error
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model)
        self.device = device
        preprocess = self.model.visual.preprocess_cfg
        self.size = (
            tuple(preprocess["size"]) if isinstance(preprocess["size"], (list, tuple)) else (preprocess["size"],) * 2
        )
        self.mean = torch.tensor(preprocess["mean"], device=device)[:, None, None]
        self.std = torch.tensor(preprocess["std"], device=device)[:, None, None]

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, captions: list[str], scored: np.ndarray) -> list[float | None]:
        """Per clip, the mean cosine between its caption and its scored frames; None for a clip without a caption.

        frames (b, f, h, w, 3) uint8 and scored (b, f): frames are resized to the model's input (bicubic, with
        antialiasing when shrinking) and normalised with its mean and std, as open_clip's own preprocessing.
        """
        text = F.normalize(self.model.encode_text(self.tokenizer(captions).to(self.device)).float(), dim=-1)
        out: list[float | None] = []
        for clip, caption, mask, embedding in zip(frames, captions, scored, text, strict=True):
            chosen = np.flatnonzero(mask)
            if not caption or len(chosen) == 0:
                out.append(None)
                continue
            pixels = torch.from_numpy(clip[chosen]).to(self.device).permute(0, 3, 1, 2).float() / 255
            pixels = F.interpolate(pixels, size=self.size, mode="bicubic", antialias=True, align_corners=False)
            images = F.normalize(self.model.encode_image((pixels.clamp(0, 1) - self.mean) / self.std).float(), dim=-1)
            out.append(float((images @ embedding).mean()))
        return out
