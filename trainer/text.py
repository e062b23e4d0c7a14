"""The frozen open_clip text tower: captions -> per-token features (b, 77, width) for DFGN's cross-attention.

Loads a local open_clip checkpoint file, or random weights for tests and the demo (said loudly). The paper uses a
Chinese-CLIP ViT-H text tower plus T5 (notes: Text); rdtf uses one open_clip text tower, whose features DFGN
projects to its cross-attention width (`encoder_hid_dim`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import open_clip
import torch
from torch import nn

from rdtf.schemas.config import ConfigError
from rdtf.trainer.config import TextConfig

log = logging.getLogger("rdtf.train")

# Small open_clip configs shipped with rdtf (rdtf-tiny-text: a 2-layer, 64-wide text tower for CPU tests and demos).
CONFIG_DIR = Path(__file__).parent / "open_clip_configs"
# Masked tokens become the padding id: the model sees it after every caption already, so it carries no meaning.
MASK_TOKEN_ID = 0


class TextEncoder(nn.Module):
    """open_clip's token embedding, transformer and final norm, frozen; the image tower is dropped after loading."""

    def __init__(self, config: TextConfig):
        super().__init__()
        open_clip.add_model_config(CONFIG_DIR)
        if config.model not in open_clip.list_models():
            raise ConfigError(
                f"config key 'text.model': {config.model!r} is not an open_clip model config "
                f"(for example ViT-B-32, ViT-H-14, or rdtf-tiny-text for tests)"
            )
        pretrained = None
        if config.weights == "random":
            log.warning("text.weights is 'random': the text tower has random weights (fine for tests and demos only)")
        elif not os.path.isfile(config.weights):
            raise ConfigError(
                f"config key 'text.weights': {config.weights} is not a file; give a local open_clip checkpoint "
                "(no model hub is reached) or 'random'"
            )
        else:
            pretrained = config.weights
        try:
            with torch.random.fork_rng():  # random weights from a fixed seed, not from the caller's RNG state
                torch.manual_seed(config.random_seed)
                clip = open_clip.create_model(config.model, pretrained=pretrained)
        except RuntimeError as error:
            raise ConfigError(
                f"config key 'text.weights': {config.weights} does not fit open_clip model {config.model}: {error}"
            ) from error
        self.tokenizer = open_clip.get_tokenizer(config.model)
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.width = clip.transformer.width
        self.special_ids = (self.tokenizer.sot_token_id, self.tokenizer.eot_token_id, 0)
        self.requires_grad_(False)
        self.eval()

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """(b, context_length) token ids; an empty caption is just start and end tokens."""
        return self.tokenizer(captions)

    def mask_tokens(self, tokens: torch.Tensor, prob: float, generator: torch.Generator | None) -> torch.Tensor:
        """Text augmentation: each caption token (not start, end or padding) is masked with probability `prob`."""
        draws = torch.rand(tokens.shape, generator=generator)
        maskable = ~torch.isin(tokens, torch.tensor(self.special_ids))
        return torch.where(maskable & (draws < prob), torch.full_like(tokens, MASK_TOKEN_ID), tokens)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token features (b, L, width), in the dtype of the tower's weights."""
        dtype = self.token_embedding.weight.dtype
        x = self.token_embedding(tokens.to(self.token_embedding.weight.device)).to(dtype)
        x = x + self.positional_embedding.to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        return self.ln_final(x)
