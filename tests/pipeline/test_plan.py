"""How the main pass is cut into Ray Data operators (pipeline.plan), and what crosses between them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rdtf.pipeline.clip import prepare
from rdtf.pipeline.config import ClipConfig, PreprocessConfig
from rdtf.pipeline.plan import COLUMN_TYPES, map_stages, run_leg, split
from rdtf.pipeline.runner import INPUT_COLUMNS, main_stages
from rdtf.pipeline.stage import STATUS_COLUMNS, Resources, Stage
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


class Recorder:
    """Stands for a Ray Dataset: records the options of every map_batches call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def map_batches(self, fn: Any, **options: Any) -> Recorder:
        self.calls.append(options)
        return self


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
