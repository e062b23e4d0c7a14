"""The epoch pacer: every row exactly once per epoch, deferred rows later in the same epoch, decisions that do not
depend on how the walk is cut into calls, and a state of one bit per row."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from rdtf.trainer.pacing import EpochPacer, uniforms


def _pacer(n: int = 1000, passes: int = 3, seed: int = 0) -> EpochPacer:
    return EpochPacer(n, lambda epoch: np.random.default_rng([seed, epoch]).permutation(n), passes, seed, rank=0)


def _hard_above(threshold: float, n: int = 1000):
    difficulty = np.random.default_rng(9).uniform(0, 1, n)

    def weigh(rows: np.ndarray, step: int) -> np.ndarray:
        return np.where(difficulty[rows] <= threshold, 1.0, 1e-9)

    return weigh, difficulty


def test_uniforms_are_a_function_of_the_key_and_index_only() -> None:
    values = uniforms((1, 2, 3), np.arange(10_000))
    assert 0 <= values.min() and values.max() < 1 and abs(values.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(uniforms((1, 2, 3), np.arange(5000, 6000)), values[5000:6000])
    assert not np.array_equal(uniforms((1, 2, 4), np.arange(100)), values[:100])


def test_every_row_once_per_epoch_and_hard_rows_last() -> None:
    weigh, difficulty = _hard_above(0.3)
    pacer = _pacer()
    taken = [row for _, row in pacer.take(2500, 0, weigh)]
    first, second = taken[:1000], taken[1000:2000]
    assert sorted(first) == list(range(1000)) and sorted(second) == list(range(1000))
    easy = int((difficulty <= 0.3).sum())
    assert (difficulty[first[:easy]] <= 0.3).all() and (difficulty[first[easy:]] > 0.3).all()
    assert [p[0] for p, _ in pacer.take(1, 0, weigh)] == [2]


def test_decisions_do_not_depend_on_how_the_walk_is_cut() -> None:
    weigh, _ = _hard_above(0.5)
    one_call = [row for _, row in _pacer().take(700, 3, weigh)]
    pacer = _pacer()
    many_calls = [row for size in (1, 5, 64, 300, 330) for _, row in pacer.take(size, 3, weigh)]
    assert many_calls == one_call


def test_state_round_trip_continues_the_same_walk() -> None:
    weigh, _ = _hard_above(0.4)
    straight = _pacer()
    expected = [straight.take(7, step, weigh) for step in range(300)]
    first = _pacer()
    done = [first.take(7, step, weigh) for step in range(120)]
    state = pickle.loads(pickle.dumps(first.state_dict()))
    assert state["admitted"].nbytes == 125  # one bit per row
    resumed = _pacer()
    resumed.load_state_dict(state)
    assert done + [resumed.take(7, step, weigh) for step in range(120, 300)] == expected
    with pytest.raises(ValueError, match="same dataset"):
        _pacer(n=999).load_state_dict(state)


def test_one_pass_or_no_weights_take_the_epoch_in_order() -> None:
    weigh, _ = _hard_above(0.1)
    for pacer, weights in ((_pacer(passes=1), weigh), (_pacer(passes=3), None)):
        taken = pacer.take(1000, 0, weights)
        assert [row for _, row in taken] == np.random.default_rng([0, 0]).permutation(1000).tolist()
        assert [p for p, _ in taken] == [(0, i) for i in range(1000)]
