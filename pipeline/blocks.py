"""A Ray pass's input as Parquet blocks: cut by the driver from a stream of rows, read by Ray one block per task.

The driver never holds a pass's input: it streams the rows out of its workspace (pipeline/workspace.py) into files of
a block each, in the run's staging folder on the output's filesystem, which every worker of a cluster reaches. A
block is a task, and a task writes one shard, so a block holds at most `ray.rows_per_shard` rows. Ray Data's own
Parquet reader groups small files into one block (Ray 2.60, measured), hence the datasource here.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# Cut a pass into at least this many tasks per cluster CPU, so a few slow inputs (large stickers sort together)
# cannot leave CPUs idle at the end; measured on 299 stickers and 2 CPUs (docs/benchmarks.md).
TASKS_PER_CPU = 4
WRITE_THREADS = 16  # block files the driver writes at once (each a request on an object store)


def block_rows(rows: int, rows_per_task: int, cpus: int) -> int:
    """Rows per block for a pass over `rows` inputs: at most `rows_per_task` (so a shard never holds more), and
    enough blocks to keep every CPU busy."""
    blocks = min(rows, max(math.ceil(rows / rows_per_task), TASKS_PER_CPU * cpus))
    return max(1, math.ceil(rows / max(blocks, 1)))


def write_blocks(rows: pa.RecordBatchReader, size: int, fs: pafs.FileSystem, folder: str) -> list[str]:
    """The stream `rows` cut into Parquet files of `size` rows in `folder`, one per task, named in order; their paths.

    The driver holds one block at a time: the pass reads its input from these files, never from the driver's
    memory. `folder` is on the output's filesystem, which every worker of the cluster reaches; the files are
    written a few at a time, since an object store answers each request slowly."""
    paths: list[str] = []
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        for block in cut(rows, size):
            if not paths:
                fs.create_dir(folder, recursive=True)
            path = f"{folder}/block-{len(paths):08d}.parquet"
            pending.append(pool.submit(pq.write_table, block, path, filesystem=fs))
            paths.append(path)
            if len(pending) >= 2 * WRITE_THREADS:  # a bounded number of blocks in flight
                pending.popleft().result()
        for done in pending:
            done.result()
    return paths


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


def _read_block(path: str, fs: pafs.FileSystem) -> list[pa.Table]:
    return [pq.read_table(path, filesystem=fs)]


def read_blocks(paths: list[str], fs: pafs.FileSystem) -> Any:
    """A Ray dataset of the files `paths`, in order: one read task and one block per file."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class BlockFiles(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
            return [
                ReadTask(partial(_read_block, path, fs), BlockMetadata(None, None, None, input_files=(path,)))
                for path in paths
            ]

    return ray.data.read_datasource(BlockFiles(), override_num_blocks=len(paths))
