"""`rdtf query` at a million rows, against pandas on the same files in the same run (issue 13).

    .venv/bin/python bench/query.py --rows 1000000 --out /tmp/query-bench

A synthetic dataset of --rows rows in SAMPLE_SCHEMA (metadata drawn at random, a 512-d float16 unit-norm CLIP
embedding per row around one of CONCEPTS random directions, as real stickers share themes; no frames), in shards
of 50,000 rows, and four filter/aggregate queries of the kind users ask:
each through `schemas.query` (DuckDB over the dataset's pyarrow views, what `rdtf query` runs) and through pandas,
both from the Parquet files, each timed as the median of --repeats runs:
- `pandas full scan`: `pandas.read_parquet` of the whole dataset, then the query in pandas (the baseline the issue
  names: what a user without rdtf writes);
- `pandas, columns`: the same, reading only the columns the query needs (a careful user).
Reported: seconds per query and the ratios; the results of both paths are checked equal.

Then search: the index `rdtf search` builds (jobs/search_index.py; its build time and size), and the top-20 search
of 20 queries (a row's embedding plus noise, unit norm) through it, against brute-force numpy over the same
embeddings held in memory as one float32 matrix (`matrix @ q`, then `argpartition`), with the index's recall@20
against that exact answer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from provenance import code_version, machine  # noqa: E402

SHARD_ROWS = 50_000
DIM = 512
SOURCES = ("given", "coca", "tags")
CONCEPTS = 2000  # themes the synthetic embeddings cluster around (cosine about 0.8 to their theme)
SPREAD = 0.7  # the noise's norm against the unit theme direction


def make(folder: Path, rows: int, seed: int) -> None:
    """The synthetic dataset: data/part-NNNNN.parquet in SAMPLE_SCHEMA and a card."""
    import pyarrow as pa

    from rdtf.pipeline.card import make_card
    from rdtf.pipeline.write import write_table
    from rdtf.schemas.dataset import SAMPLE_SCHEMA
    from rdtf.schemas.layout import DATA_DIR, DatasetLayout

    layout = DatasetLayout.at(str(folder))
    rng = np.random.default_rng(seed)
    themes = rng.standard_normal((CONCEPTS, DIM)).astype(np.float32)
    themes /= np.linalg.norm(themes, axis=1, keepdims=True)
    for shard, start in enumerate(range(0, rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, rows - start)
        frames = rng.integers(3, 120, n).astype(np.int32)
        noise = rng.standard_normal((n, DIM)).astype(np.float32) * (SPREAD / np.sqrt(DIM))
        embedding = themes[rng.integers(0, CONCEPTS, n)] + noise
        embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
        flat = pa.array(embedding.astype(np.float16).ravel())
        empty_lists = pa.array([[]] * n, pa.list_(pa.int32()))
        columns = {
            "sample_id": pa.array([f"{start + i:064x}" for i in range(n)]),
            "source_uri": pa.array([f"s3://stickers/{start + i:08d}.gif" for i in range(n)]),
            "source_id": pa.nulls(n, pa.string()),
            "source_version": pa.nulls(n, pa.string()),
            "format": pa.array(["gif"] * n),
            "num_bytes": pa.array(rng.integers(1_000, 2_000_000, n)),
            "width": pa.array(rng.integers(64, 512, n).astype(np.int32)),
            "height": pa.array(rng.integers(64, 512, n).astype(np.int32)),
            "num_frames": pa.array(frames),
            "truncated": pa.nulls(n, pa.bool_()),
            "frame_durations_ms": empty_lists,
            "frames": pa.array([[]] * n, pa.list_(pa.binary())),
            "frame_timestamps_ms": empty_lists,
            "frame_size": pa.array(np.full(n, 256, np.int32)),
            "keyframe_sets": pa.array([[]] * n, pa.list_(pa.list_(pa.int16()))),
            "caption": pa.array([f"sticker {i % 5000}" for i in range(start, start + n)]),
            "caption_source": pa.array(rng.choice(SOURCES, n, p=[0.6, 0.3, 0.1])),
            "spatial_entropy": pa.array(rng.uniform(0, 8, n).astype(np.float32)),
            "temporal_entropy": pa.array(rng.uniform(0, 8, n).astype(np.float32)),
            "static_difficulty": pa.array(rng.uniform(0, 1, n).astype(np.float32)),
            "clip_embedding": pa.FixedSizeListArray.from_arrays(flat, DIM).cast(pa.list_(pa.float16())),
            "clip_score": pa.array(rng.uniform(0.1, 0.4, n).astype(np.float32)),
            "tags": pa.nulls(n, pa.list_(pa.struct([("tag", pa.string()), ("score", pa.float32())]))),
        }
        table = pa.table(columns).cast(SAMPLE_SCHEMA)
        write_table(layout, DATA_DIR, f"part-{shard:05d}.parquet", table)
    counts = {"rows": rows, "rejects": 0, "inputs": rows, "rejects_by_reason": {}, "files": {}}
    layout.write_card(make_card({}, "complete", counts, None))


# name -> (SQL for rdtf query, columns pandas needs, the same in pandas)
QUERIES = {
    "count with two filters": (
        "SELECT count(*) AS n FROM stickers WHERE num_frames >= 8 AND caption_source = 'given'",
        ["num_frames", "caption_source"],
        lambda df: int(((df.num_frames >= 8) & (df.caption_source == "given")).sum()),
    ),
    "group by, three aggregates": (
        "SELECT caption_source, count(*) AS n, avg(static_difficulty) AS d, max(num_frames) AS f FROM stickers "
        "GROUP BY caption_source ORDER BY caption_source",
        ["caption_source", "static_difficulty", "num_frames"],
        lambda df: df.groupby("caption_source").agg(n=("num_frames", "size"), f=("num_frames", "max"))["n"].tolist(),
    ),
    "10,000 hardest (top-k)": (
        "SELECT sample_id FROM stickers ORDER BY static_difficulty DESC, sample_id LIMIT 10000",
        ["sample_id", "static_difficulty"],
        lambda df: sorted(
            df.sort_values(["static_difficulty", "sample_id"], ascending=[False, True]).sample_id.head(10000).tolist()
        ),  # fmt: skip
    ),
    "filtered histogram": (
        "SELECT num_frames // 10 AS b, count(*) AS n FROM stickers WHERE clip_score > 0.2 GROUP BY b ORDER BY b",
        ["num_frames", "clip_score"],
        lambda df: (df[df.clip_score > 0.2].num_frames // 10).value_counts().sort_index().tolist(),
    ),
}


def duckdb_answer(name: str, table) -> object:
    """The DuckDB result in the pandas lambda's shape, to check the two paths agree."""
    if name == "count with two filters":
        return table["n"][0].as_py()
    if name == "group by, three aggregates":
        return table["n"].to_pylist()
    if name == "10,000 hardest (top-k)":
        return sorted(table["sample_id"].to_pylist())
    return table["n"].to_pylist()


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def search_bench(reader, repeats: int) -> list[str]:
    """Markdown lines: the index's build and size, search time against numpy brute force, recall@20."""
    import faiss

    from rdtf.jobs.search_index import build

    start = time.perf_counter()
    index = build(reader, {"model": "synthetic", "weights": "random"})
    built = time.perf_counter() - start
    size = len(faiss.serialize_index(index.index)) / 2**20
    start = time.perf_counter()
    column = reader.read(columns=["clip_embedding"])["clip_embedding"].combine_chunks()
    matrix = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), -1)
    loaded = time.perf_counter() - start
    rng = np.random.default_rng(1)
    queries = matrix[rng.integers(0, len(matrix), 20)] + 0.05 * rng.standard_normal((20, matrix.shape[1]))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    ids = index.rows["sample_id"]
    ours, brute, recall = [], [], []
    for q in queries:
        t, found = timed(lambda q=q: index.search(q, 20)["sample_id"].to_pylist(), repeats)
        ours.append(t)
        t, exact = timed(lambda q=q: np.argpartition(-(matrix @ q), 20)[:20], repeats)
        brute.append(t)
        recall.append(len(set(found) & set(ids.take(exact).to_pylist())) / 20)
    a, b = statistics.median(ours), statistics.median(brute)
    return [
        "",
        f"search index: {index.meta['kind']} ({index.meta['clusters']} clusters, {index.meta['rows']} vectors of "
        f"{index.meta['dimension']}), built in {built:.0f} s, {size:.0f} MiB; the numpy baseline's matrix took "
        f"{loaded:.0f} s to read and holds {matrix.nbytes / 2**20:.0f} MiB",
        "",
        "| top-20 search | rdtf search index | numpy brute force | ratio | recall@20 |",
        "|---|---|---|---|---|",
        f"| median of 20 queries | {a * 1000:.1f} ms | {b * 1000:.1f} ms | {b / a:.0f}x | "
        f"{statistics.fmean(recall):.3f} (min {min(recall):.2f}) |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True, help="where the synthetic dataset is written (reused)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-queries", action="store_true", help="only the search part")
    args = parser.parse_args(argv)
    import pandas as pd

    from rdtf.schemas.query import connect
    from rdtf.schemas.reader import open_dataset

    folder = args.out / f"rows{args.rows}"
    if not (folder / "card.json").is_file():
        start = time.perf_counter()
        make(folder, args.rows, args.seed)
        print(f"made {args.rows} rows in {time.perf_counter() - start:.0f} s", flush=True)
    reader = open_dataset(str(folder))
    files = list(reader.sample_files)
    size = sum(Path(f).stat().st_size for f in files) / 2**20
    print(f"machine: {machine()}; code: {code_version()}; {args.rows} rows in {len(files)} files, {size:.0f} MiB")
    lines = ["| query | rdtf query (DuckDB) | pandas full scan | ratio | pandas, columns | ratio |", "|---" * 6 + "|"]
    for name, (sql, columns, in_pandas) in ({} if args.skip_queries else QUERIES).items():
        con = connect(reader)
        ours, table = timed(lambda sql=sql, con=con: con.sql(sql).to_arrow_table(), args.repeats)
        full, expected = timed(lambda f=in_pandas: f(pd.read_parquet(files)), 1)
        read_columns = lambda f=in_pandas, c=columns: f(pd.read_parquet(files, columns=c))  # noqa: E731
        pruned, expected_pruned = timed(read_columns, args.repeats)
        got = duckdb_answer(name, table)
        if got != expected or got != expected_pruned:
            raise SystemExit(f"{name}: DuckDB and pandas disagree ({str(got)[:80]} vs {str(expected)[:80]})")
        lines.append(f"| {name} | {ours:.3f} s | {full:.2f} s | {full / ours:.0f}x | {pruned:.3f} s | "
                     f"{pruned / ours:.1f}x |")  # fmt: skip
        print(lines[-1], flush=True)
    lines += search_bench(reader, args.repeats)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
