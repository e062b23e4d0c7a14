"""How a chain of stages runs on Ray Data: legs of tasks, and pools of actors for the stages that hold a model.

Consecutive stages that run as tasks form one leg, run inside one task, so that a sticker's decoded frames never
leave that worker's memory. A stage that holds a model (`Resources.actors` > 0) is a leg of its own, run by a pool
of actors whose `setup()` loads the model once per actor. Each leg is one Ray Data `map_batches` operator, and
every leg but the last hands on only the columns that later legs and the sink read, as Arrow typed by COLUMN_TYPES
(numpy arrays as .npy bytes). A leg converts to Python only the columns its stages read and passes the rest on
untouched, so an actor spends its time in the model, not in copying frames.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from rdtf.pipeline.blocks import Block, read_blocks
from rdtf.pipeline.config import RayConfig
from rdtf.pipeline.stage import STATUS_COLUMNS, Resources, Stage
from rdtf.schemas.dataset import SAMPLE_SCHEMA

# Rows a task takes through its stages together (plan.run_leg): their decoded frames, 3 MiB a row at the default
# settings, are what a task holds of them; the block's other rows hold only what goes on (frames encoded).
ROWS_AT_ONCE = 8
# Columns whose values are numpy arrays; they travel in .npy format, which carries their dtype and shape.
ARRAY_COLUMNS = ("frames", "clip_pixels", "frame_embeddings")
# The Arrow type of every column that may cross between legs: the stored row's, the status columns, and the
# stages' working columns (`frames` in a batch are the decoded arrays; the stored ones are `encoded_frames`).
COLUMN_TYPES: dict[str, pa.DataType] = {
    **{f.name: f.type for f in SAMPLE_SCHEMA},
    **{c: pa.string() for c in STATUS_COLUMNS},
    **{c: pa.large_binary() for c in ARRAY_COLUMNS},
    "data": pa.large_binary(),
    "encoded_frames": pa.list_(pa.binary()),
    "clip_frame_index": pa.list_(pa.int16()),
}


@dataclass
class Leg:
    """Stages that run in one worker, one after the other; `keep` is what the leg hands on (empty for the last)."""

    stages: list[Stage]
    keep: tuple[str, ...]

    @property
    def resources(self) -> Resources:
        if self.stages[0].resources.actors:
            return self.stages[0].resources
        return Resources(
            num_cpus=max(s.resources.num_cpus for s in self.stages),
            memory=max(s.resources.memory for s in self.stages),  # the stages share the worker's decoder process
            memory_per_row=sum(s.resources.memory_per_row for s in self.stages),  # a row's columns stay to the end
        )


def split(stages: list[Stage], input_columns: tuple[str, ...], sink_reads: tuple[str, ...]) -> list[Leg]:
    """Cut the chain into legs, and check once that every column a leg hands on has an Arrow type."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if stage.resources.actors or not groups or groups[-1][0].resources.actors:
            groups.append([stage])
        else:
            groups[-1].append(stage)
    legs = []
    available = set(input_columns) | set(STATUS_COLUMNS)
    for n, group in enumerate(groups):
        available |= {c for stage in group for c in stage.writes}
        later = {c for g in groups[n + 1 :] for stage in g for c in stage.reads}
        wanted = later | set(sink_reads) | set(STATUS_COLUMNS) | {"source_uri"}  # every stage counts rows by it
        keep = tuple(sorted(available & wanted)) if groups[n + 1 :] else ()
        untyped = [c for c in keep if c not in COLUMN_TYPES]
        if untyped:
            raise ValueError(f"columns {untyped} cross from stage {group[-1].name} to another worker: add their type")
        legs.append(Leg(group, keep))
    return legs


def _to_python(column: pa.ChunkedArray, name: str) -> list[Any]:
    values = column.to_pylist()
    if name in ARRAY_COLUMNS:
        return [None if v is None else np.load(io.BytesIO(v)) for v in values]
    return values


def _to_arrow(values: list[Any], name: str) -> pa.Array:
    if name in ARRAY_COLUMNS:
        values = [None if v is None else _npy(v) for v in values]
    return pa.array(values, type=COLUMN_TYPES[name])


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def run_leg(
    table: pa.Table,
    stages: list[Stage],
    keep: tuple[str, ...],
    sink: Any,
    schema: pa.Schema | None,
    rows_at_once: int | None = None,
) -> pa.Table:
    """One block through a leg's stages (and the sink, on the last leg): the next leg's columns, or `schema`'s.

    `rows_at_once` rows go through the stages together (None: the whole block, as a model wants its batch); after
    the stages a row keeps only the columns that go on, so a task holds the decoded frames (and file bytes) of
    that many rows at a time, whatever the block's size."""
    after = {"source_uri", *STATUS_COLUMNS, *getattr(sink, "reads", ()), *(schema.names if schema is not None else ())}
    needed = after | {c for s in stages for c in s.reads}
    going_on = after | set(keep)
    size = rows_at_once or max(table.num_rows, 1)
    batch: dict[str, list[Any]] = {}
    for begin in range(0, max(table.num_rows, 1), size):
        part = table.slice(begin, size)
        rows = {c: _to_python(part.column(c), c) for c in part.column_names if c in needed}
        for stage in stages:
            rows = stage(rows)
        for column, values in rows.items():
            if column in going_on:
                batch.setdefault(column, []).extend(values)
    if sink is not None:
        batch = sink(batch)
    if schema is not None:
        return pa.Table.from_pydict({name: batch[name] for name in schema.names}, schema=schema)
    written = {*STATUS_COLUMNS, *(c for s in stages for c in s.writes)}
    return pa.table(
        {c: _to_arrow(batch[c], c) if c in written else table.column(c).cast(COLUMN_TYPES[c]) for c in keep}
    )


def run_task_leg(table: pa.Table, stages: list[Stage], keep, sink, schema) -> pa.Table:
    """A task: sets its stages up (once per task), then runs the block, ROWS_AT_ONCE rows at a time."""
    for stage in stages:
        stage.setup()
    return run_leg(table, stages, keep, sink, schema, ROWS_AT_ONCE)


class LegActor:
    """An actor of a pool: sets its stages up once, when it starts, then runs every block it is given."""

    def __init__(self, stages: list[Stage], keep: tuple[str, ...], sink: Any, schema: pa.Schema | None):
        for stage in stages:
            stage.setup()
        self.leg = (stages, keep, sink, schema)

    def __call__(self, table: pa.Table) -> pa.Table:
        return run_leg(table, *self.leg)


def map_stages(
    dataset: Any,
    stages: list[Stage],
    input_columns: tuple[str, ...],
    sink: Any,
    schema: pa.Schema,
    rows_per_task: int = 0,
    max_retries: int = RayConfig.max_retries,
):
    """`dataset` (a Ray Dataset holding `input_columns`) through the stages, leg by leg; the last leg (with the sink,
    if any) outputs `schema`. `batch_size=None` hands each worker a whole block: a batch size would merge blocks.

    A task reserves the memory its stages declare for a block of `rows_per_task` rows (0: the rows' share unknown);
    Ray retries a failed task or actor at most `max_retries` times."""
    legs = _legs(stages, input_columns, sink, schema)
    with warnings.catch_warnings():  # the deprecation below says nothing a user can act on
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return _map_legs(dataset, legs, sink, schema, rows_per_task, max_retries)


def _legs(stages: list[Stage], input_columns: tuple[str, ...], sink: Any, schema: pa.Schema) -> list[Leg]:
    """The chain's legs; the last one hands the sink what it reads, or `schema`'s columns when there is no sink."""
    return split(stages, input_columns, tuple(getattr(sink, "reads", schema.names)))


def _memory(leg: Leg, rows_per_task: int) -> int | None:
    """Bytes a worker of `leg` reserves: what its stages declare for a block of `rows_per_task` rows; None when they
    declare nothing (Ray's default: no reservation)."""
    resources = leg.resources
    return resources.memory + rows_per_task * resources.memory_per_row or None


def task_args(leg: Leg, rows_per_task: int, max_retries: int) -> dict[str, Any]:
    """The remote args of a task of `leg`: its CPUs and memory, and at most `max_retries` retries (Ray Data's default
    retries a task forever; passed as remote args, which Ray 2.60 deprecates without a named replacement)."""
    return {"num_cpus": leg.resources.num_cpus, "memory": _memory(leg, rows_per_task), "max_retries": max_retries}


def _map_legs(dataset: Any, legs: list[Leg], sink: Any, schema: pa.Schema, rows_per_task: int, max_retries: int):
    import ray

    for n, leg in enumerate(legs):
        args = {"stages": leg.stages, "keep": leg.keep, "sink": None, "schema": None}
        if n == len(legs) - 1:
            args.update(sink=sink, schema=schema)
        whole_blocks = {"batch_size": None, "batch_format": "pyarrow"}
        if not leg.resources.actors:
            remote = task_args(leg, rows_per_task, max_retries)
            dataset = dataset.map_batches(run_task_leg, fn_kwargs=args, **whole_blocks, **remote)
            continue
        resources = leg.resources
        dataset = dataset.map_batches(
            LegActor,
            fn_constructor_kwargs=args,
            compute=ray.data.ActorPoolStrategy(size=resources.actors),
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            memory=_memory(leg, rows_per_task),
            # The actor's math libraries use its share of CPUs. Also what keeps Ray Data from fusing the decode
            # tasks before it into the actors: it fuses only operators whose remote arguments are equal.
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(resources.num_cpus)))}},
            # Ray Data's default is to restart actors and retry their tasks forever. Passed as remote args,
            # which Ray 2.60 deprecates without a named replacement (a RayDeprecationWarning).
            max_restarts=max_retries,
            max_task_retries=max_retries,
            **whole_blocks,
        )
    return dataset


def run_stages(
    blocks: list[Block],
    fs: pafs.FileSystem,
    stages: list[Stage],
    input_columns: tuple[str, ...],
    sink: Any,
    schema: pa.Schema,
    rows_per_task: int,
    max_retries: int = RayConfig.max_retries,
) -> Iterator[pa.Table]:
    """Stream the rows of `blocks` (pipeline.blocks.write_blocks, holding `input_columns`) through the stages on
    Ray Data, one block per task; yield the last leg's output (`schema`) as blocks finish."""
    if not blocks:
        return
    legs = _legs(stages, input_columns, sink, schema)
    # Read with the first leg's remote args, so that Ray Data fuses the read into that leg's tasks: apart, the read
    # tasks and the leg's took turns on the CPUs (10 blocks of 0.5 s on 2 CPUs: 6.0 s apart, 3.6 s fused).
    first = legs[0]
    dataset = read_blocks(blocks, fs, None if first.resources.actors else task_args(first, rows_per_task, max_retries))
    if len(legs) == 1:
        # One operator, so nothing to hold CPUs back for: Ray Data's reservation per operator started one task at a
        # time here until the first finished (the same blocks: 3.6 s with it, 2.6 s without).
        dataset.context.op_resource_reservation_enabled = False
    yield from map_stages(dataset, stages, input_columns, sink, schema, rows_per_task, max_retries).iter_batches(
        batch_format="pyarrow", batch_size=None
    )
