"""RDTFPipeline: a trained rdtf model as a diffusers pipeline, for `DiffusionPipeline.from_pretrained(FOLDER,
trust_remote_code=True)`.

This file is copied as it is into every folder `rdtf export` writes, so it imports no rdtf code: only torch, numpy,
Pillow and diffusers. It samples as `rdtf sample` does (trainer/sample.py, trainer/diffusion.py): the task's given
frames, guided DDIM from noise, the given frames kept as given; in pixel space its clips are the same, draw for draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageSequence
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, ModelMixin
from diffusers.utils import BaseOutput

NUM_FRAMES = 8  # every clip has 8 frames (the paper: "all on 8 frames")
HALF = NUM_FRAMES // 2
GIVEN = {  # task -> the frames given at sampling time, as in `rdtf sample`
    "t2v": [],
    "i2v": [0],
    "it2v": [0],
    "interpolate": list(range(0, NUM_FRAMES, 2)),
    "predict-pre": list(range(HALF, NUM_FRAMES)),
    "predict-post": list(range(HALF)),
}
TEXT_ON = {"t2v": True, "i2v": False, "it2v": True, "interpolate": True, "predict-pre": True, "predict-post": True}
NEEDS_IMAGE = ("i2v", "it2v")
NEEDS_VIDEO = ("interpolate", "predict-pre", "predict-post")


@dataclass
class RDTFPipelineOutput(BaseOutput):
    """frames: one clip per prompt, as 8 PIL images (output_type "pil"), (1, 8, h, w, 3) uint8 ("np"), or the
    latents (1, c, 8, h, w) ("latent")."""

    frames: Any


def _on_white(image: PIL.Image.Image, size: int) -> np.ndarray:
    """An image over white (transparent pixels as the rdtf pipeline composites them), resized: (size, size, 3)."""
    rgba = image.convert("RGBA")
    canvas = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return np.asarray(canvas.convert("RGB").resize((size, size), PIL.Image.Resampling.BICUBIC))


def _open(image: str | PIL.Image.Image) -> PIL.Image.Image:
    return PIL.Image.open(image) if isinstance(image, str) else image


def _video_frames(video: str | PIL.Image.Image | list[PIL.Image.Image], size: int) -> np.ndarray:
    """NUM_FRAMES frames spread evenly over an animation (a GIF path, an animated image or a list of frames)."""
    # each frame is converted while the iterator stands on it: the iterator yields one image, seeked frame by frame
    frames = [
        _on_white(frame, size)
        for frame in (video if isinstance(video, list) else PIL.ImageSequence.Iterator(_open(video)))
    ]
    picks = np.linspace(0, len(frames) - 1, NUM_FRAMES).round().astype(int)
    return np.stack([frames[i] for i in picks])


def _nearest_given(condition: torch.Tensor) -> torch.Tensor:
    """Each frame of the condition latent (b, c, f, h, w) replaced by its nearest given (not all-zero) frame, the
    earlier on a tie; zeros in a clip with nothing given (rdtf's trainer/diffusion.py `nearest_given`)."""
    b, _, f = condition.shape[:3]
    given = condition.flatten(3).abs().amax(dim=(1, 3)) > 0
    positions = torch.arange(f, device=condition.device)
    cost = (positions[:, None] - positions[None, :]).abs() + positions[None, :] / (2 * f)
    nearest = cost.expand(b, f, f).masked_fill(~given[:, None, :], torch.inf).argmin(dim=2)
    anchor = condition.gather(2, nearest[:, None, :, None, None].expand_as(condition))
    return anchor * given.any(dim=1).to(anchor.dtype)[:, None, None, None, None]


class RDTFPipeline(DiffusionPipeline):
    """Animated stickers (8 frames) from text, an image, or the frames of an animation, with a DFGN denoiser.

    Components: unet (DFGN), scheduler (DDIM, the run's noise schedule), text_encoder (the run's frozen open_clip text
    tower), vae (an AutoencoderKL; None when the run diffused in pixel space, where the latent is the clip itself).
    Settings from the run: resolution (pixels), num_inference_steps, text_scale, image_scale, eta, anchor.
    """

    _optional_components = ["vae"]
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: DDIMScheduler,
        text_encoder: ModelMixin,
        vae: AutoencoderKL | None = None,
        resolution: int = 32,
        num_inference_steps: int = 50,
        text_scale: float = 7.5,
        image_scale: float = 7.5,
        eta: float = 1.0,
        anchor: str = "none",
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, vae=vae)
        self.register_to_config(
            resolution=resolution,
            num_inference_steps=num_inference_steps,
            text_scale=text_scale,
            image_scale=image_scale,
            eta=eta,
            anchor=anchor,
        )

    def given_frames(self, task: str, image: Any, video: Any) -> np.ndarray:
        """(NUM_FRAMES, r, r, 3) uint8: the user's frames at the task's given positions, white elsewhere."""
        if task not in GIVEN:
            raise ValueError(f"unknown task {task!r}; tasks are {', '.join(GIVEN)}")
        size = self.config.resolution
        frames = np.full((NUM_FRAMES, size, size, 3), 255, dtype=np.uint8)
        if task in NEEDS_IMAGE:
            if image is None:
                raise ValueError(f"task {task!r} needs `image` (the given frame)")
            frames[GIVEN[task]] = _on_white(_open(image), size)
        elif task in NEEDS_VIDEO:
            if video is None:
                raise ValueError(f"task {task!r} needs `video` (the animation whose frames are given)")
            frames[GIVEN[task]] = _video_frames(video, size)[GIVEN[task]]
        return frames

    def encode(self, clips: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Clips (b, 3, f, H, W) in [-1, 1] -> latents (b, c, f, h, w); the clip itself in pixel space."""
        if self.vae is None:
            return clips
        b, _, f = clips.shape[:3]
        frames = clips.transpose(1, 2).flatten(0, 1).to(self.vae.dtype)
        latents = self.vae.encode(frames).latent_dist.sample(generator) * self.vae.config.scaling_factor
        return latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (b, c, f, h, w) -> clips (b, 3, f, H, W) in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        b, _, f = latents.shape[:3]
        frames = latents.transpose(1, 2).flatten(0, 1).to(self.vae.dtype) / self.vae.config.scaling_factor
        clips = self.vae.decode(frames).sample
        return clips.reshape(b, f, *clips.shape[1:]).transpose(1, 2).clamp(-1, 1)

    def predict(
        self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """The unet's prediction, plus with anchor "nearest_given" the term that adds (1 - a_t) times each frame's
        nearest given frame to the clean-clip estimate (rdtf's trainer/diffusion.py `predict`)."""
        out = self.unet(sample, timestep, text, condition).float()
        if self.config.anchor == "none":
            return out
        a = self.scheduler.alphas_cumprod.to(out.device)[timestep.long()].float()[:, None, None, None, None]
        v = self.scheduler.config.prediction_type == "v_prediction"
        return out - ((1 - a).sqrt() if v else (a * (1 - a)).sqrt()) * _nearest_given(condition.float())

    def guided_noise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        condition: torch.Tensor,
        text_scale: float,
        image_scale: float,
        use_text: bool,
        use_image: bool,
    ) -> torch.Tensor:
        """Classifier-free guidance with a text and an image scale in one batched pass (rdtf's guided_noise):
        e = e(-, -) + s_img * (e(-, img) - e(-, -)) + s_txt * (e(txt, img) - e(-, img)), "-" a dropped condition."""
        no_text, no_image = torch.zeros_like(text), torch.zeros_like(condition)
        if (not use_image or image_scale == 1) and (not use_text or text_scale == 1):
            # every guidance term has weight 1: the sum is the conditional prediction, one forward pass
            text_in, image_in = (text if use_text else no_text), (condition if use_image else no_image)
            return self.predict(sample, timestep, text_in, image_in)
        texts, images = [no_text], [no_image]
        if use_image:
            texts.append(no_text)
            images.append(condition)
        if use_text:
            texts.append(text)
            images.append(condition if use_image else no_image)
        n = len(texts)
        out = self.predict(sample.repeat(n, 1, 1, 1, 1), timestep.repeat(n), torch.cat(texts), torch.cat(images))
        chunks = out.split(sample.shape[0])
        noise = chunks[0]
        if use_image:
            noise = noise + image_scale * (chunks[1] - chunks[0])
        if use_text:
            noise = noise + text_scale * (chunks[-1] - (chunks[1] if use_image else chunks[0]))
        return noise

    @torch.no_grad()
    def __call__(
        self,
        prompt: str = "",
        task: str = "t2v",
        image: str | PIL.Image.Image | None = None,
        video: str | PIL.Image.Image | list[PIL.Image.Image] | None = None,
        num_inference_steps: int | None = None,
        text_scale: float | None = None,
        image_scale: float | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> RDTFPipelineOutput | tuple:
        """One 8-frame clip for `task`: t2v (prompt), i2v (image), it2v (prompt and image), interpolate (video: its
        frames at even positions are given), predict-pre (video: its last half is given), predict-post (video: its
        first half is given). Settings left None take the run's (the pipeline's config)."""
        device = self._execution_device
        dtype = self.unet.dtype
        steps = num_inference_steps or self.config.num_inference_steps
        text_scale = self.config.text_scale if text_scale is None else text_scale
        image_scale = self.config.image_scale if image_scale is None else image_scale
        eta = self.config.eta if eta is None else eta

        # 1. the given frames and the condition latent c = z * m_cond
        frames = self.given_frames(task, image, video)
        given = GIVEN[task]
        clip = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        use_image = bool(given)
        if use_image:
            m_cond = torch.zeros(1, NUM_FRAMES, device=device)
            m_cond[0, given] = 1.0
            condition = self.encode(clip.to(device, dtype), generator).float() * m_cond[:, None, :, None, None]
        else:  # nothing given: the condition latent is zeros, no need to encode white frames
            size, channels = self.unet.config.sample_size, self.unet.config.in_channels
            condition = torch.zeros(1, channels, NUM_FRAMES, size, size, device=device)
        # 2. the text, switched off by the task's input gate
        text = self.text_encoder(self.text_encoder.tokenize([prompt]).to(device))
        use_text = TEXT_ON[task] and bool(prompt)
        text = text if use_text else torch.zeros_like(text)
        # 3. guided DDIM from noise; the last step's estimate of the clean clip (prev_sample would add back the
        # noise that alphas_cumprod[0] keeps)
        self.scheduler.set_timesteps(steps, device=device)
        noise_device = generator.device if generator is not None else torch.device("cpu")
        sample = torch.randn(condition.shape, generator=generator, device=noise_device).to(device)
        sample = sample * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            noise = self.guided_noise(
                sample.to(dtype),
                t.expand(sample.shape[0]).to(device),
                text.to(dtype),
                condition.to(dtype),
                text_scale,
                image_scale,
                use_text,
                use_image,
            )
            step = self.scheduler.step(noise, t, sample, eta=eta, generator=generator)
            sample = step.prev_sample
        latents = step.pred_original_sample
        if output_type == "latent":
            result: Any = latents
        else:
            # 4. decode; given frames are kept as given
            clips = self.decode(latents.to(device))
            pixels = ((clips.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            result = pixels.permute(0, 2, 3, 4, 1).cpu().numpy()
            result[0, given] = frames[given]
            if output_type == "pil":
                result = [[PIL.Image.fromarray(frame) for frame in clip] for clip in result]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return RDTFPipelineOutput(frames=result)
