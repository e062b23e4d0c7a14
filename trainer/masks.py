"""The dual masks of RDTF: which frames are given as clean condition (condition mask, per task) and which frames
count in the loss (loss mask, over padded frames). Pure functions on tensors; see ../docs/masks.md.

With the dual masks off (`run.dual_masks: false`, the paper's ablation baseline) one task is trained with one fixed
condition, and every frame, padding included, counts in the loss: `single_task_masks`.

Symbols (paper notes): n = number of valid frames of a clip (k keyframes, 3..8), F = 8 frames after padding,
m_frame = [1]*n + [0]*(F-n), m_cond in {0,1}^F, condition latent c = z * m_cond * m_frame.
"""

from __future__ import annotations

from typing import Literal

import torch

from rdtf.trainer.tasks import NUM_FRAMES, TASKS

# Interpolation patterns from the paper: every other frame given (two phases), or every third frame.
INTERPOLATION_PATTERNS = ((0, 1, 0, 1, 0, 1, 0, 1), (1, 0, 1, 0, 1, 0, 1, 0), (1, 0, 0, 1, 0, 0, 1, 0))

# Dual masks off: the one task trained, text&image to GIF (the task of the paper's ablation table), its one
# condition the first frame (the usual image-to-video setup: no variety of condition masks).
SINGLE_TASK = "it2v"


def frame_mask(num_valid: torch.Tensor, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """m_frame, (b, f) float: 1 for the first num_valid[i] frames of clip i, 0 for padding."""
    positions = torch.arange(num_frames, device=num_valid.device)
    return (positions[None, :] < num_valid[:, None]).float()


def _uniform(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One integer per clip, uniform in [low, high] (inclusive)."""
    draws = torch.rand(low.shape, generator=generator, device=low.device)
    return low + (draws * (high - low + 1).float()).long().clamp(max=(high - low).clamp(min=0))


def condition_mask(
    task: str, num_valid: torch.Tensor, generator: torch.Generator | None = None, num_frames: int = NUM_FRAMES
) -> torch.Tensor:
    """m_cond * m_frame, (b, f) float: the frames given as clean guidance for `task`, never a padded frame.

    1. t2v: none.  2. i2v / it2v: one valid frame, uniform.  3. interpolate: one of INTERPOLATION_PATTERNS.
    4. predict-pre: frames [start, n) given, start ~ U{1..floor(n/2)+1} (earlier frames are predicted).
    5. predict-post: frames [0, end) given, end ~ U{floor(n/2)..n-1} (later frames are predicted).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    batch = num_valid.shape[0]
    positions = torch.arange(num_frames, device=num_valid.device)[None, :].expand(batch, -1)
    valid = frame_mask(num_valid, num_frames)
    if task == "t2v":
        mask = torch.zeros_like(valid)
    elif task in ("i2v", "it2v"):
        index = _uniform(torch.zeros_like(num_valid), num_valid - 1, generator)
        mask = (positions == index[:, None]).float()
    elif task == "interpolate":
        patterns = torch.tensor(INTERPOLATION_PATTERNS, dtype=torch.float32, device=num_valid.device)[:, :num_frames]
        choice = torch.randint(len(INTERPOLATION_PATTERNS), (batch,), generator=generator).to(num_valid.device)
        mask = patterns[choice]
    elif task == "predict-pre":
        start = _uniform(torch.ones_like(num_valid), num_valid // 2 + 1, generator)
        mask = (positions >= start[:, None]).float()
    else:
        end = _uniform(num_valid // 2, num_valid - 1, generator)
        mask = (positions < end[:, None]).float()
    return mask * valid


def trained_tasks(dual_masks: bool) -> tuple[str, ...]:
    """The tasks a run draws from: every task with the dual masks, SINGLE_TASK without."""
    return TASKS if dual_masks else (SINGLE_TASK,)


def single_task_masks(num_valid: torch.Tensor, num_frames: int = NUM_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual masks off: (condition mask, loss mask), each (b, f) float: the first frame given, every frame in the loss.

    The loss mask is all ones, so padded frames (zero latents) count as frames to denoise, as in a trainer that
    has no loss mask.
    """
    positions = torch.arange(num_frames, device=num_valid.device)
    condition = (positions[None, :] == 0).float().expand(num_valid.shape[0], -1)
    return condition, torch.ones_like(condition)


def masked_mse(
    prediction: torch.Tensor,
    target: torch.Tensor,
    frames: torch.Tensor,
    normalize: Literal["all_frames", "valid_frames"] = "valid_frames",
) -> torch.Tensor:
    """Loss on (b, c, f, h, w) tensors with the loss mask `frames` (b, f): padded frames never count.

    `all_frames` divides by every element, as the released code does (short clips weigh less); `valid_frames`
    divides by the valid elements only, so every clip's frames weigh the same (rdtf's default, docs/masks.md).
    """
    weight = frames[:, None, :, None, None].to(prediction.dtype)
    squared = (weight * (prediction - target)) ** 2
    if normalize == "all_frames":
        return squared.mean()
    per_frame = prediction[:, :, :1].numel() // prediction.shape[0]  # c * h * w
    return squared.sum() / (weight.sum() * per_frame).clamp(min=1)
