"""How the main pass is cut into Ray Data operators (pipeline.plan), and what crosses between them."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import rdtf.pipeline.plan as plan
from rdtf.pipeline.blocks import Block
from rdtf.pipeline.clip import prepare
from rdtf.pipeline.config import ClipConfig, PreprocessConfig
from rdtf.pipeline.plan import COLUMN_TYPES, ROWS_AT_ONCE, map_stages, run_leg, split
from rdtf.pipeline.runner import INPUT_COLUMNS, main_stages
from rdtf.pipeline.stage import STATUS_COLUMNS, Reject, Resources, Stage
from rdtf.pipeline.write import ShardWriter


def legs_of(clip: bool) -> list:
    cfg = PreprocessConfig(clip=ClipConfig(model="rdtf-tiny-clip", weights="random") if clip else ClipConfig())
    setup = prepare(cfg.clip)
    stages = main_stages(cfg, setup.for_cluster(cpus=2, gpus=0) if setup else None)
    return split(stages, INPUT_COLUMNS, ShardWriter.reads)


def test_without_clip_the_whole_chain_is_one_task():
    (leg,) = legs_of(clip=False)
    assert [s.name for s in leg.stages][-2:] == ["keyframes", "encode"] and leg.keep == ()
    # One CPU; the decoder process's limit, and each row's decoded frames (16 x 256 x 256 x 3 bytes).
    assert leg.resources == Resources(num_cpus=1.0, memory=1024 * 2**20, memory_per_row=16 * 256 * 256 * 3)


def test_with_clip_decoding_stays_in_tasks_and_the_model_in_actors():
    cpu, clip, last = legs_of(clip=True)
    assert [s.name for s in cpu.stages] == ["probe", "filter", "decode", "entropy", "filter", "clip_input", "encode"]
    assert [s.name for s in clip.stages] == ["clip"] and [s.name for s in last.stages] == ["keyframes"]
    assert cpu.resources.actors == 0 and last.resources.actors == 0
    assert clip.resources == Resources(num_cpus=0.5, num_gpus=0.0, actors=1)
    # Decoded frames and file bytes never leave the task; pixels leave it, and never the actor.
    assert {"frames", "data"}.isdisjoint(cpu.keep) and {"clip_pixels", "encoded_frames"} <= set(cpu.keep)
    assert "clip_pixels" not in clip.keep and {"frame_embeddings", "clip_embedding", "encoded_frames"} <= set(clip.keep)
    assert set(STATUS_COLUMNS) <= set(cpu.keep) and last.keep == ()


class Mystery(Stage):
    name = "mystery"
    reads = ("source_uri",)
    writes = ("mystery",)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"mystery": 1}


class NeedsMystery(Mystery):
    name = "needs_mystery"
    reads = ("mystery",)
    resources = Resources(num_cpus=0.5, actors=1)


def test_a_column_without_an_arrow_type_cannot_cross():
    with pytest.raises(ValueError, match=r"\['mystery'\] cross from stage mystery"):
        split([Mystery(), NeedsMystery()], ("source_uri",), ("source_uri",))


def test_columns_cross_as_typed_arrow_and_come_back_equal():
    class Make(Stage):
        name = "make"
        reads = ("source_uri",)
        writes = ("clip_pixels", "clip_embedding", "tags", "clip_frame_index")

        def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
            return {
                "clip_pixels": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
                "clip_embedding": np.array([0.6, 0.8], dtype=np.float16),
                "tags": [{"tag": "ok", "score": 0.5}],
                "clip_frame_index": [0, 1, 1],
            }

    keep = ("source_uri", "clip_pixels", "clip_embedding", "tags", "clip_frame_index", *STATUS_COLUMNS)
    table = pa.table({"source_uri": ["a", "b"]})
    out = run_leg(table, [Make()], keep, None, None)
    assert out.column_names == list(keep)
    assert all(out.schema.field(c).type == COLUMN_TYPES[c] for c in keep)

    class Check(Stage):  # the next leg sees the values the first one made
        name = "check"
        reads = ("clip_pixels", "clip_embedding", "tags", "clip_frame_index")
        writes = ()

        def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
            pixels = row["clip_pixels"]
            assert pixels.dtype == np.uint8 and pixels.shape == (2, 4, 4, 3) and pixels[1, 3, 3, 2] == 95
            assert row["clip_embedding"] == [0.60009765625, 0.7998046875]  # float16 values
            assert row["tags"] == [{"tag": "ok", "score": 0.5}] and row["clip_frame_index"] == [0, 1, 1]
            return {}

    checked = run_leg(out, [Check()], ("source_uri", *STATUS_COLUMNS), None, None)
    assert checked.column("reject_reason").to_pylist() == [None, None], checked.column("reject_message")


@dataclass(eq=False)  # hashable by identity, for a WeakSet
class Frames:
    """Stands for a row's decoded frames."""

    value: int


class Recorder:
    """Stands for a Ray Dataset: records the options of every map_batches call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.context = SimpleNamespace(op_resource_reservation_enabled=True)

    def map_batches(self, fn: Any, **options: Any) -> Recorder:
        self.calls.append(options)
        return self

    def iter_batches(self, **options: Any) -> list:
        return []


@pytest.mark.parametrize("clip", [False, True])
def test_retries_are_bounded_and_the_decode_task_reserves_its_memory(clip):
    cfg = PreprocessConfig(clip=ClipConfig(model="rdtf-tiny-clip", weights="random") if clip else ClipConfig())
    setup = prepare(cfg.clip)
    stages = main_stages(cfg, setup.for_cluster(cpus=2, gpus=0) if setup else None)
    dataset = map_stages(Recorder(), stages, INPUT_COLUMNS, ShardWriter(".", 256, "run"), pa.schema([]), 10, 2)
    decode_leg, *later = dataset.calls
    assert decode_leg["max_retries"] == 2
    assert decode_leg["memory"] == 1024 * 2**20 + 10 * 16 * 256 * 256 * 3
    if clip:
        actors, keyframes = later
        assert actors["max_restarts"] == actors["max_task_retries"] == 2 and actors["memory"] is None
        assert keyframes["max_retries"] == 2 and keyframes["memory"] is None


def test_a_task_holds_the_decoded_frames_of_a_few_rows_at_a_time():
    """The rows go through the stages ROWS_AT_ONCE at a time; what reaches the sink holds no decoded frames, and
    equals what the whole block at once gives."""
    live: weakref.WeakSet[Frames] = weakref.WeakSet()
    alive: list[int] = []  # decoded frames in memory at each decode

    class Decode(Stage):
        name = "decode"
        reads = ("source_uri",)
        writes = ("frames",)

        def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
            alive.append(len(live))
            if row["source_uri"].endswith("7"):
                raise Reject("corrupt", "bad bytes")
            frames = Frames(int(row["source_uri"][1:]))
            live.add(frames)
            return {"frames": frames}

    class Encode(Stage):
        name = "encode"
        reads = ("frames",)
        writes = ("encoded_frames",)

        def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
            return {"encoded_frames": [bytes([row["frames"].value % 256])]}

    class Sink:
        reads = ("source_uri", "encoded_frames")

        def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            self.columns = set(batch)
            return {"source_uri": batch["source_uri"], "reject_reason": batch["reject_reason"],
                    "first": [None if e is None else e[0] for e in batch["encoded_frames"]]}  # fmt: skip

    table = pa.table({"source_uri": [f"s{i}" for i in range(3 * ROWS_AT_ONCE + 1)]})
    schema = pa.schema([("source_uri", pa.string()), ("reject_reason", pa.string()), ("first", pa.binary())])
    sink = Sink()
    in_parts = run_leg(table, [Decode(), Encode()], (), sink, schema, ROWS_AT_ONCE)
    assert "frames" not in sink.columns and max(alive) <= ROWS_AT_ONCE
    alive.clear()
    at_once = run_leg(table, [Decode(), Encode()], (), Sink(), schema)
    assert max(alive) == table.num_rows - 3  # at the last row: every earlier row's but two rejected ones'
    assert in_parts.equals(at_once) and in_parts["reject_reason"].null_count == table.num_rows - 2


@pytest.mark.parametrize("clip", [False, True])
def test_the_read_asks_for_what_the_first_leg_does_so_that_ray_data_fuses_them(clip, monkeypatch):
    """Ray Data fuses a read into the tasks after it only when their remote args are equal; apart, the two took turns
    on the CPUs. With one operator (no CLIP stage) the per-operator reservation is off: it held a CPU back."""
    cfg = PreprocessConfig(clip=ClipConfig(model="rdtf-tiny-clip", weights="random") if clip else ClipConfig())
    setup = prepare(cfg.clip)
    stages = main_stages(cfg, setup.for_cluster(cpus=2, gpus=0) if setup else None)
    dataset, read_args = Recorder(), []
    monkeypatch.setattr(plan, "read_blocks", lambda blocks, fs, args: read_args.append(args) or dataset)
    sink = ShardWriter(".", 256, "run")
    list(plan.run_stages([Block("blocks.parquet", 0)], None, stages, INPUT_COLUMNS, sink, pa.schema([]), 10, 2))
    first = dataset.calls[0]
    assert read_args == [{key: first[key] for key in ("num_cpus", "memory", "max_retries")}]
    assert read_args[0]["memory"] == 1024 * 2**20 + 10 * 16 * 256 * 256 * 3
    assert dataset.context.op_resource_reservation_enabled is clip
