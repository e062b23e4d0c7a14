"""Streams a curated dataset into training batches: this rank's rows in a seeded order, PNG decoding on background
threads, a shuffle buffer that the curriculum draws from, and a position that a checkpoint restores exactly.

The dataset is opened only through `schemas.open_dataset`. Rows come from plain pyarrow (`ParquetRows`: one process
per GPU under the `deepspeed` launcher) or from a Ray Data shard (`RayRows`: under Ray Train). Nothing holds more
than the shuffle buffer's frames in memory, and a step costs the same however large the dataset is.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from schemas.dataset import KEYFRAME_COUNTS
from schemas.reader import DatasetReader
from trainer.config import DataConfig
from trainer.masks import NUM_FRAMES

READ_COLUMNS = ["sample_id", "frames", "keyframe_sets", "caption", "static_difficulty"]
Position = tuple[int, int]  # (epoch, index of the row in this rank's order for that epoch)
# weigh(sample_ids, static_difficulty, step) -> a weight per buffered row (the curriculum's sample_weights)
Weigh = Callable[[Sequence[str], np.ndarray, int], np.ndarray]


class RowSource(Protocol):
    """Where rows come from: an endless stream over epochs, restartable at a position."""

    def iter_from(self, start: Position) -> Iterator[tuple[Position, dict[str, Any]]]: ...

    def rows_at(self, positions: Sequence[Position]) -> list[dict[str, Any]] | None:
        """The rows at these positions, or None when the source cannot seek (they are then skipped)."""


def _rows(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    return batch.select(READ_COLUMNS).to_pylist()


class ParquetRows:
    """This rank's files (every world_size-th, from the reader) in a new seeded order each epoch, rows in file order."""

    def __init__(self, reader: DatasetReader, rank: int, world_size: int, seed: int, read_batch_rows: int = 16):
        self.fs = reader.layout.fs
        self.files = reader.rank_files(rank, world_size)
        if not self.files:
            raise ValueError(
                f"{reader.layout.root} has {len(reader.sample_files)} data files, fewer than the {world_size} "
                "training processes: every process needs at least one. Re-run `rdtf preprocess` with a smaller "
                "ray.rows_per_shard, or train on fewer processes."
            )
        self.rows_per_file = [pq.ParquetFile(f, filesystem=self.fs).metadata.num_rows for f in self.files]
        if sum(self.rows_per_file) == 0:
            raise ValueError(f"{reader.layout.root}: this process's data files hold no rows")
        self.seed = seed
        self.read_batch_rows = read_batch_rows

    def order(self, epoch: int) -> list[int]:
        """File indices in the order of `epoch`: the same on every run with the same seed."""
        return [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.files))]

    def _locate(self, epoch: int, index: int) -> tuple[int, int, int]:
        """(position in the epoch's file order, file index, row inside the file) of row `index` of `epoch`."""
        for slot, file in enumerate(self.order(epoch)):
            if index < self.rows_per_file[file]:
                return slot, file, index
            index -= self.rows_per_file[file]
        raise IndexError(f"row {index} is past the end of epoch {epoch}")

    def _read(self, file: int, first_row: int) -> Iterator[dict[str, Any]]:
        """The rows of one file from `first_row` on, skipping whole row groups before it."""
        parquet = pq.ParquetFile(self.files[file], filesystem=self.fs)
        groups, skip = [], first_row
        for g in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(g).num_rows
            if skip >= size and not groups:
                skip -= size
                continue
            groups.append(g)
        for batch in parquet.iter_batches(self.read_batch_rows, row_groups=groups, columns=READ_COLUMNS):
            rows = _rows(batch)
            yield from rows[skip:]
            skip = max(0, skip - len(rows))

    def iter_from(self, start: Position) -> Iterator[tuple[Position, dict[str, Any]]]:
        # Every epoch holds the same rows: a position past an epoch's last row (a checkpoint taken right after it)
        # is a position in a later epoch.
        epoch, index = divmod(start[0] * sum(self.rows_per_file) + start[1], sum(self.rows_per_file))
        while True:
            slot, _, row = self._locate(epoch, index)
            for file in self.order(epoch)[slot:]:
                for row_dict in self._read(file, row):
                    yield (epoch, index), row_dict
                    index += 1
                row = 0
            epoch, index = epoch + 1, 0

    def rows_at(self, positions: Sequence[Position]) -> list[dict[str, Any]]:
        found = {}
        for position in positions:
            _, file, row = self._locate(*position)
            found[position] = next(self._read(file, row))
        return [found[p] for p in positions]


class RayRows:
    """Rows from a Ray Data dataset or a Ray Train shard (`ray.train.get_dataset_shard`), epoch after epoch.

    Ray Data cannot seek: a resumed run skips to the saved position, and the rows that were waiting in the shuffle
    buffer at the checkpoint are not seen again in that epoch.
    """

    def __init__(self, dataset: Any, read_batch_rows: int = 16):
        self.dataset = dataset  # ray.data.Dataset or ray.data.DataIterator: both have iter_batches
        self.read_batch_rows = read_batch_rows

    def iter_from(self, start: Position) -> Iterator[tuple[Position, dict[str, Any]]]:
        epoch, skip = start
        while True:
            index = 0
            for batch in self.dataset.iter_batches(batch_size=self.read_batch_rows, batch_format="pyarrow"):
                for row in _rows(batch):
                    if index >= skip:
                        yield (epoch, index), row
                    index += 1
            if index == 0:
                raise ValueError("the Ray dataset given to training has no rows")
            epoch, skip = epoch + 1, 0

    def rows_at(self, positions: Sequence[Position]) -> None:
        return None


@dataclass
class Batch:
    """A micro-batch on the CPU, ready for the model."""

    frames: torch.Tensor  # (b, 3, f, h, w) float in [-1, 1]; padded frames are 0 (paper: pad value 0)
    num_valid: torch.Tensor  # (b,) long: k keyframes of each clip, 3..8
    captions: list[str]
    sample_ids: list[str]
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
        image = Image.open(io.BytesIO(row["frames"][i])).convert("RGB")
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=2.0)
        frames.append(np.asarray(image))
    return np.stack(frames)


def collate(clips: list[tuple[dict[str, Any], np.ndarray]]) -> Batch:
    """Pad every clip to NUM_FRAMES frames and stack into (b, 3, f, h, w) in [-1, 1]."""
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
        static_difficulty=np.array([row["static_difficulty"] for row, _ in clips], dtype=np.float32),
    )


@dataclass
class _Pending:
    position: Position
    row: dict[str, Any]  # the row without its encoded frames
    clip: Future  # -> (k, r, r, 3) uint8


class ClipLoader:
    """Batches of clips from a shuffle buffer; a reader thread reads rows ahead and threads decode admitted rows.

    The curriculum acts where rows enter the buffer: each streamed row is admitted with probability equal to its
    weight (in (0, 1]), so early in training hard rows are mostly passed over for this epoch and easy ones fill
    the buffer; draws from the buffer are uniform. Weighting draws inside the buffer instead would only reorder
    about one buffer's worth of rows and hardly change the mix (docs/curriculum.md).

    Determinism: admission and refilling happen on the calling thread, always to the same buffer size, from a
    stream in a fixed order, with generators seeded by the position or the draw count. So the batches depend only
    on the seed and the stream position, never on thread timing, and `state_dict()` restores them exactly.
    """

    def __init__(self, rows: RowSource, config: DataConfig, resolution: int, seed: int, rank: int = 0):
        self.rows = rows
        self.config = config
        self.resolution = resolution
        self.seed = seed
        self.rank = rank
        self.next_position: Position = (0, 0)  # the next streamed row to be admitted or passed over
        self.draws = 0
        self.buffer: list[_Pending] = []
        self._restore: list[Position] = []
        self._executor: ThreadPoolExecutor | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- background reading and decoding -------------------------------------------------------------------------
    def _decode(self, position: Position, row: dict[str, Any]) -> _Pending:
        k = keyframe_count(self.seed, position)
        clip = self._executor.submit(decode_clip, row, k, self.resolution)
        return _Pending(position, {key: v for key, v in row.items() if key != "frames"}, clip)

    def _put(self, item: tuple[Position, dict[str, Any]] | BaseException) -> bool:
        """Queue `item` unless the loader is closing; False when it is."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read_ahead(self, start: Position) -> None:
        """Reader thread: rows in stream order -> the queue (bounded by the buffer size)."""
        try:
            for item in self.rows.iter_from(start):
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the training thread, which raises it
            self._put(error)

    def _start(self) -> None:
        self._executor = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="rdtf-decode")
        self._queue = queue.Queue(maxsize=self.config.shuffle_buffer)
        if self._restore:
            rows = self.rows.rows_at(self._restore)
            if rows is not None:
                self.buffer = [self._decode(p, r) for p, r in zip(self._restore, rows, strict=True)]
            self._restore = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_ahead, args=(self.next_position,), daemon=True)
        self._thread.start()

    def _admitted(self, position: Position, row: dict[str, Any], step: int, weigh: Weigh | None) -> bool:
        if weigh is None:
            return True
        weight = float(weigh([row["sample_id"]], np.array([row["static_difficulty"]], dtype=np.float32), step)[0])
        return np.random.default_rng([self.seed, self.rank, *position]).random() < weight

    def _fill(self, step: int, weigh: Weigh | None) -> None:
        while len(self.buffer) < self.config.shuffle_buffer:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            position, row = item
            self.next_position = (position[0], position[1] + 1)
            if self._admitted(position, row, step, weigh):
                self.buffer.append(self._decode(position, row))

    # --- the training thread ---------------------------------------------------------------------------------------
    def next_batch(self, size: int, step: int = 0, weigh: Weigh | None = None) -> Batch:
        """Admit streamed rows by `weigh` (the curriculum's sample weights) until the buffer is full, then draw
        `size` clips uniformly from it, waiting for their decoding."""
        if self._thread is None:
            self._start()
        self._fill(step, weigh)
        rng = np.random.default_rng([self.seed, self.rank, self.draws])
        self.draws += 1
        chosen = rng.choice(len(self.buffer), size=min(size, len(self.buffer)), replace=False)
        picked = [self.buffer[i] for i in chosen]
        for i in sorted(chosen, reverse=True):
            del self.buffer[i]
        return collate([(p.row, p.clip.result()) for p in picked])

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: the next row, the rows waiting in the buffer, and the draw count."""
        return {
            "next_position": self.next_position,
            "buffer": [p.position for p in self.buffer] or list(self._restore),
            "draws": self.draws,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.next_position = tuple(state["next_position"])
        self._restore = [tuple(p) for p in state["buffer"]]
        self.buffer = []
        self.draws = int(state["draws"])

    def close(self) -> None:
        """Stop the reader thread and the decoders; the loader can start again from its state."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
