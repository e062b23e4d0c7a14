"""Condition and loss masks for every task, short clips included (paper notes, task table)."""

from __future__ import annotations

import pytest
import torch

from rdtf.trainer.masks import INTERPOLATION_PATTERNS, condition_mask, frame_mask, masked_mse
from rdtf.trainer.tasks import TASKS, TEXT_ON


def _draws(task: str, n: int, count: int = 400) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return condition_mask(task, torch.full((count,), n), generator)


def test_frame_mask_marks_valid_frames() -> None:
    assert frame_mask(torch.tensor([3, 8])).tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1] * 8]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_no_condition_on_padded_frames(task: str, n: int) -> None:
    masks = _draws(task, n)
    assert masks.shape == (400, 8)
    assert masks[:, n:].sum() == 0


def test_t2v_gives_nothing() -> None:
    assert _draws("t2v", 8).sum() == 0


@pytest.mark.parametrize("task", ["i2v", "it2v"])
def test_image_tasks_give_one_valid_frame_uniformly(task: str) -> None:
    masks = _draws(task, 5, count=2000)
    assert (masks.sum(dim=1) == 1).all()
    counts = masks.sum(dim=0)
    assert counts[5:].sum() == 0 and (counts[:5] > 300).all()  # each of the 5 valid frames about 400 times


def test_interpolation_uses_the_paper_patterns() -> None:
    seen = {tuple(int(v) for v in row) for row in _draws("interpolate", 8)}
    assert seen == set(INTERPOLATION_PATTERNS)
    short = {tuple(int(v) for v in row) for row in _draws("interpolate", 4)}
    assert short == {(0, 1, 0, 1, 0, 0, 0, 0), (1, 0, 1, 0, 0, 0, 0, 0), (1, 0, 0, 1, 0, 0, 0, 0)}


@pytest.mark.parametrize("n", [3, 4, 7, 8])
def test_pre_frame_prediction_gives_a_suffix(n: int) -> None:
    starts = set()
    for row in _draws("predict-pre", n):
        given = [i for i, v in enumerate(row.tolist()) if v]
        assert given == list(range(given[0], n))  # later frames given, earlier ones predicted
        starts.add(given[0])
    assert starts == set(range(1, n // 2 + 2))  # start ~ U{1..floor(n/2)+1}


@pytest.mark.parametrize("n", [3, 4, 7, 8])
def test_post_frame_prediction_gives_a_prefix(n: int) -> None:
    ends = set()
    for row in _draws("predict-post", n):
        given = [i for i, v in enumerate(row.tolist()) if v]
        assert given == list(range(len(given)))
        ends.add(len(given))
    assert ends == set(range(n // 2, n))  # end ~ U{floor(n/2)..n-1}


def test_text_gate_is_off_only_for_image_to_gif() -> None:
    assert [t for t in TASKS if not TEXT_ON[t]] == ["i2v"]


def test_unknown_task_is_named() -> None:
    with pytest.raises(ValueError, match="unknown task 'v2t'"):
        condition_mask("v2t", torch.tensor([8]))


def test_loss_ignores_padded_frames_and_normalises_as_configured() -> None:
    target = torch.zeros(2, 4, 8, 2, 2)
    prediction = torch.zeros(2, 4, 8, 2, 2)
    prediction[:, :, 3:] = 100.0  # garbage on frames 3.. : padding for the first clip
    prediction[1, :, 3:] = 0.0
    prediction[1, :, 0] = 1.0  # the second clip (8 valid frames) is wrong on one frame by 1
    frames = frame_mask(torch.tensor([3, 8]))
    # valid_frames: 1 wrong frame out of 3 + 8 = 11 valid frames
    assert masked_mse(prediction, target, frames, "valid_frames").item() == pytest.approx(1 / 11)
    # all_frames: the same squared error over all 16 frames
    assert masked_mse(prediction, target, frames, "all_frames").item() == pytest.approx(1 / 16)
