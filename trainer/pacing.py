"""Which rows of this rank's share enter the shuffle buffer next: every row exactly once per epoch, easy first as the
curriculum's pacing says, the rows it turns away deferred to a later pass over the same epoch, never dropped.
See ../docs/curriculum.md ("Ordering an epoch"); tested by tests/trainer/test_pacing.py.

Pure numpy on compact row ids (0..num_rows-1, this rank's share): no frames, no files, no curriculum import, so
the loader (trainer/data.py) and the coverage benchmark (bench/curriculum_coverage.py) run the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Position = tuple[int, int]  # (epoch, index of the row in this rank's order for that epoch)
# weigh(row ids, step) -> an admission probability in (0, 1] per row (the curriculum's sample_weights)
Weigh = Callable[[np.ndarray, int], np.ndarray]
# order(epoch) -> this rank's row ids in the order of that epoch (a permutation of 0..num_rows-1)
Order = Callable[[int], np.ndarray]

_MASK64 = (1 << 64) - 1


def uniforms(keys: tuple[int, ...], indices: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per index, a pure function of (keys, index): splitmix64 of a hashed key.

    Vectorised and independent of how indices are grouped into calls, so a decision never depends on how many rows
    one call looked at (which depends on when the buffer got full): resume and chunking cannot change it.
    """
    base = 0x9E3779B97F4A7C15
    for key in keys:
        base = ((base ^ (key & _MASK64)) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    with np.errstate(over="ignore"):
        x = np.asarray(indices, dtype=np.uint64) + np.uint64(base)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class EpochPacer:
    """Admits this rank's rows epoch by epoch, in `passes` passes over the epoch's order.

    1. Pass 0 walks the epoch's order; each row is admitted with probability weigh(row, step) (a uniform drawn from
       (seed, rank, epoch, pass, index)), or deferred.  2. Each later pass walks the same order over the rows still
       deferred, at a later step, so with a higher pacing threshold.  3. The last pass admits every row left.
    So each row is admitted exactly once per epoch; a row the pacing turns away comes back later in the same epoch,
    when its turn has come, instead of waiting for the next epoch (where at about 1.2 epochs it may never come).

    State: the epoch, pass and cursor, and one bit per row (admitted this epoch): num_rows / 8 bytes in a checkpoint.
    Memory: that bit array plus the epoch's order (4 bytes per row).
    """

    def __init__(self, num_rows: int, order: Order, passes: int, seed: int, rank: int) -> None:
        if num_rows < 1:
            raise ValueError(f"a rank needs at least one row, got {num_rows}")
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        self.num_rows = num_rows
        self.passes = passes
        self.seed = seed
        self.rank = rank
        self._order_of = order
        self.epoch, self.pass_index, self.cursor = 0, 0, 0
        self.admitted = np.zeros(num_rows, dtype=bool)  # admitted in the current epoch
        self._admitted_count = 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            order = np.asarray(self._order_of(self.epoch))
            if order.shape != (self.num_rows,):
                raise ValueError(f"the order of epoch {self.epoch} has {order.shape} ids, not {self.num_rows}")
            self._order = order.astype(np.uint32 if self.num_rows < 2**32 else np.int64)
        return self._order

    def _next_pass(self) -> None:
        self.cursor = 0
        if self._admitted_count == self.num_rows:
            self.epoch, self.pass_index = self.epoch + 1, 0
            self.admitted[:] = False
            self._admitted_count = 0
            self._order = None
        else:
            self.pass_index += 1

    def take(self, count: int, step: int, weigh: Weigh | None) -> list[tuple[Position, int]]:
        """The next `count` admitted rows as (position, row id), deciding rows at `step` as the walk reaches them.

        Rows past the last one taken are left undecided, so the next call decides them at its own step. Without
        `weigh` (no curriculum) every row is admitted in the epoch's order.
        """
        taken: list[tuple[Position, int]] = []
        while len(taken) < count:
            order = self._epoch_order()
            if self.cursor >= self.num_rows:
                self._next_pass()
                continue
            need = count - len(taken)
            chunk = order[self.cursor : self.cursor + 64 + 4 * need]
            indices = np.arange(self.cursor, self.cursor + len(chunk))
            admit = ~self.admitted[chunk]
            if weigh is not None and self.pass_index < self.passes - 1 and admit.any():
                candidates = np.flatnonzero(admit)
                weights = np.asarray(weigh(chunk[candidates], step), dtype=np.float64)
                keys = (self.seed, self.rank, self.epoch, self.pass_index)
                admit[candidates] = uniforms(keys, indices[candidates]) < weights
            hits = np.flatnonzero(admit)[:need]
            self.cursor += int(hits[-1]) + 1 if len(hits) == need else len(chunk)
            self.admitted[chunk[hits]] = True
            self._admitted_count += len(hits)
            taken += [((self.epoch, int(indices[h])), int(chunk[h])) for h in hits]
        return taken

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "pass": self.pass_index,
            "cursor": self.cursor,
            "num_rows": self.num_rows,
            "admitted": np.packbits(self.admitted),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows:
            raise ValueError(
                f"the checkpoint's data position is for {state['num_rows']} rows on this rank, the dataset now gives "
                f"it {self.num_rows}: resume on the same dataset with the same number of processes"
            )
        self.epoch, self.pass_index, self.cursor = state["epoch"], state["pass"], state["cursor"]
        self.admitted = np.unpackbits(state["admitted"], count=self.num_rows).astype(bool)
        self._admitted_count = int(self.admitted.sum())
        self._order = None
