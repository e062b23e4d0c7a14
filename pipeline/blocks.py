"""A Ray pass's input as Parquet blocks: cut by the driver from a stream of rows, read by Ray one block per task.

The driver never holds a pass's input: it streams the rows out of its workspace (pipeline/workspace.py) into Parquet
files, a row group per block, in the run's staging folder on the output's filesystem, which every worker of a
cluster reaches. A block is a task, and a task writes one shard, so a block holds at most `ray.rows_per_shard` rows.
Ray Data's own Parquet reader merges small files and row groups into larger blocks (Ray 2.60, measured), hence the
datasource here: one read task per block.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from functools import partial
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# Cut a pass into at least this many tasks per cluster CPU, so a few slow inputs (large stickers sort together)
# cannot leave CPUs idle at the end; measured on 299 stickers and 2 CPUs (docs/benchmarks.md).
TASKS_PER_CPU = 4
# Blocks (row groups) per file: the driver writes a file per block 10x slower (measured at 1 M inputs), and each
# read task reads its file's footer, which grows with the row groups.
BLOCKS_PER_FILE = 64


class Block(NamedTuple):
    """A pass's block: row group `row_group` of the Parquet file `path`."""

    path: str
    row_group: int


def block_rows(rows: int, rows_per_task: int, cpus: int) -> int:
    """Rows per block for a pass over `rows` inputs: at most `rows_per_task` (so a shard never holds more), and
    enough blocks to keep every CPU busy."""
    blocks = min(rows, max(math.ceil(rows / rows_per_task), TASKS_PER_CPU * cpus))
    return max(1, math.ceil(rows / max(blocks, 1)))


def write_blocks(rows: pa.RecordBatchReader, size: int, fs: pafs.FileSystem, folder: str) -> list[Block]:
    """The stream `rows` cut into blocks of `size` rows, one per task, written in order to Parquet files in `folder`
    (a row group each, BLOCKS_PER_FILE to a file); returns the blocks.

    The driver holds one block at a time: the pass reads its input from these files, never from the driver's
    memory. `folder` is on the output's filesystem, which every worker of the cluster reaches."""
    blocks: list[Block] = []
    writer: pq.ParquetWriter | None = None
    for block in cut(rows, size):
        group = len(blocks) % BLOCKS_PER_FILE
        if group == 0:
            if writer is None:
                fs.create_dir(folder, recursive=True)
            else:
                writer.close()
            path = f"{folder}/blocks-{len(blocks) // BLOCKS_PER_FILE:06d}.parquet"
            # Read once, whole row groups: no statistics or dictionaries to build (0.6x the CPU, measured).
            writer = pq.ParquetWriter(path, rows.schema, filesystem=fs, use_dictionary=False, write_statistics=False)
        writer.write_table(block, row_group_size=size)
        blocks.append(Block(path, group))
    if writer is not None:
        writer.close()
    return blocks


def cut(rows: pa.RecordBatchReader, size: int) -> Iterator[pa.Table]:
    """The stream `rows` as tables of `size` rows (the last one shorter), holding one at a time."""
    if size < 1:
        raise ValueError(f"blocks of {size} rows")
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in rows:
        held.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(held, rows.schema)
            yield table.slice(0, size)
            rest = table.slice(size)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held, rows.schema)


def _read_block(block: Block, fs: pafs.FileSystem) -> list[pa.Table]:
    with fs.open_input_file(block.path) as f:
        return [pq.ParquetFile(f).read_row_group(block.row_group)]


def read_blocks(blocks: list[Block], fs: pafs.FileSystem, ray_remote_args: dict | None = None) -> Any:
    """A Ray dataset of `blocks`, in order: one read task and one Ray block each. `ray_remote_args`: the read tasks'
    (pipeline.plan passes those of the tasks that take the blocks, so that Ray Data fuses the read into them)."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class BlockFiles(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
            return [
                ReadTask(partial(_read_block, block, fs), BlockMetadata(None, None, None, input_files=(block.path,)))
                for block in blocks
            ]

    with warnings.catch_warnings():  # max_retries has no named parameter; Ray 2.60 deprecates the remote args anyway
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ray.data.read_datasource(BlockFiles(), override_num_blocks=len(blocks), ray_remote_args=ray_remote_args)
