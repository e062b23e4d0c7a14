"""A dataset's rows as a PyTorch `IterableDataset`: the torch-ready reader of `rdtf.open_dataset(...).torch()`.

For users who want the curated stickers in their own loop, not rdtf's trainer (which has its own curriculum-paced
loader in trainer/data.py). It streams record batches, so memory stays flat in the dataset's size, and splits the
rank's files among a DataLoader's workers, so every row is read once per pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from rdtf.schemas.frames import decode_frames

if TYPE_CHECKING:
    from rdtf.schemas.reader import DatasetReader

DEFAULT_COLUMNS = ("sample_id", "caption", "static_difficulty", "frames")


class StickerRows(IterableDataset):
    """Rows as dicts of python values and tensors: `frames` becomes a (f, h, w, 3) uint8 tensor, `clip_embedding`
    a float32 vector; other columns stay as Arrow gives them (str, float, list)."""

    def __init__(self, reader: DatasetReader, columns: tuple[str, ...], rank: int, world_size: int, batch_rows: int):
        self.reader = reader
        self.columns = list(columns)
        self.files = reader.rank_files(rank, world_size)
        self.batch_rows = batch_rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        files = self.files if worker is None else self.files[worker.id :: worker.num_workers]
        for batch in self.reader.batches_of(files, self.columns, self.batch_rows):
            for row in batch.to_pylist():
                yield {name: _tensor(name, value) for name, value in row.items()}


def _tensor(name: str, value: Any) -> Any:
    if name == "frames":
        return torch.from_numpy(decode_frames(value))
    if name == "clip_embedding" and value is not None:
        return torch.from_numpy(np.asarray(value, dtype=np.float32))
    return value
