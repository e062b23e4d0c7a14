"""OpenCLIPTextEncoder: the frozen open_clip text tower of an rdtf run as a diffusers model component.

Copied as it is into the text_encoder/ folder that `rdtf export` writes, so it imports no rdtf code: the tower is
rebuilt from its open_clip model config (saved in config.json, so a config that is not one of open_clip's own, such
as rdtf-tiny-text, loads too) and its weights are loaded by `from_pretrained`. The features are the ones rdtf trains
on (trainer/text.py): per-token outputs of the final layer norm, (b, L, width).
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from open_clip.model import _build_text_tower
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH


class OpenCLIPTextEncoder(ModelMixin, ConfigMixin):
    """open_clip's token embedding, transformer and final norm.

    Parameters:
        model_cfg: the open_clip model config (`embed_dim`, `text_cfg`, optional `quick_gelu`), as open_clip's JSON.
        model_name: the open_clip config name it came from (for people; the tower is built from model_cfg).
    """

    @register_to_config
    def __init__(self, model_cfg: dict[str, Any], model_name: str = "") -> None:
        super().__init__()
        text = _build_text_tower(model_cfg["embed_dim"], model_cfg["text_cfg"], model_cfg.get("quick_gelu", False))
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self._tokenizer = _tokenizer(model_cfg["text_cfg"])

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """(b, context_length) token ids."""
        return self._tokenizer(captions)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token features (b, L, width), in the dtype of the tower's weights."""
        dtype = self.token_embedding.weight.dtype
        x = self.token_embedding(tokens.to(self.token_embedding.weight.device)).to(dtype)
        x = x + self.positional_embedding.to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        return self.ln_final(x)


def _tokenizer(text_cfg: dict[str, Any]) -> Any:
    """The tokenizer open_clip.get_tokenizer picks for this text config: a Hugging Face tokenizer when the config
    names one, else open_clip's SimpleTokenizer at the config's context length."""
    context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = text_cfg.get("tokenizer_kwargs", {})
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"],
            context_length=context_length,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **kwargs,
        )
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)
