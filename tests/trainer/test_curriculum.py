"""The curriculum: the paper's task schedule and PID ranking, rdtf's sample pacing and rescoring, checkpoints, ranks."""

from __future__ import annotations

import pickle
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from rdtf.schemas.config import ConfigError, from_dict
from rdtf.trainer.curriculum import MIN_HISTORY, Curriculum, CurriculumConfig
from rdtf.trainer.pacing import EpochPacer
from rdtf.trainer.tasks import TASKS

T = 1000
GENERATION, INTERPOLATION, PREDICTION = ("t2v", "i2v", "it2v"), ("interpolate",), ("predict-pre", "predict-post")


def _curriculum(task: str = "adaptive", seed: int = 0, **settings) -> Curriculum:
    return Curriculum(CurriculumConfig(task=task, length=T, **settings), seed=seed)


# Config.
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("task", "cosine"),
        ("length", 0),
        ("window", 5),
        ("pacing_start", 0.0),
        ("kp", -1.0),
        ("sync_every", 0),
        ("pacing_passes", 0),
    ],
)
def test_config_errors_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"curriculum.{key}"):
        CurriculumConfig(**{key: value})


def test_config_from_a_mapping() -> None:
    config = from_dict(CurriculumConfig, {"task": "linear", "pacing": False, "kd": 2})
    assert (config.task, config.pacing, config.kd, config.kp, config.window) == ("linear", False, 2.0, 5.0, 1000)


def test_the_former_mode_key_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="curriculum.mode"):
        from_dict(CurriculumConfig, {"mode": "linear"}, prefix="curriculum.")


# Task level: the static schedule.
@pytest.mark.parametrize(
    ("step", "generation", "interpolation", "prediction"),
    [
        (0, 0.1, 0.9, 0.7),
        (T // 4, 0.3, 0.7, 0.6),
        (T // 2, 0.5, 0.5, 0.5),
        (3 * T // 4, 0.7, 0.3, 0.4),
        (T, 0.9, 0.1, 0.3),
        (3 * T, 0.9, 0.1, 0.3),
    ],
)
def test_static_schedule_matches_the_paper(step: int, generation: float, interpolation: float, prediction: float):
    curriculum = _curriculum("linear")
    static = curriculum.tasks.static_weights(step)
    expected = {
        **dict.fromkeys(GENERATION, generation),
        **dict.fromkeys(INTERPOLATION, interpolation),
        **dict.fromkeys(PREDICTION, prediction),
    }
    assert static == pytest.approx(expected)
    total = sum(expected.values())
    assert curriculum.task_weights(step) == pytest.approx({task: w / total for task, w in expected.items()})


def test_no_task_curriculum_and_no_pacing_are_uniform() -> None:
    curriculum = _curriculum("none", pacing=False)
    for loss in np.linspace(1, 2, 50):
        curriculum.observe_task_loss("t2v", float(loss))
    assert curriculum.task_weights(0) == pytest.approx(dict.fromkeys(TASKS, 1 / 6))
    assert curriculum.task_weights(5 * T) == pytest.approx(dict.fromkeys(TASKS, 1 / 6))
    curriculum.bind(np.array([0.0, 0.5, 1.0]))
    weights = curriculum.sample_weights(np.arange(3), step=0)
    assert weights.tolist() == [1.0, 1.0, 1.0]


# Task level: the PID ranking.
def _steady(curriculum: Curriculum, steps: int = 200) -> None:
    for _ in range(steps):
        curriculum.observe_task_loss("t2v", 1.0)


def test_no_adaptive_weight_before_enough_history() -> None:
    adaptive, linear = _curriculum("adaptive"), _curriculum("linear")
    for _ in range(MIN_HISTORY):
        adaptive.observe_task_loss("t2v", 1.0)
    assert adaptive.task_weights(T // 4) == pytest.approx(linear.task_weights(T // 4))


def test_a_high_recent_loss_shifts_weight_to_easy_tasks() -> None:
    curriculum, linear = _curriculum(), _curriculum("linear")
    _steady(curriculum)
    assert curriculum.tasks.scalars()["curriculum/pid_level"] == 2  # ties rank in the middle
    curriculum.observe_task_loss("t2v", 3.0)  # the highest PID value of the window: rank 0, level 0
    scalars = curriculum.tasks.scalars()
    assert (scalars["curriculum/pid_rank"], scalars["curriculum/pid_level"]) == (0.0, 0)
    assert curriculum.tasks.adaptive_weights()["interpolate"] == 0.9
    assert curriculum.tasks.adaptive_weights()["t2v"] == 0.1
    high, base = curriculum.task_weights(T // 2), linear.task_weights(T // 2)
    assert high["interpolate"] > base["interpolate"] and high["t2v"] < base["t2v"]


def test_a_low_recent_loss_shifts_weight_to_hard_tasks() -> None:
    curriculum, linear = _curriculum(), _curriculum("linear")
    _steady(curriculum)
    curriculum.observe_task_loss("t2v", 0.2)  # the lowest PID value of the window: rank 1, level 3
    assert curriculum.tasks.scalars()["curriculum/pid_level"] == 3
    assert curriculum.tasks.adaptive_weights() == pytest.approx(
        {**dict.fromkeys(GENERATION, 0.7), **dict.fromkeys(INTERPOLATION, 0.3), **dict.fromkeys(PREDICTION, 0.5)}
    )
    low, base = curriculum.task_weights(T // 2), linear.task_weights(T // 2)
    assert low["t2v"] > base["t2v"] and low["interpolate"] < base["interpolate"]


def test_falling_loss_is_ranked_low_unlike_the_released_code() -> None:
    """The released ranking returned level 0 for nearly every value; a steadily falling loss must reach level 3."""
    curriculum = _curriculum()
    for loss in np.linspace(2.0, 0.5, 300):
        curriculum.observe_task_loss("t2v", float(loss))
    assert curriculum.tasks.scalars()["curriculum/pid_level"] == 3


def test_levels_are_quartiles_of_the_recent_pid_values() -> None:
    curriculum = _curriculum()
    levels = []
    for loss in np.random.default_rng(0).uniform(0.5, 1.5, 4000):
        curriculum.observe_task_loss("t2v", float(loss))
        levels.append(curriculum.tasks.scalars().get("curriculum/pid_level", -1))
    counts = np.bincount(np.array(levels[1000:], dtype=int), minlength=4)
    assert counts.tolist() == pytest.approx([750] * 4, abs=120)


def test_non_finite_losses_are_skipped() -> None:
    curriculum = _curriculum()
    _steady(curriculum, 20)
    before = curriculum.state_dict()["tasks"]
    curriculum.observe_task_loss("t2v", float("nan"))
    assert curriculum.state_dict()["tasks"] == before


def test_task_draws_follow_the_weights_and_the_seed() -> None:
    curriculum = _curriculum("linear")
    draws = [curriculum.task_for_step(0) for _ in range(3)]
    assert len(set(draws)) == 1  # a function of (seed, step) and the state
    weights = curriculum.task_weights(0)
    counts = {task: 0 for task in TASKS}
    for seed in range(3000):
        counts[_curriculum("linear", seed=seed).task_for_step(0)] += 1
    for task in TASKS:
        assert counts[task] / 3000 == pytest.approx(weights[task], abs=0.03)
    assert [_curriculum(seed=1).task_for_step(s) for s in range(50)] != [
        _curriculum(seed=2).task_for_step(s) for s in range(50)
    ]


def test_scalars_show_the_drawn_task_and_weights() -> None:
    curriculum = _curriculum()
    _steady(curriculum, 30)
    task = curriculum.task_for_step(7)
    weights = curriculum.task_weights(7)
    curriculum.observe_task_loss(task, 9.0)  # the state moves on; the log still shows what step 7 used
    scalars = curriculum.scalars(7)
    assert scalars["curriculum/task"] == TASKS.index(task)
    assert {t: scalars[f"curriculum/weight/{t}"] for t in TASKS} == pytest.approx(weights)
    assert {"curriculum/pacing_threshold", "curriculum/pacing_fraction", "curriculum/pid"} <= set(scalars)


# Sample level.
def _bound(task: str = "adaptive", static: np.ndarray | None = None, **settings) -> Curriculum:
    curriculum = _curriculum(task, **settings)
    curriculum.bind(np.random.default_rng(1).uniform(0, 1, 5000) if static is None else static)
    return curriculum


def _walk(curriculum: Curriculum, steps: range, rows_per_step: int = 1, passes: int = 4) -> np.ndarray:
    """The loader's pacer over the bound share with this curriculum's weights; returns the row ids in order."""
    n = curriculum.samples.num_rows
    pacer = EpochPacer(n, lambda epoch: np.random.default_rng(epoch).permutation(n), passes, seed=0, rank=0)
    taken = [row for step in steps for _, row in pacer.take(rows_per_step, step, curriculum.sample_weights)]
    return np.array(taken)


@pytest.mark.parametrize("task", ["none", "linear", "adaptive"])
def test_easier_samples_early_and_all_samples_late(task: str) -> None:
    static = np.random.default_rng(1).uniform(0, 1, 5000)
    curriculum = _bound(task, static)
    assert curriculum.scalars(0)["curriculum/pacing_threshold"] == pytest.approx(0.3, abs=0.02)
    early = static[_walk(curriculum, range(100))]
    assert early.mean() < 0.3 and (early > 0.6).mean() < 0.05
    late_step = int(0.8 * T)
    assert curriculum.sample_weights(np.array([0, 1, 2]), late_step).tolist() == [1.0, 1.0, 1.0]
    assert curriculum.scalars(late_step)["curriculum/pacing_threshold"] == 1.0


def test_weights_rise_with_the_pacing_and_never_reach_zero() -> None:
    static = np.random.default_rng(1).uniform(0, 1, 5000)
    curriculum = _bound("linear", static)
    rows = np.arange(5000)
    admitted = [curriculum.sample_weights(rows, step).mean() for step in (0, T // 4, T // 2, int(0.8 * T))]
    assert admitted == sorted(admitted) and admitted[0] < 0.4 and admitted[-1] == 1.0
    weights = curriculum.sample_weights(rows, 0)
    assert (weights > 0).all() and (weights <= 1).all()
    hard = np.argsort(static)[-3:]  # the hardest rows: the easiest of them weighs most
    assert (np.diff(curriculum.sample_weights(hard, 0)) <= 0).all()


def test_an_epoch_trains_every_row_once_easy_first() -> None:
    """Issue 14: rows turned away were dropped until the next epoch. Now they come back in a later pass."""
    static = np.random.default_rng(1).uniform(0, 1, 2000)
    curriculum = _bound("adaptive", static, pacing_passes=4)
    order = _walk(curriculum, range(2000), passes=4)  # one epoch, one row per step, steps 0..2000 of T = 1000
    assert sorted(order.tolist()) == list(range(2000))
    quarters = static[order].reshape(4, -1).mean(axis=1)
    assert quarters[0] < 0.35 and quarters[0] < quarters[-1]


def _observe_peers(curriculum: Curriculum, task: str, timestep: int, mean: float, rows: np.ndarray) -> None:
    losses = np.random.default_rng(timestep).normal(mean, 0.1 * mean, len(rows))
    curriculum.observe_sample_losses(rows, losses, task, np.full(len(rows), timestep))


def test_adaptive_rescoring_moves_samples_against_their_peers() -> None:
    curriculum = _bound(static=np.full(500, 0.4))
    _observe_peers(curriculum, "t2v", 100, mean=0.1, rows=np.arange(0, 200))  # low noise: small losses
    _observe_peers(curriculum, "t2v", 900, mean=1.0, rows=np.arange(200, 400))  # high noise: large losses
    hard, easy, typical, unseen = 400, 401, 402, 403
    curriculum.observe_sample_losses([hard, easy, typical], np.array([0.2, 0.05, 1.0]), "t2v", [100, 100, 900])
    difficulty = curriculum.samples.difficulty(np.array([hard, easy, typical, unseen]), step=0)
    assert difficulty[0] > 0.45 and difficulty[1] < 0.35
    # A large loss at a high timestep is typical there: it is compared with its own timestep range.
    assert difficulty[2] == pytest.approx(0.4, abs=0.02)
    assert difficulty[3] == pytest.approx(0.4, abs=0.02)  # never trained on, peers typical: about the static score


def test_rows_not_trained_yet_move_with_their_difficulty_bin() -> None:
    """The adaptive part acts within the first epoch: rows of a static-difficulty bin whose trained rows lose more
    than their peers are placed later before they are trained themselves."""
    static = np.repeat([0.1, 0.5, 0.9], 1000)
    curriculum = _bound(static=static)
    rng = np.random.default_rng(0)
    trained = np.concatenate([np.arange(0, 100), np.arange(1000, 1100), np.arange(2000, 2100)])
    losses = np.where(static[trained] == 0.5, 1.5, 1.0) + rng.normal(0, 0.05, len(trained))  # the middle bin: hard
    order = rng.permutation(len(trained))
    curriculum.observe_sample_losses(trained[order], losses[order], "t2v", np.full(len(trained), 500))
    untrained = curriculum.samples.difficulty(np.array([500, 1500, 2500]), step=0)
    assert untrained[1] > 0.5 + 0.05 and untrained[0] < 0.1 and untrained[2] < 0.9


def test_scores_are_per_task() -> None:
    curriculum = _bound(static=np.full(500, 0.4))
    _observe_peers(curriculum, "interpolate", 500, mean=0.1, rows=np.arange(200))
    _observe_peers(curriculum, "t2v", 500, mean=1.0, rows=np.arange(200, 400))
    curriculum.observe_sample_losses([400], np.array([1.0]), "t2v", np.array([500]))
    assert curriculum.samples.difficulty(np.array([400]), step=0)[0] == pytest.approx(0.4, abs=0.02)


def test_scores_fade_with_age() -> None:
    curriculum = _bound(static=np.full(500, 0.4), score_half_life=100)
    _observe_peers(curriculum, "t2v", 500, mean=1.0, rows=np.arange(200))
    curriculum.observe_sample_losses([400], np.array([2.0]), "t2v", np.array([500]))
    shifts = [curriculum.samples.difficulty(np.array([400]), step)[0] - 0.4 for step in (0, 100, 2000)]
    assert shifts[0] > shifts[1] > 0.0 and shifts[2] == pytest.approx(0.0, abs=1e-3)


def test_pacing_off_ignores_sample_losses() -> None:
    curriculum = _bound("linear", static=np.full(500, 0.4), pacing=False)
    _observe_peers(curriculum, "t2v", 500, mean=1.0, rows=np.arange(200))
    curriculum.observe_sample_losses([400], np.array([5.0]), "t2v", np.array([500]))
    assert curriculum.samples.difficulty(np.array([400]), step=0)[0] == pytest.approx(0.4)
    assert curriculum.scalars(0)["curriculum/tracked_samples"] == 0


def test_state_is_bounded_by_the_share_and_refuses_another_share() -> None:
    curriculum = _bound(static=np.random.default_rng(2).uniform(0, 1, 10_000))
    _observe_peers(curriculum, "t2v", 500, mean=1.0, rows=np.arange(10_000))
    state = curriculum.state_dict()["samples"]
    per_row = sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray) and v.shape == (10_000,))
    assert per_row == 12 * 10_000 and len(pickle.dumps(state)) < 12 * 10_000 + 10_000
    other = _bound(static=np.random.default_rng(3).uniform(0, 1, 10_000))
    with pytest.raises(ValueError, match="another share"):
        other.load_state_dict(curriculum.state_dict())


# Checkpoints.
def _train(curriculum: Curriculum, steps: range, n: int) -> list:
    """A small simulated training run: tasks, paced admissions, losses; returns everything drawn."""
    record = []
    for step in steps:
        task = curriculum.task_for_step(step)
        rows = np.array([(step * 7 + k) % n for k in range(16)])
        weights = curriculum.sample_weights(rows, step)
        chosen = rows[int(np.argmax(weights))]
        loss = 1.0 + 0.3 * np.sin(step) + 0.1 * TASKS.index(task)
        curriculum.observe_task_loss(task, loss)
        curriculum.observe_sample_losses([chosen, rows[0]], np.array([loss, loss / 2]), task, [step % 1000, 999])
        curriculum.sync()
        record.append((task, weights.tolist(), curriculum.scalars(step)))
    return record


@pytest.mark.parametrize(("task", "pacing"), [("none", False), ("linear", True), ("adaptive", True)])
def test_state_round_trip_gives_identical_future_draws(task: str, pacing: bool) -> None:
    static = np.random.default_rng(4).uniform(0, 1, 97)
    original = _curriculum(task, seed=3, pacing=pacing)
    original.bind(static)
    _train(original, range(0, 150), len(static))
    state = pickle.loads(pickle.dumps(original.state_dict()))
    restored = _curriculum(task, seed=3, pacing=pacing)
    restored.bind(static)
    restored.load_state_dict(state)
    assert _train(restored, range(150, 300), len(static)) == _train(original, range(150, 300), len(static))


# Several ranks.
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, port: int, folder: str) -> None:
    address = f"tcp://127.0.0.1:{port}"
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        curriculum = Curriculum(CurriculumConfig(length=100, sync_every=5, timestep_bins=1), seed=11)
        curriculum.bind(np.linspace(0, 1, 13))  # each rank its own share of 13 rows
        tasks = []
        rng = np.random.default_rng(rank)
        for step in range(150):
            task = curriculum.task_for_step(step)
            tasks.append(task)
            curriculum.observe_task_loss(task, 1.0 + 0.5 * np.sin(step) + 0.1 * TASKS.index(task))  # the rank mean
            # rank 1's losses are high on the hard half of its share: rank 0 learns it through the bins
            losses = rng.uniform(0.5, 1.5, 2) + (rank == 1) * np.array([0.0, 2.0])
            curriculum.observe_sample_losses([step % 6, 7 + step % 6], losses, task, np.array([step * 10, 500]))
            curriculum.sync()
        curriculum.sync(force=True)
        bins = curriculum.samples.bin_scores(150)
        try:  # a trainer bug: each rank feeds its own loss, so the ranks' task draws part ways
            curriculum.observe_task_loss("t2v", 1.0 + rank)
            curriculum.sync(force=True)
            disagreement = None
        except RuntimeError as error:
            disagreement = str(error)
        with open(Path(folder) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump({"tasks": tasks, "bins": bins, "disagreement": disagreement}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_on_tasks_and_merge_bin_scores(tmp_path: Path) -> None:
    mp.spawn(_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    assert results[0]["tasks"] == results[1]["tasks"]
    assert len(set(results[0]["tasks"])) > 1
    bins = [r["bins"] for r in results]
    np.testing.assert_allclose(bins[0], bins[1], rtol=1e-9, atol=1e-12)  # the same evidence, merged in any order
    assert bins[0][-1] > bins[0][0] + 0.5  # rank 1's hard rows raised the hard bin on rank 0 too
    assert all("averaged over ranks" in r["disagreement"] for r in results)
