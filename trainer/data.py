"""Streams a curated dataset into training batches: this rank's rows, ordered each epoch by the curriculum's pacing
(trainer/pacing.py), read a row group at a time, frame decoding on background threads, a shuffle buffer, and a
position that a checkpoint restores exactly.

The dataset is opened only through `schemas.open_dataset` and read with plain pyarrow (one process per GPU under the
`deepspeed` launcher or torchrun). Nothing holds more than the shuffle buffer's frames and a few row groups' encoded
frames in memory; per row of the rank's share the loader keeps 1 bit (admitted this epoch) and the epoch's order.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from rdtf.schemas.dataset import KEYFRAME_COUNTS
from rdtf.schemas.frames import decode_frame
from rdtf.schemas.reader import DatasetReader, footers
from rdtf.trainer.config import DataConfig
from rdtf.trainer.pacing import EpochPacer, Position, Weigh
from rdtf.trainer.tasks import NUM_FRAMES

READ_COLUMNS = ["sample_id", "frames", "keyframe_sets", "caption", "static_difficulty"]
# Row groups kept read (encoded frames, up to ray.rows_per_shard = 128 rows each): the walk only moves forward.
GROUP_CACHE = 2


class ParquetRows:
    """This rank's share of the dataset: its files (every world_size-th, from the reader), its rows numbered
    0..n-1 in file order (the compact ids the curriculum and the pacer use), each epoch's order (the files in a new
    seeded order, rows in file order), and reads of chosen rows, one row group at a time."""

    def __init__(self, reader: DatasetReader, rank: int, world_size: int, seed: int):
        self.fs = reader.layout.fs
        self.files = reader.rank_files(rank, world_size)
        if not reader.sample_files:  # every input was rejected: no number of processes would help
            raise ValueError(f"{reader.layout.root} has no rows to train on: `rdtf stats` on it shows its rejects")
        if not self.files:
            raise ValueError(
                f"{reader.layout.root} has {len(reader.sample_files)} data files, fewer than the {world_size} "
                "training processes: every process needs at least one. Re-run `rdtf preprocess` with a smaller "
                "ray.rows_per_shard, or train on fewer processes."
            )
        metadata = footers(self.fs, self.files)  # read in threads: on an object store each is a round trip
        self.rows_per_file = [m.num_rows for m in metadata]
        self.num_rows = sum(self.rows_per_file)
        if self.num_rows == 0:
            raise ValueError(f"{reader.layout.root}: this process's data files hold no rows")
        self.first_row = np.cumsum([0, *self.rows_per_file])  # id of each file's first row
        # id of each row group's first row, per file, and one past the last
        self.group_starts = [
            np.cumsum([0] + [m.row_group(g).num_rows for g in range(m.num_row_groups)]) + first
            for m, first in zip(metadata, self.first_row, strict=False)
        ]
        self.seed = seed

    def static_difficulty(self) -> np.ndarray:
        """The static difficulty of every row, by id: one column read, 4 bytes per row."""
        columns = [pq.read_table(f, columns=["static_difficulty"], filesystem=self.fs)[0] for f in self.files]
        return np.concatenate([c.to_numpy(zero_copy_only=False) for c in columns]).astype(np.float32)

    def order(self, epoch: int) -> list[int]:
        """File indices in the order of `epoch`: the same on every run with the same seed."""
        return [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.files))]

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Row ids in the order of `epoch`: the files in `order(epoch)`, rows in file order."""
        return np.concatenate([np.arange(self.first_row[f], self.first_row[f + 1]) for f in self.order(epoch)])

    def locate(self, row: int) -> tuple[int, int]:
        """(file, row group) that holds row id `row`."""
        file = int(np.searchsorted(self.first_row, row, side="right")) - 1
        return file, int(np.searchsorted(self.group_starts[file], row, side="right")) - 1

    def read_group(self, file: int, group: int) -> pa.Table:
        """One row group's columns for training; its frames stay encoded until a row is decoded."""
        return pq.ParquetFile(self.files[file], filesystem=self.fs).read_row_group(group, columns=READ_COLUMNS)

    def row(self, table: pa.Table, file: int, group: int, row: int) -> dict[str, Any]:
        """Row id `row` out of its row group's table."""
        return table.slice(row - int(self.group_starts[file][group]), 1).to_pylist()[0]


@dataclass
class Batch:
    """A micro-batch on the CPU, ready for the model."""

    frames: torch.Tensor  # (b, 3, f, h, w) float in [-1, 1]; padded frames are 0 (paper: pad value 0)
    num_valid: torch.Tensor  # (b,) long: k keyframes of each clip, 3..8
    captions: list[str]
    sample_ids: list[str]
    rows: np.ndarray  # (b,) int64: the rows' ids in this rank's share, for the curriculum
    static_difficulty: np.ndarray  # (b,) float32

    def __len__(self) -> int:
        return len(self.sample_ids)


def keyframe_count(seed: int, position: Position) -> int:
    """k for the row at `position`: uniform in 3..8, drawn afresh every epoch (paper: "clustered into k clusters
    randomly"), from the seed and the position alone so that a resumed run draws the same k."""
    return int(np.random.default_rng([seed, *position]).integers(KEYFRAME_COUNTS[0], KEYFRAME_COUNTS[-1] + 1))


def decode_clip(row: dict[str, Any], k: int, resolution: int) -> np.ndarray:
    """The k keyframes of a row (its stored index set for k), decoded and resized: (k, r, r, 3) uint8."""
    indices = row["keyframe_sets"][k - KEYFRAME_COUNTS[0]]
    frames = []
    for i in indices:
        frame = decode_frame(row["frames"][i])
        if frame.shape[:2] != (resolution, resolution):
            image = Image.fromarray(frame).resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=2.0)
            frame = np.asarray(image)
        frames.append(frame)
    return np.stack(frames)


def collate(clips: list[tuple[dict[str, Any], np.ndarray]], row_ids: list[int] | None = None) -> Batch:
    """Pad every (row, clip) to NUM_FRAMES frames and stack into (b, 3, f, h, w) in [-1, 1]; `row_ids` are the rows'
    ids in the rank's share (-1 for clips read outside a share, e.g. held-out clips)."""
    size = clips[0][1].shape[1]
    frames = torch.zeros(len(clips), 3, NUM_FRAMES, size, size)
    for i, (_, pixels) in enumerate(clips):
        clip = torch.from_numpy(pixels).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (3, k, h, w)
        frames[i, :, : clip.shape[1]] = clip
    return Batch(
        frames=frames,
        num_valid=torch.tensor([c[1].shape[0] for c in clips], dtype=torch.long),
        captions=[row["caption"] or "" for row, _ in clips],
        sample_ids=[row["sample_id"] for row, _ in clips],
        rows=np.array([-1] * len(clips) if row_ids is None else row_ids, dtype=np.int64),
        static_difficulty=np.array([row["static_difficulty"] for row, _ in clips], dtype=np.float32),
    )


@dataclass
class _Pending:
    position: Position
    row_id: int
    clip: Future  # -> (row without its frames, (k, r, r, 3) uint8)


class ClipLoader:
    """Batches of clips from a shuffle buffer that an EpochPacer fills, easy rows first, every row once per epoch.

    The curriculum acts where rows enter the buffer (trainer/pacing.py): the pacer walks the epoch's order in
    passes and admits each row with the curriculum's weight or defers it to the next pass. It decides on row ids
    alone, so a deferred row's frames are never read on that pass; an admitted row's row group is read once (and
    kept while the walk is in it) and the row decoded on a background thread. Draws take the oldest epoch's rows
    first, so one epoch's rows are all trained before the next epoch's (the buffer stays full across the boundary).

    Determinism: admission happens on the calling thread, always to the same buffer size, with uniforms drawn from
    (seed, rank, epoch, pass, index) and draws from (seed, rank, draw count). So the batches depend only on the
    seed, the state and the steps, never on thread timing, and `state_dict()` restores them exactly.
    """

    def __init__(
        self, rows: ParquetRows, config: DataConfig, resolution: int, seed: int, rank: int = 0, passes: int = 1
    ) -> None:
        self.rows = rows
        self.config = config
        self.resolution = resolution
        self.seed = seed
        self.rank = rank
        self.pacer = EpochPacer(rows.num_rows, rows.epoch_order, passes, seed, rank)
        self.draws = 0
        self.buffer: list[_Pending] = []
        self._restore: list[tuple[Position, int]] = []
        self._groups: OrderedDict[tuple[int, int], Future] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None

    # --- background reading and decoding -------------------------------------------------------------------------
    def _group(self, file: int, group: int) -> Future:
        """The row group's table, read on a background thread once while it stays among the last GROUP_CACHE."""
        key = (file, group)
        if key in self._groups:
            self._groups.move_to_end(key)
        else:
            self._groups[key] = self._executor.submit(self.rows.read_group, file, group)
            if len(self._groups) > GROUP_CACHE:
                self._groups.popitem(last=False)
        return self._groups[key]

    def _decode(self, position: Position, row_id: int, table: Future | None = None) -> _Pending:
        file, group = self.rows.locate(row_id)
        table = table or self._group(file, group)  # submitted before the decode: the pool's FIFO starts it first
        k = keyframe_count(self.seed, position)

        def decode() -> tuple[dict[str, Any], np.ndarray]:
            row = self.rows.row(table.result(), file, group, row_id)
            clip = decode_clip(row, k, self.resolution)
            return {key: value for key, value in row.items() if key != "frames"}, clip

        return _Pending(position, row_id, self._executor.submit(decode))

    def _start(self) -> None:
        self._executor = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="rdtf-decode")
        # A resumed buffer holds rows from many row groups: read each of them once, not once per row.
        located = [self.rows.locate(row_id) for _, row_id in self._restore]
        tables = {key: self._executor.submit(self.rows.read_group, *key) for key in sorted(set(located))}
        for key in located:  # the cache keeps the groups of the latest admitted rows, where the walk goes on
            self._groups[key] = tables[key]
            self._groups.move_to_end(key)
        while len(self._groups) > GROUP_CACHE:
            self._groups.popitem(last=False)
        restored = zip(self._restore, located, strict=True)
        self.buffer = [self._decode(position, row_id, tables[key]) for (position, row_id), key in restored]
        self._restore = []

    # --- the training thread ---------------------------------------------------------------------------------------
    def next_batch(self, size: int, step: int = 0, weigh: Weigh | None = None) -> Batch:
        """Fill the buffer with rows the pacer admits at `step` by `weigh` (the curriculum's sample weights), then
        draw `size` clips, the oldest epoch's first and uniformly within an epoch, waiting for their decoding."""
        if self._executor is None:
            self._start()
        missing = self.config.shuffle_buffer - len(self.buffer)
        if missing > 0:
            self.buffer += [self._decode(p, r) for p, r in self.pacer.take(missing, step, weigh)]
        rng = np.random.default_rng([self.seed, self.rank, self.draws])
        self.draws += 1
        epochs = np.array([p.position[0] for p in self.buffer])
        oldest = np.flatnonzero(epochs == epochs.min())
        size = min(size, len(self.buffer))
        if len(oldest) >= size:
            chosen = rng.choice(oldest, size=size, replace=False)
        else:
            rest = np.flatnonzero(epochs != epochs.min())
            chosen = np.concatenate([oldest, rng.choice(rest, size=size - len(oldest), replace=False)])
        picked = [self.buffer[i] for i in chosen]
        for i in sorted(chosen, reverse=True):
            del self.buffer[i]
        return collate([p.clip.result() for p in picked], [p.row_id for p in picked])

    def state_dict(self) -> dict[str, Any]:
        """Where the walk is (the pacer's state: one bit per row), the rows waiting in the buffer, the draw count."""
        buffered = [(p.position, p.row_id) for p in self.buffer] or list(self._restore)
        return {"pacer": self.pacer.state_dict(), "buffer": buffered, "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.pacer.load_state_dict(state["pacer"])
        self._restore = [(tuple(position), int(row_id)) for position, row_id in state["buffer"]]
        self.buffer = []
        self.draws = int(state["draws"])

    def close(self) -> None:
        """Stop the decoders; the loader can start again from its state."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._groups.clear()
