"""The preprocessing bookkeeping at a million inputs, against a plain pyarrow.dataset scan of the same files (issue 10).

    .venv/bin/python bench/scale.py --sizes 100000 300000 1000000 --out /tmp/scale

No decoding: a synthetic existing dataset (N rows in shards of --rows-per-shard, SAMPLE_SCHEMA with empty frames,
plus 5% rejects) and a manifest of N inputs, half of them already in the dataset, the other half new (1% of the new
ones with the bytes of an existing row). Each measurement runs in a fresh process, so its peak memory is its own:
- `plain`: `pyarrow.dataset.dataset(files).to_table(columns=["source_uri", "sample_id"])`, once;
- `bookkeeping`: what `rdtf preprocess` does around its Ray passes, with the same functions: discovery of the manifest,
  the ledger scan, changed inputs, the anti-join for what is still to do, duplicates against this run and the
  dataset, the driver's rejects, the passes' input blocks (Parquet files of the to-do list and of the main pass's
  input, as the run writes them for Ray to read), the main pass's summary rows, the scan after the run, the
  accounting check (URIs and sample ids) and the card's counts, all in the run's DuckDB workspace under
  --memory-mb (bookkeeping.memory_mb). The hash pass's output is made up (sample ids for the new inputs).
Reported: seconds and the process's peak resident memory above its baseline after imports, per size, as ratios to
`plain`, and a linear fit projected to 10 M and 100 M inputs. Results: docs/benchmarks.md, "Bookkeeping at scale".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from provenance import code_version, machine  # noqa: E402

from rdtf.pipeline.config import BookkeepingConfig  # noqa: E402


def sample_id(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def make(folder: Path, size: int, rows_per_shard: int) -> None:
    """The existing dataset (rows 0..size-1; every 20th input a reject) and the manifest (inputs size/2..3size/2)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rdtf.pipeline.write import write_table
    from rdtf.schemas.dataset import REJECT_SCHEMA, SAMPLE_SCHEMA
    from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout

    layout = DatasetLayout.at(str(folder / "dataset"))
    uri = "/data/stickers/{:08d}.gif".format
    for start in range(0, size, rows_per_shard):
        numbers = range(start, min(size, start + rows_per_shard))
        rows = [n for n in numbers if n % 20]
        rejects = [n for n in numbers if n % 20 == 0]
        count = len(rows)
        data = {
            "sample_id": [sample_id(n) for n in rows], "source_uri": [uri(n) for n in rows],
            "source_id": [None] * count, "source_version": [f"1000:{n}" for n in rows], "format": ["gif"] * count,
            "num_bytes": [1000] * count, "width": [64] * count, "height": [64] * count, "num_frames": [8] * count,
            "truncated": [False] * count, "frame_durations_ms": [[100] * 8] * count, "frames": [[]] * count,
            "frame_timestamps_ms": [[0]] * count, "frame_size": [256] * count, "keyframe_sets": [[[0, 0, 0]]] * count,
            "caption": ["a sticker"] * count, "caption_source": ["given"] * count, "spatial_entropy": [5.0] * count,
            "temporal_entropy": [1.0] * count, "static_difficulty": [0.5] * count,
            "clip_embedding": [None] * count, "clip_score": [None] * count, "tags": [None] * count,
        }  # fmt: skip
        write_table(layout, DATA_DIR, f"part-{start:09d}.parquet", pa.Table.from_pydict(data, SAMPLE_SCHEMA))
        if rejects:
            bad = {
                "source_uri": [uri(n) for n in rejects], "sample_id": [sample_id(n) for n in rejects],
                "source_version": [f"1000:{n}" for n in rejects], "stage": ["filter"] * len(rejects),
                "reason": ["low_entropy"] * len(rejects), "message": ["below 0.5 bits"] * len(rejects),
                "kept_sample_id": [None] * len(rejects),
            }  # fmt: skip
            write_table(layout, REJECTS_DIR, f"part-{start:09d}.parquet", pa.Table.from_pydict(bad, REJECT_SCHEMA))
    names = range(size // 2, size // 2 + size)
    manifest = pa.table({"path": [uri(n) for n in names], "caption": [f"sticker number {n}" for n in names]})
    pq.write_table(manifest, folder / "manifest.parquet")
    # What the hash pass's workers would hand back for the new inputs (size .. 3 size / 2): every 100th has the
    # bytes of an existing row.
    new = range(size, size // 2 + size)
    ids = [sample_id(n - size + 1 if n % 100 == 0 else n) for n in new]  # n - size + 1: a row, not a reject
    pq.write_table(pa.table({"source_uri": [uri(n) for n in new], "sample_id": ids}), folder / "hashed.parquet")


def plain(folder: Path) -> dict:
    import pyarrow.dataset as pads

    files = sorted(str(p) for kind in ("data", "rejects") for p in (folder / "dataset" / kind).glob("*.parquet"))
    table = pads.dataset(files, format="parquet").to_table(columns=["source_uri", "sample_id"])
    return {"rows": table.num_rows}


def bookkeeping(folder: Path, rows_per_shard: int, memory_mb: int) -> dict:
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rdtf.pipeline import ledger
    from rdtf.pipeline.blocks import block_rows, cut, write_blocks
    from rdtf.pipeline.card import count_outputs
    from rdtf.pipeline.config import BookkeepingConfig, InputConfig
    from rdtf.pipeline.dedupe import duplicates
    from rdtf.pipeline.discover import discover
    from rdtf.pipeline.runner import EARLY_REJECTS, HASH_OUTPUT, HASH_ROWS_PER_TASK, RESULTS, WORK
    from rdtf.pipeline.stage import NOT_DONE
    from rdtf.pipeline.workspace import Workspace
    from rdtf.schemas.layout import DATA_DIR, DatasetLayout

    layout = DatasetLayout.at(str(folder / "dataset"))
    blocks = folder / "blocks"  # where a run writes its passes' input (its staging folder); kept out of the dataset
    shutil.rmtree(blocks, ignore_errors=True)
    cpus = 2  # the block count of a 2-CPU cluster; it matters only below 8 x rows_per_shard inputs
    with Workspace(BookkeepingConfig(memory_mb=memory_mb)) as ws:
        inputs = discover([str(folder / "manifest.parquet")], InputConfig(), ws)
        ledger.load(ws, layout)
        changed = ledger.changed(ws)
        ws.create("todo", ledger.TODO)
        todo = ws.count("SELECT * FROM todo")
        size = block_rows(todo, HASH_ROWS_PER_TASK, cpus)
        hash_blocks = write_blocks(ws.reader("SELECT source_uri FROM todo ORDER BY source_uri"), size, layout.fs,
                                   str(blocks / "hash"))  # fmt: skip
        # The hash pass's output, made up (in `make`), added batch by batch as the pass's batches would be.
        with ws.appender("hashed", HASH_OUTPUT) as hashed:
            for batch in pq.ParquetFile(folder / "hashed.parquet").iter_batches(HASH_ROWS_PER_TASK):
                n = batch.num_rows
                made_up = {"source_uri": batch["source_uri"], "sample_id": batch["sample_id"],
                           "num_bytes": pa.array([1000] * n, pa.int64()),
                           **{c: pa.nulls(n, pa.string()) for c in HASH_OUTPUT.names[3:]}}  # fmt: skip
                hashed.add(pa.table(made_up, schema=HASH_OUTPUT))
        readable = "SELECT * FROM hashed WHERE reject_reason IS NULL"
        ws.create("duplicates", duplicates(readable, "SELECT source_uri, sample_id FROM ledger WHERE reason IS NULL"))
        early = ws.reader(f"{EARLY_REJECTS} ORDER BY source_uri", not_done=NOT_DONE)
        early_rejects = sum(shard.num_rows for shard in cut(early, rows_per_shard))  # written by a run; counted here
        work = ws.count(WORK)
        main_blocks = write_blocks(ws.reader(f"{WORK} ORDER BY source_uri"), block_rows(work, rows_per_shard, cpus),
                                   layout.fs, str(blocks / "main"))  # fmt: skip
        # The main pass's summary rows, one batch per block, as they come back to a run's driver: all written.
        with ws.appender("results", RESULTS) as results:
            for path in dict.fromkeys(block.path for block in main_blocks):
                file = pq.ParquetFile(path)
                for group in range(file.num_row_groups):
                    uris = file.read_row_group(group, columns=["source_uri"])["source_uri"]
                    results.add(pa.table({"source_uri": uris, "reject_reason": pa.nulls(len(uris), pa.string())}))
        # After the run: its own files are scanned. The run wrote none here, so as many existing files as it would
        # have written are scanned instead (into a table of their own: timing only), and the check counts the
        # inputs still to do as not done.
        written = layout.parquet_files(DATA_DIR)[: len(main_blocks)]
        ledger.load(ws, layout, written, [], table="scanned_after", ours=True)
        ws.create("not_done", "SELECT source_uri FROM todo")
        ledger.check_accounting(ws, "SELECT source_uri FROM not_done")
        counts = count_outputs(*ledger.counts(ws), layout)
        dupes = ws.count("SELECT * FROM duplicates")
        disk = sum(p.stat().st_size for p in Path(ws.folder).rglob("*") if p.is_file())
    shutil.rmtree(blocks, ignore_errors=True)
    return {"inputs": inputs, "todo": todo, "changed": len(changed), "hash_blocks": len(hash_blocks),
            "duplicates": dupes, "early_rejects": early_rejects, "main_pass_rows": work,
            "main_blocks": len(main_blocks), "rows": counts["rows"], "workspace_bytes": disk}  # fmt: skip


def measure(kind: str, folder: Path, rows_per_shard: int, memory_mb: int) -> dict:
    """Run `kind` in this process: seconds and peak RSS above the baseline after imports."""
    import pyarrow  # noqa: F401  the baseline includes the libraries both kinds load

    import rdtf.pipeline.runner  # noqa: F401

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    result = plain(folder) if kind == "plain" else bookkeeping(folder, rows_per_shard, memory_mb)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result | {"seconds": seconds, "peak_bytes": peak - base}


def fresh(kind: str, folder: Path, rows_per_shard: int, memory_mb: int) -> dict:
    command = [sys.executable, __file__, "--measure", kind, "--out", str(folder)]
    command += ["--rows-per-shard", str(rows_per_shard), "--memory-mb", str(memory_mb)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def project(sizes: list[int], results: list[dict], kind: str, measure: str, size: int) -> float:
    """`measure` of `kind` at `size` inputs, by a least-squares line through the measured sizes."""
    values = [r[kind][measure] for r in results]
    mean_x, mean_y = sum(sizes) / len(sizes), sum(values) / len(values)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, values, strict=True))
    slope /= sum((x - mean_x) ** 2 for x in sizes)
    return mean_y + slope * (size - mean_x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--rows-per-shard", type=int, default=128, help="rows per Parquet file, as rdtf writes (128)")
    parser.add_argument("--out", type=Path, required=True, help="work folder (datasets are kept for re-runs)")
    parser.add_argument("--memory-mb", type=int, default=BookkeepingConfig.memory_mb, help="bookkeeping.memory_mb")
    parser.add_argument("--measure", choices=["plain", "bookkeeping"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.out, args.rows_per_shard, args.memory_mb)))
        return 0
    results = []
    for size in args.sizes:
        folder = args.out / f"n{size}"
        if not (folder / "hashed.parquet").is_file():
            started = time.perf_counter()
            make(folder, size, args.rows_per_shard)
            print(f"made {size} rows in {time.perf_counter() - started:.0f} s", flush=True)
        measured = {kind: fresh(kind, folder, args.rows_per_shard, args.memory_mb) for kind in ("plain", "bookkeeping")}
        results.append({"size": size} | measured)
        print(json.dumps(results[-1]), flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"machine: {machine('no GPU')}; code: {code_version()}; {stamp}; bookkeeping.memory_mb {args.memory_mb}",
        "",
    ]
    lines += ["| inputs | plain scan | bookkeeping | ratio | plain peak | bookkeeping peak | ratio |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in results:
        p, b = r["plain"], r["bookkeeping"]
        time_ratio, memory_ratio = b["seconds"] / p["seconds"], b["peak_bytes"] / max(p["peak_bytes"], 1)
        lines.append(
            f"| {r['size']:,} | {p['seconds']:.2f} s | {b['seconds']:.2f} s | {time_ratio:.2f}x "
            f"| {p['peak_bytes'] / 2**20:.0f} MiB | {b['peak_bytes'] / 2**20:.0f} MiB | {memory_ratio:.2f}x |"
        )
    if len(results) > 1:
        sizes = [r["size"] for r in results]
        lines += [
            "",
            "| projected inputs | plain scan | bookkeeping | plain peak | bookkeeping peak |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {n:,} | "
            + " | ".join(f"{project(sizes, results, kind, 'seconds', n):.0f} s" for kind in ("plain", "bookkeeping"))
            + " | "
            + " | ".join(
                f"{project(sizes, results, kind, 'peak_bytes', n) / 2**30:.1f} GiB" for kind in ("plain", "bookkeeping")
            )
            + " |"
            for n in (10_000_000, 100_000_000)
        ]
    text = "\n".join(lines)
    print("\n" + text)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
