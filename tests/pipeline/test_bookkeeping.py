"""The bookkeeping around the passes (DuckDB workspace): duplicates across runs, changed inputs, transient reads, the
ledger, the accounting check, and the passes' input read from Parquet blocks, never held on the driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import rdtf.pipeline.ledger as ledger_module
import rdtf.pipeline.read_bytes as read_bytes_module
import rdtf.pipeline.runner as runner_module
from rdtf.jobs.corpus import make_corpus
from rdtf.pipeline.card import count_outputs
from rdtf.pipeline.config import BookkeepingConfig, PreprocessConfig, RayConfig
from rdtf.pipeline.dedupe import duplicates
from rdtf.pipeline.hash_inputs import HashStage
from rdtf.pipeline.ledger import LEDGER_SCHEMA, counts, scan
from rdtf.pipeline.read_bytes import ATTEMPTS, read_input
from rdtf.pipeline.runner import run_preprocess
from rdtf.pipeline.stage import NOT_DONE, NotDone, Reject
from rdtf.pipeline.workspace import PREFIX, Workspace
from rdtf.pipeline.write import ShardWriter, reject_rows
from rdtf.schemas import SchemaVersionError, open_dataset
from rdtf.schemas.layout import DatasetLayout


def _config() -> PreprocessConfig:
    return PreprocessConfig(ray=RayConfig(num_cpus=2, rows_per_shard=4, object_store_mb=256))


@pytest.fixture(scope="module")
def stickers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stickers")
    make_corpus(str(folder), count=6)
    return folder


def _copy(stickers: Path, folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(stickers / name, folder / name)
    return folder


def _by_uri(out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    reader = open_dataset(str(out))
    rows = {r["source_uri"]: r for r in reader.read(columns=["source_uri", "sample_id", "source_version"]).to_pylist()}
    return rows, {r["source_uri"]: r for r in reader.rejects().to_pylist()}


# -- units -----------------------------------------------------------------------------------------------------------


def test_a_new_copy_of_a_row_already_in_the_dataset_is_its_duplicate() -> None:
    with Workspace() as ws:
        ws.load("existing", pa.table({"source_uri": ["/z/old.gif"], "sample_id": ["s1"]}))
        ws.load(
            "new", pa.table({"source_uri": ["/a/copy.gif", "/b/x.gif", "/c/x.gif"], "sample_id": ["s1", "s2", "s2"]})
        )
        query = f"SELECT source_uri, kept_uri FROM ({duplicates('SELECT * FROM new', 'SELECT * FROM existing')})"
        found = ws.sql(f"{query} ORDER BY source_uri").to_arrow_table().to_pylist()
    # the existing row stays kept although its URI sorts last; among new inputs the smallest URI is kept
    assert found == [
        {"source_uri": "/a/copy.gif", "kept_uri": "/z/old.gif"},
        {"source_uri": "/c/x.gif", "kept_uri": "/b/x.gif"},
    ]


def test_the_card_counts_rows_and_rejects_by_reason_from_the_ledger(tmp_path: Path) -> None:
    reasons = [None, "duplicate", "low_entropy", None, "duplicate"]
    ledger = pa.table(
        {
            "source_uri": [f"/in/{n}.gif" for n in range(5)],
            "sample_id": [f"s{n}" for n in range(5)],
            "source_version": pa.nulls(5, pa.string()),
            "reason": reasons,
        },
        schema=LEDGER_SCHEMA,
    )
    with Workspace() as ws:
        ws.load("ledger", ledger)
        rows, by_reason = counts(ws)
    assert rows == 2 and by_reason == {"duplicate": 2, "low_entropy": 1}
    card = count_outputs(rows, by_reason, DatasetLayout.at(str(tmp_path)))
    assert (
        card["rejects"] == 3 and card["inputs"] == 5 and list(card["rejects_by_reason"]) == ["duplicate", "low_entropy"]
    )


class _Flaky(pafs.FileSystemHandler):
    """A local filesystem whose first `failures` opens raise `error` (a throttled or dropped connection)."""

    def __init__(self, failures: int, error: Exception):
        self.local, self.failures, self.error, self.opens = pafs.LocalFileSystem(), failures, error, 0

    def open_input_stream(self, path):
        self.opens += 1
        if self.opens <= self.failures:
            raise self.error
        return self.local.open_input_stream(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_type_name(self):
        return "flaky"


# The rest of the FileSystemHandler interface is never called here.
_Flaky.__abstractmethods__ = frozenset()


@pytest.fixture()
def flaky(monkeypatch: pytest.MonkeyPatch):
    """Make read_input read through a _Flaky filesystem, without waiting between attempts."""

    def install(failures: int, error: Exception) -> _Flaky:
        handler = _Flaky(failures, error)
        monkeypatch.setattr(read_bytes_module, "resolve", lambda uri: (pafs.PyFileSystem(handler), uri))
        monkeypatch.setattr(read_bytes_module, "BACKOFF_S", 0.0)
        return handler

    return install


def test_a_transient_read_error_is_retried_and_recovers(stickers: Path, flaky) -> None:
    handler = flaky(ATTEMPTS - 1, ConnectionResetError("connection reset by peer"))
    data, version = read_input(str(stickers / "sticker_000.gif"), 10**7)
    assert data == (stickers / "sticker_000.gif").read_bytes() and handler.opens == ATTEMPTS
    assert version == f"{len(data)}:{(stickers / 'sticker_000.gif').stat().st_mtime_ns}"


def test_a_read_error_that_persists_leaves_the_input_not_done(stickers: Path, flaky) -> None:
    flaky(ATTEMPTS, OSError("AWS Error SLOW_DOWN during GetObject operation"))
    with pytest.raises(NotDone, match="the next run retries it"):
        read_input(str(stickers / "sticker_000.gif"), 10**7)
    flaky(ATTEMPTS, OSError("AWS Error SLOW_DOWN during GetObject operation"))
    batch = HashStage(10**7)({"source_uri": [str(stickers / "sticker_000.gif")]})
    assert batch["reject_reason"] == [NOT_DONE]
    assert reject_rows(batch) == []  # written nowhere: neither a row nor a reject
    sink = ShardWriter(str(stickers / "out"), 32, "run")
    assert sink({**batch, "caption": [None], "source_id": [None]})["shard"] == [None]


def test_a_permanent_read_error_is_a_reject_at_once(stickers: Path, flaky) -> None:
    handler = flaky(ATTEMPTS, PermissionError("permission denied"))
    with pytest.raises(Reject) as raised:
        read_input(str(stickers / "sticker_000.gif"), 10**7)
    assert raised.value.reason == "unreadable" and handler.opens == 1


def test_a_read_past_the_size_limit_stops_there(stickers: Path) -> None:
    with pytest.raises(Reject) as raised:
        read_input(str(stickers / "sticker_000.gif"), 10)
    assert raised.value.reason == "file_too_large"


# -- end to end ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_later_run_never_writes_a_second_row_of_a_sample(stickers: Path, tmp_path: Path) -> None:
    first = _copy(stickers, tmp_path / "z_first", ["sticker_000.gif", "sticker_001.gif"])
    second = _copy(stickers, tmp_path / "a_second", ["sticker_000.gif", "sticker_002.gif"])  # sorts before first
    out = tmp_path / "dataset"
    run_preprocess([str(first)], str(out), _config(), show_progress=False)
    summary = run_preprocess([str(second)], str(out), _config(), show_progress=False)
    rows, rejects = _by_uri(out)
    copy = str(second / "sticker_000.gif")
    assert copy not in rows and rejects[copy]["reason"] == "duplicate"
    assert rejects[copy]["kept_sample_id"] == rows[str(first / "sticker_000.gif")]["sample_id"]
    assert len({r["sample_id"] for r in rows.values()}) == len(rows) == 3
    assert summary.rejected["duplicate"] == 1 and summary.written == 1


@pytest.mark.slow
def test_an_input_replaced_in_place_is_redone_and_its_old_row_replaced(stickers: Path, tmp_path: Path) -> None:
    folder = _copy(stickers, tmp_path / "in", ["sticker_000.gif", "sticker_001.gif", "sticker_002.gif"])
    out = tmp_path / "dataset"
    run_preprocess([str(folder)], str(out), _config(), show_progress=False)
    before, _ = _by_uri(out)
    target = folder / "sticker_001.gif"
    shutil.copy(stickers / "sticker_003.webp", target)  # new bytes under the same name
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    summary = run_preprocess([str(folder)], str(out), _config(), show_progress=False)
    after, rejects = _by_uri(out)
    assert summary.changed == 1 and summary.already_done == 2 and summary.written == 1
    assert set(after) == set(before) and not rejects
    assert after[str(target)]["sample_id"] != before[str(target)]["sample_id"]
    assert after[str(target)]["source_version"] == f"{target.stat().st_size}:{target.stat().st_mtime_ns}"
    unchanged = str(folder / "sticker_000.gif")
    assert after[unchanged] == before[unchanged]
    again = run_preprocess([str(folder)], str(out), _config(), show_progress=False)
    assert again.changed == 0 and again.already_done == 3 and again.written == 0
    assert scan(DatasetLayout.at(str(out))).num_rows == 3


def test_the_workspace_honours_its_memory_limit_and_spills_past_it(tmp_path: Path) -> None:
    cfg = BookkeepingConfig(memory_mb=64, threads=1, temp_dir=str(tmp_path))
    with Workspace(cfg) as ws:
        assert ws.sql("SELECT current_setting('memory_limit')").fetchall() == [("64.0 MiB",)]
        assert ws.sql("SELECT current_setting('threads')").fetchall() == [(1,)]
    with Workspace(BookkeepingConfig(memory_mb=64, temp_dir=str(tmp_path))) as ws:  # no more than a thread per 128 MiB
        assert ws.sql("SELECT current_setting('threads')").fetchall() == [(1,)]
    with Workspace(cfg) as ws:
        assert ws.folder.startswith(str(tmp_path))
        # A group-by whose hash table is several times the limit: it completes by spilling to the folder.
        rows = 2_000_000
        ws.create("big", f"SELECT range AS n, md5(range::VARCHAR) AS uri FROM range({rows})")
        assert ws.count("SELECT uri FROM big GROUP BY uri") == rows
        assert ws.count("SELECT * FROM big ANTI JOIN (SELECT uri FROM big WHERE n % 2 = 0) USING (uri)") == rows // 2
        folder = ws.folder
    assert not os.path.exists(folder)  # closed: database and spill files gone


def _accounting(ws: Workspace, inputs: list[str], entries: list[tuple[str, str]], pending: list[str]) -> None:
    ws.load("inputs", pa.table({"source_uri": inputs}))
    rows = pa.table({"source_uri": [u for u, _ in entries], "sample_id": [i for _, i in entries]})
    ws.load("ledger", rows, columns="*, NULL::VARCHAR AS source_version, NULL::VARCHAR AS reason")
    ws.load("pending", pa.table({"source_uri": pa.array(pending, pa.string())}))
    ledger_module.check_accounting(ws, "SELECT source_uri FROM pending")


def test_the_accounting_check_names_inputs_missing_or_twice_and_shared_sample_ids() -> None:
    with Workspace() as ws:
        # every input once or still to do; an entry of an earlier run's input (not named now) is not counted
        _accounting(ws, ["/a", "/b", "/c"], [("/a", "1"), ("/b", "2"), ("/old", "3")], pending=["/c"])
        with pytest.raises(RuntimeError, match=r"1 inputs missing \(e.g. \['/c'\]\), 0 present more than once"):
            _accounting(ws, ["/a", "/b", "/c"], [("/a", "1"), ("/b", "2")], pending=[])
        with pytest.raises(RuntimeError, match=r"0 inputs missing .* 1 present more than once \(e.g. \['/b'\]\)"):
            _accounting(ws, ["/a", "/b"], [("/a", "1"), ("/b", "2"), ("/b", "3")], pending=["/b"])
        with pytest.raises(RuntimeError, match=r"0 present more than once .* 1 sample ids on more than one row"):
            _accounting(ws, ["/a", "/b"], [("/a", "1"), ("/b", "1")], pending=[])


def test_the_accounting_check_fits_the_smallest_memory_limit_at_millions_of_inputs(tmp_path: Path) -> None:
    """The check once joined the ledger with the inputs, which ran out of memory past the limit (here: 2 M inputs,
    half of them in a 2 M-row dataset, under 64 MiB; 3 M under 128 MiB in bench/scale.py); one group-by spills."""
    cfg = BookkeepingConfig(memory_mb=64, threads=1, temp_dir=str(tmp_path))
    n, uri = 2_000_000, "'/in/' || md5(range::VARCHAR) || '.gif' AS source_uri"
    with Workspace(cfg) as ws:
        ws.create("inputs", f"SELECT {uri} FROM range({n // 2}, {n + n // 2})")  # the second half is new
        ws.create("ledger", f"SELECT {uri}, md5(range::VARCHAR) AS sample_id, NULL AS source_version, NULL AS reason "
                            f"FROM range({n})")  # fmt: skip
        ledger_module.check_accounting(ws, f"SELECT {uri} FROM range({n}, {n + n // 2})")  # the new: still to do
        with pytest.raises(RuntimeError, match="1000000 inputs missing"):
            ledger_module.check_accounting(ws, "SELECT source_uri FROM inputs WHERE false")


def test_a_workspace_left_by_a_killed_run_is_deleted_by_the_next_one(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{PREFIX}{int(finished.stdout)}-abc"  # a run whose process is gone
    live = tmp_path / f"{PREFIX}{os.getpid()}-def"  # a run of a live process (this one)
    other = tmp_path / "someone-elses"
    for folder in (dead, live, other):
        (folder / "spill").mkdir(parents=True)
    with Workspace(BookkeepingConfig(temp_dir=str(tmp_path))) as ws:
        assert Path(ws.folder).name.startswith(f"{PREFIX}{os.getpid()}-")
    assert not dead.exists() and live.exists() and other.exists()


@pytest.mark.slow
def test_a_pass_reads_its_input_from_parquet_blocks_never_from_the_driver(
    stickers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray.data

    def refused(*args, **kwargs):
        raise AssertionError("a pass's input was put into Ray from the driver's memory")

    for name in ("from_arrow", "from_arrow_refs", "from_items", "from_pandas", "from_numpy"):
        monkeypatch.setattr(ray.data, name, refused)
    seen: list[tuple[str, list[int]]] = []
    real = runner_module.run_stages

    def spy(blocks, fs, stages, *args):
        seen.append((stages[0].name, [pq.ParquetFile(b.path).metadata.row_group(b.row_group).num_rows for b in blocks]))
        return real(blocks, fs, stages, *args)

    monkeypatch.setattr(runner_module, "run_stages", spy)
    folder = _copy(stickers, tmp_path / "in", sorted(p.name for p in stickers.iterdir()))
    summary = run_preprocess([str(folder)], str(tmp_path / "dataset"), _config(), show_progress=False)
    assert summary.processed == summary.inputs > 6
    (hashing, hash_blocks), (probe, main_blocks) = seen
    assert hashing == "hash" and sum(hash_blocks) == summary.inputs
    assert probe == "probe" and 0 < sum(main_blocks) <= summary.inputs
    assert max(main_blocks) <= _config().ray.rows_per_shard  # a block is a task is at most one shard


def _versioned(table: pa.Table, version: str | None) -> pa.Table:
    return table.replace_schema_metadata({b"rdtf.schema_version": version.encode()} if version else None)


def _ledger_dataset(root: Path) -> DatasetLayout:
    """A dataset of schema 1.0 and 1.1 files (1.0 files have no source_version), rows and rejects."""
    (root / "data").mkdir(parents=True)
    (root / "rejects").mkdir()
    old = pa.table({"sample_id": ["a"], "source_uri": ["/in/a.gif"], "frames": [[b"png"]]})
    new = pa.table({"sample_id": ["b", "c"], "source_uri": ["/in/b.gif", "/in/c.gif"], "source_version": ["1:2", None]})
    pq.write_table(_versioned(old, "1.0"), root / "data" / "part-0.parquet")
    pq.write_table(_versioned(new, "1.1"), root / "data" / "part-1.parquet")
    text = pa.string()
    bad = pa.table({"source_uri": ["/in/d.gif"], "sample_id": pa.nulls(1, text), "reason": ["unreadable"]})
    pq.write_table(_versioned(bad, "1.0"), root / "rejects" / "part-0.parquet")
    dupe = pa.table(
        {"source_uri": ["/in/e.gif"], "sample_id": ["b"], "source_version": ["3:4"], "reason": ["duplicate"]}
    )
    pq.write_table(_versioned(dupe, "1.1"), root / "rejects" / "part-1.parquet")
    return DatasetLayout.at(str(root))


@pytest.mark.parametrize("files_per_scan", [1, ledger_module.FILES_PER_SCAN])
def test_the_ledger_reads_alike_through_duckdb_and_pyarrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files_per_scan: int
) -> None:
    """A local dataset's ledger is read by DuckDB (`load`), a remote one by pyarrow (`scan`): same entries, whether
    the files are read all at once or a few at a time."""
    monkeypatch.setattr(ledger_module, "FILES_PER_SCAN", files_per_scan)
    read, real = [], ledger_module._load_local
    monkeypatch.setattr(ledger_module, "_load_local", lambda ws, d, r, *a: read.append(d + r) or real(ws, d, r, *a))
    layout = _ledger_dataset(tmp_path / "out")
    with Workspace() as ws:
        ledger_module.load(ws, layout)
    assert sorted(f for files in read for f in files) == sorted(
        layout.parquet_files("data") + layout.parquet_files("rejects")
    )
    assert max(len(files) for files in read) == min(files_per_scan, 4)  # at most FILES_PER_SCAN files per statement
    with Workspace() as ws:
        ledger_module.load(ws, layout)
        through_duckdb = ws.sql("SELECT * FROM ledger ORDER BY source_uri").to_arrow_table()
    through_pyarrow = scan(layout).sort_by("source_uri")
    assert through_duckdb.cast(LEDGER_SCHEMA).to_pylist() == through_pyarrow.to_pylist()
    assert through_pyarrow.to_pylist() == [
        {"source_uri": "/in/a.gif", "sample_id": "a", "source_version": None, "reason": None},
        {"source_uri": "/in/b.gif", "sample_id": "b", "source_version": "1:2", "reason": None},
        {"source_uri": "/in/c.gif", "sample_id": "c", "source_version": None, "reason": None},
        {"source_uri": "/in/d.gif", "sample_id": None, "source_version": None, "reason": "unreadable"},
        {"source_uri": "/in/e.gif", "sample_id": "b", "source_version": "3:4", "reason": "duplicate"},
    ]


@pytest.mark.parametrize("version", ["3.0", "0.9", None])
def test_both_ledger_readers_refuse_a_file_of_another_schema_version(tmp_path: Path, version: str | None) -> None:
    layout = _ledger_dataset(tmp_path / "out")
    other = pa.table({"source_uri": ["/in/f.gif"], "reason": ["corrupt"]})
    pq.write_table(_versioned(other, version), tmp_path / "out" / "rejects" / "part-2.parquet")
    with pytest.raises(SchemaVersionError, match=f"part-2.parquet has schema version {version or 'none'}"):
        scan(layout)
    with (
        Workspace() as ws,
        pytest.raises(SchemaVersionError, match=f"part-2.parquet has schema version {version or 'none'}"),
    ):
        ledger_module.load(ws, layout)
