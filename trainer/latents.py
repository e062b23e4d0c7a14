"""The space diffusion runs in: a frozen diffusers AutoencoderKL from a local folder (the paper: 4x32x32 latents of
256x256 frames) or the frames' own pixels at a small size (pixel mode: something visible trains on a CPU).

Both codecs map clips (b, 3, f, H, W) in [-1, 1] to (b, c, f, h, w) and back, without gradients.
"""

from __future__ import annotations

import logging
import os

import torch

from rdtf.schemas.config import ConfigError
from rdtf.trainer.config import LatentConfig

log = logging.getLogger("rdtf.train")


def _frames_first(clips: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(b, c, f, h, w) -> (b*f, c, h, w), and f."""
    b, c, f, h, w = clips.shape
    return clips.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), f


def _clips_first(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b*f, c, h, w) -> (b, c, f, h, w)."""
    bf, c, h, w = frames.shape
    return frames.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)


class PixelCodec:
    """Pixel mode: the latent is the clip itself (3 channels at latent.resolution)."""

    channels = 3
    factor = 1

    def encode(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return clips

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)


class VaeCodec:
    """A frozen AutoencoderKL; latents are sampled from its posterior and scaled by its `scaling_factor`."""

    def __init__(self, path: str, device: torch.device, dtype: torch.dtype):
        from diffusers import AutoencoderKL  # imported here: pixel mode never needs it

        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(
                f"config key 'latent.vae_path': {path} is not a diffusers AutoencoderKL folder (no config.json); "
                "give a local folder written by `save_pretrained` (no model hub is reached)"
            )
        self.vae = AutoencoderKL.from_pretrained(path).to(device=device, dtype=dtype).requires_grad_(False).eval()
        self.channels = self.vae.config.latent_channels
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scale = self.vae.config.scaling_factor

    @torch.no_grad()
    def encode(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        frames, f = _frames_first(clips.to(self.vae.dtype))
        posterior = self.vae.encode(frames).latent_dist
        return _clips_first(posterior.sample(generator) * self.scale, f)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames, f = _frames_first(latents.to(self.vae.dtype) / self.scale)
        return _clips_first(self.vae.decode(frames).sample, f).clamp(-1, 1)


def load_codec(config: LatentConfig, device: torch.device, dtype: torch.dtype) -> PixelCodec | VaeCodec:
    if config.mode == "pixel":
        return PixelCodec()
    return VaeCodec(config.vae_path, device, dtype)
