"""Noise schedules and guided sampling, from diffusers' schedulers (kept apart from the model, as diffusers does).

Training: DDPM forward process, 1000 steps, linear betas 0.00085 -> 0.012, epsilon prediction (paper notes; v
prediction is a setting, `diffusion.prediction_type`).
Sampling: DDIM, 50 steps, eta 1.0, classifier-free guidance with separate text and image scales (7.5 / 7.5).
Training, scoring and sampling all call the model through `predict`, which adds the anchor (`diffusion.anchor`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from rdtf.trainer.config import DiffusionConfig


def _schedule(config: DiffusionConfig) -> dict:
    return {
        "num_train_timesteps": config.train_timesteps,
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "beta_schedule": config.beta_schedule,
        "prediction_type": config.prediction_type,
        "clip_sample": False,  # latents are not bounded to [-1, 1]
    }


def train_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The forward process: `add_noise(x0, noise, timesteps)`."""
    return DDPMScheduler(**_schedule(config))


def sample_scheduler(config: DiffusionConfig) -> DDIMScheduler:
    """The reverse process over `config.sample_steps` steps (the same betas as training)."""
    return DDIMScheduler(**_schedule(config), set_alpha_to_one=False, steps_offset=1)


def nearest_given(condition: torch.Tensor) -> torch.Tensor:
    """Each frame of the condition latent (b, c, f, h, w) replaced by its nearest given frame, the earlier of two
    at the same distance; zeros in a clip with nothing given. A frame is given where its latent is not all zero
    (the condition's convention: zeros where no frame is given, and a dropped condition is all zeros)."""
    b, _, f = condition.shape[:3]
    given = condition.flatten(3).abs().amax(dim=(1, 3)) > 0  # (b, f)
    positions = torch.arange(f, device=condition.device)
    # distance from frame i (rows) to frame j (columns); + j / 2f breaks a tie towards the earlier frame
    cost = (positions[:, None] - positions[None, :]).abs() + positions[None, :] / (2 * f)
    cost = cost.expand(b, f, f).masked_fill(~given[:, None, :], torch.inf)
    nearest = cost.argmin(dim=2)  # (b, f)
    anchor = condition.gather(2, nearest[:, None, :, None, None].expand_as(condition))
    return anchor * given.any(dim=1).to(anchor.dtype)[:, None, None, None, None]


def predict(
    model: Callable[..., torch.Tensor],
    scheduler: DDPMScheduler | DDIMScheduler,
    anchor: str,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    condition: torch.Tensor,
) -> torch.Tensor:
    """The prediction (noise or v, float32) of `sample` at `timestep` (b,): the model's output, plus with
    `anchor="nearest_given"` the term that adds (1 - a_t) * nearest_given(condition) to the clean-clip estimate.

    x0_hat = sqrt(a) x_t - sqrt(1 - a) v_hat, so v gains -sqrt(1 - a) * anchor; x0_hat = (x_t - sqrt(1 - a) e_hat) /
    sqrt(a), so the noise gains -sqrt(a (1 - a)) * anchor. (1 - a) is the weight that the posterior mean of x0 gives
    a prior centred on the anchor (unit variance): at high noise, where the noisy clip says little, a model whose
    output is zero copies the nearest given frame; at low noise it keeps what the noisy clip shows. The network
    learns what differs from the copy, which is nothing on a static sticker (docs/learning.md).
    """
    out = model(sample, timestep, text, condition).float()
    if anchor == "none":
        return out
    a = scheduler.alphas_cumprod.to(out.device)[timestep.long()].float()[:, None, None, None, None]
    scale = (1 - a).sqrt() if scheduler.config.prediction_type == "v_prediction" else (a * (1 - a)).sqrt()
    return out - scale * nearest_given(condition.float())


def guided_noise(
    model: Callable[..., torch.Tensor],
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    condition: torch.Tensor,
    text_scale: float,
    image_scale: float,
    use_text: bool,
    use_image: bool,
) -> torch.Tensor:
    """Classifier-free guidance with a text and an image scale, in one batched forward pass of `model` (a module,
    or `predict` with its model, scheduler and anchor bound).

    e = e(-, -) + s_img * (e(-, img) - e(-, -)) + s_txt * (e(txt, img) - e(-, img)), "-" a dropped condition:
    zero text features, zero condition latent (the same as the training-time dropout). A task without text or
    without given frames keeps only the other term.
    """
    no_text, no_image = torch.zeros_like(text), torch.zeros_like(condition)
    if (not use_image or image_scale == 1) and (not use_text or text_scale == 1):
        # every guidance term has weight 1: the sum telescopes to the conditional prediction, one forward pass
        return model(sample, timestep, text if use_text else no_text, condition if use_image else no_image).float()
    texts, images = [no_text], [no_image]  # e(-, -)
    if use_image:
        texts.append(no_text)
        images.append(condition)  # e(-, img)
    if use_text:
        texts.append(text)
        images.append(condition if use_image else no_image)  # e(txt, img)
    b = sample.shape[0]
    n = len(texts)
    out = model(sample.repeat(n, 1, 1, 1, 1), timestep.repeat(n), torch.cat(texts), torch.cat(images)).float()
    chunks = out.split(b)
    noise = chunks[0]
    if use_image:
        noise = noise + image_scale * (chunks[1] - chunks[0])
    if use_text:
        base = chunks[1] if use_image else chunks[0]
        noise = noise + text_scale * (chunks[-1] - base)
    return noise


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    scheduler: DDIMScheduler,
    text: torch.Tensor,
    condition: torch.Tensor,
    config: DiffusionConfig,
    use_text: bool,
    generator: torch.Generator,
    steps: int | None = None,
    text_scale: float | None = None,
    image_scale: float | None = None,
) -> torch.Tensor:
    """Denoise from pure noise to latents (b, c, f, h, w) shaped like `condition` (zeros where nothing is given):
    the last step's estimate of the clean clip."""
    dtype = next(model.parameters()).dtype
    device = condition.device
    use_image = bool(condition.abs().sum() > 0)
    denoiser = functools.partial(predict, model, scheduler, config.anchor)
    scheduler.set_timesteps(steps or config.sample_steps, device=device)
    sample = torch.randn(condition.shape, generator=generator, device=generator.device).to(device)
    sample = sample * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        timestep = t.expand(sample.shape[0]).to(device)
        noise = guided_noise(
            denoiser,
            sample.to(dtype),
            timestep,
            text.to(dtype),
            condition.to(dtype),
            config.text_scale if text_scale is None else text_scale,
            config.image_scale if image_scale is None else image_scale,
            use_text,
            use_image,
        )
        step = scheduler.step(noise, t, sample, eta=config.eta, generator=generator)
        sample = step.prev_sample
    # The last step's own estimate of the clean clip: prev_sample would add the noise that alphas_cumprod[0] keeps
    # (std 0.03, a few grey levels in pixel mode) back in.
    return step.pred_original_sample


def training_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the model learns to predict from the noisy clip: the noise, or v (diffusers' `get_velocity`)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    return noise
