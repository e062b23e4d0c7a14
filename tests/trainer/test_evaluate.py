"""`trainer.evaluate` on a tiny run trained for 2 steps (in a subprocess, as users train): report keys, determinism,
the frames that count (given and padded frames never do), PSNR of identical frames, FVD and CLIP similarity with
random weights, the streamed and sharded held-out set, and held-out sets that do not fit the checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from dataset_factory import make_dataset

from rdtf.trainer.config import TrainConfig
from rdtf.trainer.evaluate import (
    FRAME_TASKS,
    HeldoutMismatch,
    Mean,
    check_fit,
    copy_nearest,
    evaluate,
    frame_scores,
    iter_clips,
    scored_mask,
)
from rdtf.trainer.tasks import TASKS

TINY = str(REPO / "configs" / "tiny.yaml")
CLIPS = 2
QUICK = {"clips": CLIPS, "steps": 1, "draws": 1, "batch_size": 1}  # two batches: the batch loop is exercised


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Evaluate on one torch thread: on a busy 2-core machine a second OpenMP thread that loses its core stalls every
    parallel region (measured: a 7 s evaluation took over 50 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return make_dataset(str(tmp_path_factory.mktemp("data") / "ds"), files=1, rows_per_file=6)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("runs") / "run")
    command = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", TINY, "--data", data, "--out", out]
    command += ["--steps", "2", "--micro-batch", "2", "--set", "data.shuffle_buffer=4"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def first(run, data):
    return evaluate(run, data, **QUICK)


def test_report_scores_every_task(first):
    assert first.checkpoint == "step-00000002" and first.clips == CLIPS
    assert list(first.loss) == list(TASKS) and all(math.isfinite(v) and v > 0 for v in first.loss.values())
    assert list(first.psnr) == list(first.ssim) == list(FRAME_TASKS)
    assert all(math.isfinite(v) for v in first.psnr.values())
    assert all(-1 <= v <= 1 for v in first.ssim.values())
    # k = 8: t2v scores all 8 frames, i2v / it2v the 7 after frame 0, the others the 4 frames not given
    assert first.frames_scored == {
        "t2v": 8 * CLIPS,
        "i2v": 7 * CLIPS,
        "it2v": 7 * CLIPS,
        "interpolate": 4 * CLIPS,
        "predict-pre": 4 * CLIPS,
        "predict-post": 4 * CLIPS,
    }
    # the baselines are scored on the same frames: copying a given frame beats noise on these smooth clips
    assert set(first.baselines) == {"copy_nearest", "noise"}
    for task in FRAME_TASKS:
        assert first.baselines["copy_nearest"]["psnr"][task] > first.baselines["noise"]["psnr"][task]


def test_copy_nearest_takes_the_closest_given_frame_and_the_earlier_on_a_tie():
    real = np.arange(8, dtype=np.uint8)[None, :, None, None, None] * np.ones((1, 8, 2, 2, 3), dtype=np.uint8)
    given = np.array([[1, 0, 0, 1, 0, 0, 0, 1]])  # frames 0, 3, 7
    copied = copy_nearest(real, given)[0, :, 0, 0, 0]
    assert copied.tolist() == [0, 0, 3, 3, 3, 3, 7, 7]  # frame 5 is 2 from both 3 and 7: the earlier


def test_the_same_arguments_give_the_same_report(first, run, data):
    again = evaluate(run, data, **QUICK)
    assert {**again.to_dict(), "seconds": 0} == {**first.to_dict(), "seconds": 0}
    other_seed = evaluate(run, data, **(QUICK | {"seed": 1}))
    assert other_seed.loss != first.loss
    # the loss noise is drawn per clip: batching the clips changes nothing but float rounding
    batched = evaluate(run, data, **(QUICK | {"batch_size": 2}))
    assert batched.loss == pytest.approx(first.loss, rel=1e-4)


def test_padded_frames_never_count(run, data):
    report = evaluate(run, data, **(QUICK | {"keyframes": 5}))
    # 5 valid frames: interpolate gives 0, 2, 4; predict-pre gives 4 (of 4..7); predict-post gives 0..3
    assert report.frames_scored["interpolate"] == 2 * CLIPS
    assert report.frames_scored["predict-pre"] == 4 * CLIPS
    assert report.frames_scored["predict-post"] == 1 * CLIPS
    assert report.frames_scored["t2v"] == 5 * CLIPS


def test_too_few_keyframes_is_refused(run, data):
    with pytest.raises(ValueError, match="keyframes"):
        evaluate(run, data, **(QUICK | {"keyframes": 4}))


@pytest.mark.parametrize(
    ("task", "n", "scored"),
    [
        ("interpolate", 8, [0, 1, 0, 1, 0, 1, 0, 1]),
        ("interpolate", 5, [0, 1, 0, 1, 0, 0, 0, 0]),
        ("predict-pre", 8, [1, 1, 1, 1, 0, 0, 0, 0]),
        ("predict-pre", 6, [1, 1, 1, 1, 0, 0, 0, 0]),
        ("predict-post", 8, [0, 0, 0, 0, 1, 1, 1, 1]),
        ("predict-post", 6, [0, 0, 0, 0, 1, 1, 0, 0]),
        ("i2v", 5, [0, 1, 1, 1, 1, 0, 0, 0]),
        ("t2v", 5, [1, 1, 1, 1, 1, 0, 0, 0]),
    ],
)
def test_scored_frames_are_valid_and_not_given(task, n, scored):
    assert scored_mask(task, torch.tensor([n])).tolist() == [scored]


def test_identical_frames_get_the_highest_finite_psnr():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (1, 8, 16, 16, 3), dtype=np.uint8)
    scored = np.ones((1, 8))
    psnr, ssim = frame_scores(real.copy(), real, scored)
    ceiling = 10 * math.log10(255**2 * 16 * 16 * 3)  # one level off in one value
    assert psnr == [pytest.approx(ceiling)] and ssim == [pytest.approx(1.0)]
    noisy = real.copy()
    noisy[0, :, 0, 0, 0] ^= 64
    worse, _ = frame_scores(noisy, real, scored)
    assert math.isfinite(worse[0]) and worse[0] < ceiling


def test_only_scored_frames_count():
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (2, 8, 16, 16, 3), dtype=np.uint8)
    generated = real.copy()
    scored = scored_mask("interpolate", torch.tensor([8, 5])).numpy()
    generated[scored == 0] = 255 - generated[scored == 0]  # given and padded frames: as wrong as can be
    psnr, ssim = frame_scores(generated, real, scored)
    assert psnr == [pytest.approx(10 * math.log10(255**2 * 16 * 16 * 3))] * 2
    assert ssim == [pytest.approx(1.0)] * 2


MEASURED = QUICK | {"clips": 3, "tasks": ("it2v", "interpolate"), "i3d_weights": "random", "i3d_size": 32}
MEASURED |= {"clip_weights": "random", "examples": 2}


@pytest.fixture(scope="module")
def measured(run, data):
    return evaluate(run, data, **MEASURED)


def test_fvd_and_clip_similarity_per_task_with_intervals(measured):
    assert measured.tasks == ["it2v", "interpolate"] and measured.clips == 3
    assert list(measured.loss) == list(measured.fvd) == list(measured.clip_similarity) == ["it2v", "interpolate"]
    assert list(measured.psnr) == ["interpolate"]  # it2v has no real frames to compare with
    assert all(math.isfinite(v) and v > 0 for v in measured.fvd.values())  # 2 training steps: far from the real clips
    assert all(-1 <= v <= 1 for v in measured.clip_similarity.values())
    for name in ("loss", "psnr", "ssim", "clip_similarity"):
        for task, (low, high) in measured.intervals[name].items():
            mean = getattr(measured, name)[task]
            assert low <= mean <= high
    assert [e["index"] for e in measured.examples] == [0, 1]
    example = measured.examples[0]
    assert example["real"].shape == (8, 32, 32, 3) and set(example["generated"]) == {"it2v", "interpolate"}
    # the page's clips keep their given frames, as `rdtf sample` writes them
    assert (example["generated"]["interpolate"][0::2] == example["real"][0::2]).all()
    assert "examples" not in measured.to_dict()


def test_the_measures_are_deterministic_for_a_seed(measured, run, data):
    again = evaluate(run, data, **MEASURED)
    assert {**again.to_dict(), "seconds": 0} == {**measured.to_dict(), "seconds": 0}


def test_the_held_out_set_is_streamed_and_sharded(data):
    stream = iter_clips(data, 5, 8, 32)
    assert not isinstance(stream, list)  # a generator: nothing is read before it is asked for
    whole = [(i, row["sample_id"]) for i, (row, _) in stream]
    assert [i for i, _ in whole] == [0, 1, 2, 3, 4]
    shards = [[(i, row["sample_id"]) for i, (row, _) in iter_clips(data, 5, 8, 32, r, 2)] for r in (0, 1)]
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2]


def test_mean_interval_is_the_t_interval():
    mean = Mean()
    mean.add([1.0, 2.0, 3.0, None, 6.0])  # None: a clip without the measure (no caption)
    values = np.array([1.0, 2.0, 3.0, 6.0])
    half = 3.182446305284263 * values.std(ddof=1) / 2  # t(0.975, 3) * s / sqrt(4)
    assert mean.count == 4 and mean.mean() == pytest.approx(3.0)
    assert mean.interval() == pytest.approx([3.0 - half, 3.0 + half])


def test_held_out_rows_that_do_not_fit_are_refused_with_both_values():
    row = {"frame_size": 16, "keyframe_sets": [[0]] * 6}
    with pytest.raises(HeldoutMismatch, match=r"16 px.*resolution is 32 px"):
        check_fit(row, 8, 32, "held")
    row = {"frame_size": 64, "keyframe_sets": [[0]] * 3}  # k = 3..5 only
    with pytest.raises(HeldoutMismatch, match=r"at most 5 frames.*scored on 8"):
        check_fit(row, 8, 32, "held")
    check_fit({"frame_size": 64, "keyframe_sets": [[0]] * 6}, 8, 32, "held")


def test_training_logs_a_small_evaluation_to_tensorboard_and_trains_as_without(data, tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    def train(out, *sets: str) -> list[dict]:
        command = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", TINY, "--data", data, "--out", str(out)]
        command += ["--steps", "4", "--micro-batch", "2", "--set", "data.shuffle_buffer=4"]
        for pair in ("run.checkpoint_every=2", *sets):
            command += ["--set", pair]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    evaluated = train(
        tmp_path / "run",
        *("eval.every=2", f"eval.data={data}", "eval.clips=2", "eval.steps=1", "eval.tasks=[interpolate]"),
        *("eval.i3d_weights=random", "eval.clip_weights=random", "eval.i3d_size=32"),
    )
    events = [event for path in (tmp_path / "run" / "tb").iterdir() for event in EventFileLoader(str(path)).Load()]
    logged: dict[str, list] = {}
    for event in events:
        for value in event.summary.value if event.HasField("summary") else []:
            logged.setdefault(value.tag, []).append((event.step, value.simple_value))
    for measure in ("loss", "psnr", "fvd", "clip_similarity"):
        tag = f"eval/{measure}/interpolate"
        assert [step for step, _ in logged.get(tag, [])] == [2, 4], tag
        assert all(math.isfinite(value) for _, value in logged[tag]), tag
    # the evaluation after step 2 leaves training as it was: the same batches and losses at steps 3 and 4
    assert evaluated == train(tmp_path / "plain")


def test_eval_every_must_fall_on_a_checkpoint():
    from rdtf.schemas.config import ConfigError, load

    with pytest.raises(ConfigError, match="eval.every"):
        load(TrainConfig, TINY, {"eval.every": 3, "eval.data": "held", "run.checkpoint_every": 2})
    with pytest.raises(ConfigError, match="eval.data"):
        load(TrainConfig, TINY, {"eval.every": 100})
