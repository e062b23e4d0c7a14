"""The unit of the pipeline: a Stage maps a batch of rows to a batch of rows, and never loses one.

A batch is a dict of equal-length lists (column name -> values). A row whose `reject_reason` is set has been
rejected by an earlier stage and passes through untouched; a stage that cannot use a row raises `Reject`, and an
unexpected exception becomes a reject with reason `internal_error` -- neither ever escapes `__call__`. Stages do not
import Ray: `pipeline.plan` turns them into Ray Data operators, and tests call them on a batch directly.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

Batch = dict[str, list[Any]]

# Columns every batch carries from the first stage on: why (and where) a row was rejected, if it was.
STATUS_COLUMNS = ("reject_reason", "reject_stage", "reject_message", "kept_sample_id")


class Reject(Exception):
    """Raised inside `process_row` to turn the row into a reject with a reason code from schemas.REJECT_REASONS."""

    def __init__(self, reason: str, message: str, kept_sample_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.kept_sample_id = kept_sample_id


# Not a reject reason: an input that failed for a reason that may pass (see NotDone). Such a row is written nowhere.
NOT_DONE = "not_done"


class NotDone(Reject):
    """Raised when an input could not be processed for a reason that may pass (throttling, a dropped connection),
    after retries: it is neither a row nor a reject, and the next run tries it again."""

    def __init__(self, message: str):
        super().__init__(NOT_DONE, message)


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage asks Ray for, and whether workers are tasks or a pool of actors."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int = 0  # 0: tasks (setup() once per task); n: a pool of n actors (setup() once per actor)
    memory: int = 0  # bytes a worker holds whatever its batch (the decoder process's limit); 0: none declared
    # Bytes each row of its batch may hold until the worker is done with it: its frames, decoded for ROWS_AT_ONCE rows
    # at a time (pipeline.plan) and encoded after, which for incompressible frames are as large.
    memory_per_row: int = 0


class Stage(ABC):
    """One step of the pipeline. Subclasses set `name`, `reads`, `writes` and implement `process_row`."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]  # columns the stage needs from earlier stages or the input
    writes: ClassVar[tuple[str, ...]]  # columns it adds (None on rejected rows)
    resources: ClassVar[Resources] = Resources()

    def setup(self) -> None:
        """Load what is expensive (models, decoders) before processing: once per task, or once per actor."""

    @abstractmethod
    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Return the `writes` columns of one row, or raise Reject."""

    def __call__(self, batch: Batch) -> Batch:
        size = len(batch["source_uri"])
        for column in STATUS_COLUMNS:
            batch.setdefault(column, [None] * size)
        outputs: dict[str, list[Any]] = {c: [None] * size for c in self.writes}
        for i in range(size):
            if batch["reject_reason"][i] is not None:
                continue
            try:
                values = self.process_row({c: batch[c][i] for c in self.reads})
            except Reject as reject:
                self._reject(batch, i, reject.reason, reject.message, reject.kept_sample_id)
                continue
            except Exception as error:  # a bug or a library failure: keep the input, say what happened
                detail = "".join(traceback.format_exception_only(type(error), error)).strip()
                self._reject(batch, i, "internal_error", f"{detail} (please report this)")
                continue
            for column in self.writes:
                outputs[column][i] = values[column]
        batch.update(outputs)
        return batch

    def _reject(self, batch: Batch, i: int, reason: str, message: str, kept: str | None = None) -> None:
        batch["reject_reason"][i] = reason
        batch["reject_stage"][i] = self.name
        batch["reject_message"][i] = message
        batch["kept_sample_id"][i] = kept


def check_chain(stages: list[Stage], input_columns: tuple[str, ...]) -> None:
    """Fail when the pipeline is built, not per row, if a stage reads a column nothing before it writes."""
    available = set(input_columns) | set(STATUS_COLUMNS)
    for stage in stages:
        missing = [c for c in stage.reads if c not in available]
        if missing:
            raise ValueError(f"stage {stage.name} reads {missing}, which no earlier stage or the input provides")
        available |= set(stage.writes)
