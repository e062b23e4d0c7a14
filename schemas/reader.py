"""The one way to open a curated dataset: checks the schema version, then reads rows, rejects or rank shards.

>>> ds = open_dataset("out/stickers")
>>> ds.num_rows, ds.card["counts"]
>>> for batch in ds.iter_batches(columns=["sample_id", "frames"], rank=0, world_size=2): ...
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rdtf.schemas.dataset import READ_MAJORS, REJECT_SCHEMA, SAMPLE_SCHEMA, SCHEMA_VERSION, VERSION_KEY
from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout

FOOTER_THREADS = 32  # footers read at once: on an object store each is a round trip, and a dataset has thousands


class SchemaVersionError(ValueError):
    """A dataset file was written with a schema version this rdtf cannot read."""


def _major(version: str) -> str:
    return version.split(".")[0]


def footers(fs, paths: tuple[str, ...]) -> list[pq.FileMetaData]:
    """Every file's Parquet footer (row count, key-value metadata), FOOTER_THREADS files at a time, in order."""
    if not paths:
        return []
    with ThreadPoolExecutor(min(FOOTER_THREADS, len(paths))) as pool:
        return list(pool.map(lambda path: pq.read_metadata(path, filesystem=fs), paths))


def check_metadata(metadata: dict[bytes, bytes] | None, path: str) -> None:
    """Raise SchemaVersionError unless a file's footer metadata (read once, by `footers` or a scan) has a major
    schema version this rdtf reads."""
    found = (metadata or {}).get(VERSION_KEY, b"").decode() or "none"
    if _major(found) not in READ_MAJORS:
        raise SchemaVersionError(
            f"{path} has schema version {found}, but this rdtf reads versions {', '.join(READ_MAJORS)}.x "
            f"(it writes {SCHEMA_VERSION}). "
            f"Re-run `rdtf preprocess` with this version to rebuild the dataset, "
            f"or install the rdtf version that wrote it (see its card.json, `software_version`)."
        )


@dataclass(frozen=True)
class DatasetReader:
    """A dataset opened for reading. Files are sorted by name, so every process sees the same order."""

    layout: DatasetLayout
    sample_files: tuple[str, ...]
    reject_files: tuple[str, ...]

    @cached_property
    def card(self) -> dict:
        """The dataset card (counts, config, versions); empty while a job has not finished once."""
        return self.layout.read_card() or {}

    def _dataset(self, files: tuple[str, ...], schema: pa.Schema) -> pads.Dataset:
        return pads.dataset(list(files), schema=schema, format="parquet", filesystem=self.layout.fs)

    @property
    def num_rows(self) -> int:
        return sum(footer.num_rows for footer in footers(self.layout.fs, self.sample_files))

    def read(self, columns: list[str] | None = None, filter: pads.Expression | None = None) -> pa.Table:
        """All sample rows (or the named columns) in one table. For small datasets and metadata columns."""
        return self._dataset(self.sample_files, SAMPLE_SCHEMA).to_table(columns=columns, filter=filter)

    def rejects(self) -> pa.Table:
        """Every reject row: source_uri, sample_id, stage, reason, message, kept_sample_id."""
        return self._dataset(self.reject_files, REJECT_SCHEMA).to_table()

    def rank_files(self, rank: int, world_size: int) -> tuple[str, ...]:
        """The files that rank `rank` of `world_size` reads: every world_size-th file, so ranks never overlap."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        return self.sample_files[rank::world_size]

    def iter_batches(
        self,
        columns: list[str] | None = None,
        batch_size: int = 64,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[pa.RecordBatch]:
        """Stream this rank's rows in file order, without loading the dataset into memory."""
        yield from self.batches_of(self.rank_files(rank, world_size), columns, batch_size)

    def batches_of(
        self, files: tuple[str, ...], columns: list[str] | None = None, batch_size: int = 64
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows of `files` (some of sample_files) in file order."""
        yield from self._dataset(files, SAMPLE_SCHEMA).to_batches(columns=columns, batch_size=batch_size)

    def to_pandas(self, columns: list[str] | None = None, filter: pads.Expression | None = None):
        """`read(...)` as a pandas DataFrame; name the columns you need (frames are encoded bytes, and large)."""
        return self.read(columns, filter).to_pandas()

    def torch(
        self,
        columns: tuple[str, ...] | None = None,
        rank: int = 0,
        world_size: int = 1,
        batch_rows: int = 64,
    ):
        """This rank's rows as a PyTorch IterableDataset of dicts, frames decoded to (f, h, w, 3) uint8 tensors.

        Torch is imported here only, so reading a dataset's metadata does not need it. rdtf's trainer has its own
        loader (trainer/data.py); this is for a user's own loop.
        """
        from rdtf.schemas.torch_rows import DEFAULT_COLUMNS, StickerRows

        return StickerRows(self, tuple(columns or DEFAULT_COLUMNS), rank, world_size, batch_rows)


def open_dataset(uri: str) -> DatasetReader:
    """Open the dataset at `uri` (a folder written by `rdtf preprocess`), checking every file's schema version."""
    layout = DatasetLayout.at(uri)
    samples = tuple(layout.parquet_files(DATA_DIR))
    rejects = tuple(layout.parquet_files(REJECTS_DIR))
    if not samples and not rejects and layout.read_card() is None:
        raise FileNotFoundError(f"{uri} is not an rdtf dataset: no {DATA_DIR}/, {REJECTS_DIR}/ or card.json in it")
    files = samples + rejects
    for path, footer in zip(files, footers(layout.fs, files), strict=True):
        check_metadata(footer.metadata, path)
    return DatasetReader(layout, samples, rejects)
