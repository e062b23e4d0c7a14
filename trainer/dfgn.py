"""DFGN (Discrete Frame Generation Network): the 3D UNet that RDTF trains from scratch, built from diffusers' blocks.

The UNet is diffusers' `UNet3DConditionModel` layout (ModelScope T2V): per layer resnet -> temporal layer -> spatial
transformer (self- and cross-attention to the text) -> temporal transformer. DFGN's temporal layer is the STI layer
(trainer/sti.py); its input is the noisy latent concatenated with the encoded condition latent. See ../docs/model.md.
Presets: configs/{paper,small,tiny}.yaml, section `model:`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
import yaml
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_blocks import UNetMidBlock3DCrossAttn, get_down_block, get_up_block
from torch import nn

from rdtf.schemas.config import require
from rdtf.trainer.model_settings import Fusion, TemporalLayer, check_values
from rdtf.trainer.sti import STILayer

NORM_EPS = 1e-5  # diffusers UNet3DConditionModel's default
TRANSFORMER_IN_HEADS = 8  # the temporal transformer after conv_in, as in diffusers UNet3DConditionModel
CONDITION_WIDTH = 16  # the condition encoder's conv stack c -> 16 -> 16 -> c (paper notes)
CONDITION_HEADS, CONDITION_HEAD_DIM = 2, 8  # its per-pixel temporal transformer: 16 wide, like the conv stack


class ConditionEncoder(nn.Module):
    """Encodes the condition latent c (b, c, f, h, w): c + per-pixel temporal attention over per-frame convs of c.

    c is already masked by the caller (clean latents of the given frames, zeros elsewhere); the encoder lets every
    frame see what was given elsewhere in the clip before the UNet's first layer. The last conv and the attention's
    output projection start at zero, so a fresh encoder is the identity: conv_in sees each given frame's clean latent
    beside its noisy one, pixel for pixel, and the learned part grows in from there (as diffusers zero-inits
    TransformerTemporal-style residual branches). Without the identity the conv stack shrank c about 20-fold and
    the attention's random output drowned it, and the tiny preset did not learn to use its condition
    (docs/learning.md).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(channels, CONDITION_WIDTH, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(CONDITION_WIDTH, CONDITION_WIDTH, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(CONDITION_WIDTH, channels, 3, padding=1),
        )
        # One GroupNorm group: 3 (pixels) or 4 (latents) channels are too few to split.
        self.transformer = TransformerTemporalModel(
            CONDITION_HEADS, CONDITION_HEAD_DIM, in_channels=channels, num_layers=1, norm_num_groups=1
        )
        for layer in (self.convs[-1], self.transformer.proj_out):  # the identity at init (see the docstring)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """(b, c, f, h, w) -> (b*f, c, h, w), frames folded into the batch as the UNet's layers take them."""
        num_frames = condition.shape[2]
        frames = condition.transpose(1, 2).flatten(0, 1)
        return frames + self.transformer(self.convs(frames), num_frames=num_frames, return_dict=False)[0]


class DFGN(ModelMixin, ConfigMixin):
    """Predicts the noise of a clip of latents (or pixels) given the timestep, the text and the condition latent.

    Parameters (all saved by `save_pretrained`; presets in configs/*.yaml):
        in_channels: channels of one frame, 4 for SD-VAE latents, 3 in pixel space; the UNet's input has twice as
            many (noisy sample + condition), its output as many (the noise).
        sample_size: height = width of a frame in latent (or pixel) units; metadata for samplers, any size runs.
        num_frames: frames per clip (8, paper); metadata for samplers, any number runs.
        block_out_channels: channels of the UNet's levels; all levels but the deepest have cross-attention.
        layers_per_block: layers per down block; up blocks get one more, as in diffusers.
        attention_head_dim: channels per head of the spatial and temporal transformers (heads = channels / this).
        cross_attention_dim: width of the text features that the cross-attention layers read.
        encoder_hid_dim: width of encoder_hidden_states when it differs from cross_attention_dim (the text tower's
            output): a linear projection to cross_attention_dim (diffusers' "text_proj"); None: no projection.
        norm_num_groups: GroupNorm groups everywhere in the UNet.
        temporal_layer: "sti" (DFGN), or "conv3d" to keep diffusers' TemporalConvLayer (the paper's ablation).
        sti_fusion: "mlp_gate" (paper figure) or "scalars" (released code); see trainer/sti.py.
        sti_heads, sti_head_dim: the STI layer's half-resolution attention (8 x 32, paper).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        sample_size: int = 32,
        num_frames: int = 8,
        block_out_channels: tuple[int, ...] = (320, 640, 1024, 1280),
        layers_per_block: int = 2,
        attention_head_dim: int = 64,
        cross_attention_dim: int = 1024,
        encoder_hid_dim: int | None = None,
        norm_num_groups: int = 32,
        temporal_layer: TemporalLayer = "sti",
        sti_fusion: Fusion = "mlp_gate",
        sti_heads: int = 8,
        sti_head_dim: int = 32,
    ) -> None:
        super().__init__()
        check_values(self.config)
        channels = list(block_out_channels)
        time_embed_dim = channels[0] * 4  # diffusers' choice
        levels = len(channels)
        self.gradient_checkpointing = False

        # input: noisy sample ++ encoded condition, then a temporal transformer, as diffusers does after conv_in
        self.condition_encoder = ConditionEncoder(in_channels)
        self.conv_in = nn.Conv2d(2 * in_channels, channels[0], 3, padding=1)
        self.transformer_in = TransformerTemporalModel(
            TRANSFORMER_IN_HEADS, attention_head_dim, in_channels=channels[0], norm_num_groups=norm_num_groups
        )
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim, act_fn="silu")
        self.encoder_hid_proj = (
            nn.Linear(encoder_hid_dim, cross_attention_dim) if encoder_hid_dim is not None else nn.Identity()
        )

        shared = dict(
            temb_channels=time_embed_dim,
            resnet_eps=NORM_EPS,
            resnet_act_fn="silu",
            resnet_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            # diffusers' 3D blocks build Transformer2DModel(channels // n, n) from this argument: n is the head dim
            num_attention_heads=attention_head_dim,
        )
        self.down_blocks = nn.ModuleList(
            get_down_block(
                "DownBlock3D" if i == levels - 1 else "CrossAttnDownBlock3D",
                num_layers=layers_per_block,
                in_channels=channels[max(i - 1, 0)],
                out_channels=channels[i],
                add_downsample=i < levels - 1,
                downsample_padding=1,
                **shared,
            )
            for i in range(levels)
        )
        self.mid_block = UNetMidBlock3DCrossAttn(in_channels=channels[-1], **shared)
        reversed_channels = channels[::-1]
        self.up_blocks = nn.ModuleList(
            get_up_block(
                "UpBlock3D" if i == 0 else "CrossAttnUpBlock3D",
                num_layers=layers_per_block + 1,
                in_channels=reversed_channels[min(i + 1, levels - 1)],
                out_channels=reversed_channels[i],
                prev_output_channel=reversed_channels[max(i - 1, 0)],
                add_upsample=i < levels - 1,
                resolution_idx=i,
                **shared,
            )
            for i in range(levels)
        )
        # The STI layers replace the TemporalConvLayers that diffusers' blocks build: same call, so the blocks' own
        # forward runs unchanged (building and dropping the convs costs a moment at construction, nothing after).
        if temporal_layer == "sti":
            for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
                block.temp_convs = nn.ModuleList(
                    STILayer(conv.in_dim, sti_heads, sti_head_dim, sti_fusion, norm_num_groups, NORM_EPS)
                    for conv in block.temp_convs
                )

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], in_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        condition: torch.Tensor,
    ) -> torch.Tensor:
        """The predicted noise (b, c, f, h, w) of `sample` (b, c, f, h, w) at `timestep` (b,) or a scalar.

        encoder_hidden_states: the text embedding (b, L, encoder_hid_dim or cross_attention_dim), zeros where the
            text is gated off.
        condition: the masked condition latent (b, c, f, h, w), zeros where no frame is given.
        """
        batch, _, num_frames, height, width = sample.shape
        # 1. time: one embedding per clip, repeated for its frames (diffusers' sinusoids are float32: cast to dtype)
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))
        emb = emb.repeat_interleave(num_frames, dim=0)
        text = self.encoder_hid_proj(encoder_hidden_states).repeat_interleave(num_frames, dim=0)

        # 2. input: frames folded into the batch, (b*f, 2c, h, w)
        frames = torch.cat([sample.transpose(1, 2).flatten(0, 1), self.condition_encoder(condition)], dim=1)
        hidden = self.conv_in(frames)
        hidden = self.transformer_in(hidden, num_frames=num_frames, return_dict=False)[0]

        # 3. down, keeping the skips
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            hidden, block_skips = self._run(block, hidden, emb, num_frames=num_frames, **_text(block, text))
            skips += block_skips

        # 4. mid
        hidden = self._run(self.mid_block, hidden, emb, num_frames=num_frames, encoder_hidden_states=text)

        # 5. up; upsample to the skip's size, so that sizes that are not multiples of 2**levels round-trip
        for i, block in enumerate(self.up_blocks):
            block_skips, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if i < len(self.up_blocks) - 1 else None
            hidden = self._run(
                block,
                hidden,
                block_skips,
                emb,
                num_frames=num_frames,
                upsample_size=upsample_size,
                **_text(block, text),
            )

        # 6. out
        noise = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return noise.reshape(batch, num_frames, -1, height, width).transpose(1, 2)

    def _run(self, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Call a UNet block, through activation checkpointing when it is on."""
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(functools.partial(block, **kwargs), *args)
        return block(*args, **kwargs)

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Callable = torch.utils.checkpoint.checkpoint
    ) -> None:
        """Checkpoint whole UNet blocks (called by ModelMixin.enable_gradient_checkpointing).

        diffusers' 3D blocks do not checkpoint their resnets and temporal layers themselves; and the transformers
        inside stay unmarked, since checkpointing them too would recompute them a second time in the backward pass.
        """
        self._gradient_checkpointing_func = gradient_checkpointing_func
        self.gradient_checkpointing = enable


def _text(block: nn.Module, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """The text for blocks with cross-attention; the others take none."""
    return {"encoder_hidden_states": text} if getattr(block, "has_cross_attention", False) else {}


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The `model:` mapping of a preset YAML file (configs/*.yaml): the DFGN constructor's keyword arguments."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    require(isinstance(data.get("model"), dict), "model", f"{path} has no `model:` mapping")
    return data["model"]


def count_parameters(config: dict[str, Any]) -> int:
    """Parameters of DFGN(**config), counted on the meta device: no weights are allocated, the paper size included."""
    with torch.device("meta"):
        model = DFGN(**config)
    return sum(p.numel() for p in model.parameters())
