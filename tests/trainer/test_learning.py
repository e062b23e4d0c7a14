"""The tiny DFGN learns to use its given frames: a short direct training run (no DeepSpeed, no data pipeline) on
static clips, where every frame to generate equals the given ones (issue 15; bench/condition_path.py is the long
version)."""

from __future__ import annotations

import functools

import torch
from conftest import REPO
from diffusers import DDPMScheduler

from rdtf.trainer.config import DiffusionConfig
from rdtf.trainer.dfgn import DFGN, read_model_config
from rdtf.trainer.diffusion import predict, train_scheduler, training_target
from rdtf.trainer.masks import condition_mask, masked_mse

SIZE, BATCH, STEPS = 8, 8, 60


def static_clips(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, 8, SIZE, SIZE): a flat background and a square, both of random colours, the same in every frame."""
    x = torch.empty(count, 3, 8, SIZE, SIZE)
    for i in range(count):
        background, colour = torch.rand(2, 3, generator=generator) * 2 - 1
        x[i] = background[:, None, None, None]
        left, top = torch.randint(0, SIZE // 2, (2,), generator=generator).tolist()
        x[i, :, :, top : top + SIZE // 2, left : left + SIZE // 2] = colour[:, None, None, None]
    return x


@functools.cache
def trained(anchor: str) -> tuple[DFGN, DDPMScheduler]:
    """The tiny DFGN after STEPS steps of interpolation on static clips, v prediction, with or without the anchor
    (cached: both tests use the run without it)."""
    torch.manual_seed(0)
    model = DFGN(**read_model_config(REPO / "configs" / "tiny.yaml") | {"sample_size": SIZE})
    scheduler = train_scheduler(DiffusionConfig(prediction_type="v_prediction"))  # the anchor goes to predict
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    text = torch.zeros(BATCH, 4, model.config.cross_attention_dim)
    for _ in range(STEPS):
        z = static_clips(BATCH, generator)
        given = condition_mask("interpolate", torch.full((BATCH,), 8), generator)
        t = torch.randint(0, 1000, (BATCH,), generator=generator)
        noise = torch.randn(z.shape, generator=generator)
        condition = z * given[:, None, :, None, None]
        out = predict(model, scheduler, anchor, scheduler.add_noise(z, noise, t), t, text, condition)
        loss = masked_mse(out, training_target(scheduler, z, noise, t), torch.ones(BATCH, 8))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), scheduler


def x0_errors(model: DFGN, scheduler: DDPMScheduler, anchor: str) -> tuple[float, float]:
    """The clean-clip estimate's error on the frames that were not given, at high noise (t = 700), on new static
    clips: with the given frames, and with the condition zeroed."""
    generator = torch.Generator().manual_seed(1)
    z = static_clips(BATCH, generator)
    given = condition_mask("interpolate", torch.full((BATCH,), 8), generator)
    t = torch.full((BATCH,), 700)
    noisy = scheduler.add_noise(z, torch.randn(z.shape, generator=generator), t)
    a = scheduler.alphas_cumprod[t][:, None, None, None, None]
    text = torch.zeros(BATCH, 4, model.config.cross_attention_dim)
    errors = []
    with torch.no_grad():
        for condition in (z * given[:, None, :, None, None], torch.zeros_like(z)):
            x0 = a.sqrt() * noisy - (1 - a).sqrt() * predict(model, scheduler, anchor, noisy, t, text, condition)
            errors.append(masked_mse(x0, z, 1 - given).item())
    return errors[0], errors[1]


def test_the_tiny_model_learns_to_use_its_given_frames() -> None:
    """Without the anchor: the network itself must carry the given frames to their neighbours."""
    with_given, without = x0_errors(*trained("none"), "none")
    assert with_given < 0.5 * without, (
        f"x0 error on generated frames {with_given:.3f} with the given frames, {without:.3f} without"
    )


def test_the_anchor_helps_the_tiny_model_copy_static_frames() -> None:
    """With the nearest-given anchor (the tiny preset's) the same training leaves a much smaller error on the
    generated frames of static clips than without it (docs/learning.md)."""
    anchored, _ = x0_errors(*trained("nearest_given"), "nearest_given")
    plain, _ = x0_errors(*trained("none"), "none")
    assert anchored < 0.5 * plain, f"x0 error on generated frames {anchored:.4f} with the anchor, {plain:.4f} without"
