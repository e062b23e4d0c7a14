"""`rdtf preprocess` from start to end: the table of contents of the pipeline.

0. check the CLIP model and weights (when the stage is on), before any input is read;
1. discover the inputs and skip those the output already accounts for (resume);
2. hash pass: read and hash every remaining input (Ray Data), so duplicates are known across the whole input;
3. write the duplicate and unreadable rejects;
4. main pass (Ray Data): probe -> metadata filters -> decode -> entropy -> entropy filter -> keyframes -> encode ->
   write; with the CLIP stage: ... entropy filter -> CLIP input -> encode (CPU tasks) | CLIP (actor pool) |
   keyframes on the CLIP frame embeddings -> write (CPU tasks);
5. with clip.near_duplicate_threshold: near-duplicates across the whole dataset move to the rejects;
6. count what the files hold, check that every input is there exactly once, and write the dataset card.

The lists these steps keep (inputs, ledger, hashes, duplicates, what the main pass did) are tables of a workspace
(pipeline/workspace.py: DuckDB on local disk, under `bookkeeping.memory_mb`), and each Ray pass reads its input from
Parquet blocks in the run's staging folder (pipeline/blocks.py), so that the driver's memory stays
about flat in the number of inputs. Workspace tables: `inputs` and `ledger` (pipeline/ledger.py), `todo` (inputs the
output does not account for), `hashed` (HASH_OUTPUT), `duplicates`, `results` (the main pass's source_uri,
reject_reason) and `not_done`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

import rdtf
import rdtf.pipeline.ledger as ledger
from rdtf.pipeline.blocks import Block, block_rows, cut, write_blocks
from rdtf.pipeline.card import count_outputs, make_card
from rdtf.pipeline.clip import ClipInputStage, ClipSetup, ClipStage, prepare
from rdtf.pipeline.clip_models import RANDOM_WARNING
from rdtf.pipeline.config import SETTINGS_BEFORE_THEY_EXISTED, PreprocessConfig, RayConfig
from rdtf.pipeline.decode import DecodeStage, ProbeStage
from rdtf.pipeline.dedupe import duplicates
from rdtf.pipeline.discover import InputError, discover
from rdtf.pipeline.entropy import EntropyStage
from rdtf.pipeline.filters import EntropyFilterStage, MetadataFilterStage
from rdtf.pipeline.hash_inputs import HashStage
from rdtf.pipeline.keyframes import KeyframeStage
from rdtf.pipeline.lock import OutputLock, OutputLockedError
from rdtf.pipeline.near_duplicates import drop_rejected_rows, near_duplicate_pass
from rdtf.pipeline.plan import run_stages
from rdtf.pipeline.stage import NOT_DONE, STATUS_COLUMNS, Stage, check_chain
from rdtf.pipeline.workspace import Workspace
from rdtf.pipeline.write import EncodeFramesStage, ShardWriter, clear_staging, publish, write_rejects
from rdtf.schemas.config import ConfigError, to_dict
from rdtf.schemas.layout import DATA_DIR, DatasetLayout

log = logging.getLogger("rdtf.preprocess")

INPUT_COLUMNS = ("source_uri", "sample_id", "num_bytes", "source_version", "caption", "source_id")
HASH_OUTPUT = pa.schema(
    [("source_uri", pa.string()), ("sample_id", pa.string()), ("num_bytes", pa.int64())]
    + [("source_version", pa.string())]
    + [(c, pa.string()) for c in STATUS_COLUMNS]
)
SUMMARY_OUTPUT = pa.schema(
    [("source_uri", pa.string()), ("reject_reason", pa.string()), ("num_bytes", pa.int64()), ("shard", pa.string())]
)
# Settings that change where and how fast the work runs, never its result: an existing dataset may be resumed with
# other values (section -> keys; None: the whole section).
EXECUTION_KEYS: dict[str, tuple[str, ...] | None] = {
    "ray": None,
    "bookkeeping": None,
    "clip": ("pool_size", "num_cpus", "num_gpus"),
}
RESULTS = pa.schema([("source_uri", pa.string()), ("reject_reason", pa.string())])  # the main pass's, per input
HASH_ROWS_PER_TASK = 1024  # inputs per hash task: reading and hashing is light, a task's start is not
# The main pass's input: the readable kept copies, with what the listing said of them.
WORK = """
    SELECT h.source_uri, h.sample_id, h.num_bytes, h.source_version, t.caption, t.source_id
    FROM hashed h JOIN todo t USING (source_uri)
    WHERE h.reject_reason IS NULL AND h.source_uri NOT IN (SELECT source_uri FROM duplicates)
"""
# The driver's rejects (REJECT_SCHEMA): what the hash pass rejected (inputs left NOT_DONE are neither) and duplicates.
EARLY_REJECTS = """
    SELECT source_uri, sample_id, source_version, reject_stage AS stage, reject_reason AS reason,
           reject_message AS message, kept_sample_id
    FROM hashed WHERE reject_reason IS NOT NULL AND reject_reason <> $not_done
    UNION ALL
    SELECT source_uri, sample_id, source_version, 'dedupe', 'duplicate', 'same bytes as ' || kept_uri, sample_id
    FROM duplicates
"""


@dataclass
class PreprocessSummary:
    """What one run did, and what the dataset holds now."""

    output: str
    inputs: int  # distinct inputs named by this run
    already_done: int  # of those, accounted for by an earlier run
    written: int = 0  # rows this run
    rejected: Counter = field(default_factory=Counter)  # rejects this run, by reason
    seconds: float = 0.0
    bytes_read: int = 0
    changed: int = 0  # of the inputs done before, those changed since (size or mtime): redone, old rows replaced
    not_done: int = 0  # inputs that failed for a reason that may pass (I/O): neither row nor reject; retried next run
    near_duplicates: int = 0  # rows the near-duplicate pass moved to the rejects, earlier runs' rows included
    clip: str = "skipped: no clip.weights (--clip-weights PATH|TAG|random)"  # what the CLIP stage did
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        return self.written + sum(self.rejected.values())

    def lines(self) -> list[str]:
        rate = self.processed / self.seconds if self.seconds else 0.0
        counts = self.card.get("counts") or {}
        lines = [
            f"inputs: {self.inputs} ({self.already_done} already done by an earlier run)",
            f"this run: {self.written} rows written, {sum(self.rejected.values())} rejected, "
            f"{self.seconds:.1f} s, {rate:.1f} inputs/s, {self.bytes_read / 2**20:.1f} MiB read",
        ]
        lines += [f"  rejected {reason}: {n}" for reason, n in sorted(self.rejected.items())]
        if self.changed:
            lines.append(f"changed since done: {self.changed} inputs redone, their old rows replaced")
        if self.not_done:
            lines.append(
                f"not done: {self.not_done} inputs could not be read after retries (I/O errors, see the log with -v); "
                "run the same command again to retry them"
            )
        lines.append(f"clip: {self.clip}")
        if self.near_duplicates:
            lines.append(f"near-duplicates: {self.near_duplicates} rows moved to the rejects")
        lines.append(
            f"dataset: {counts.get('rows', 0)} rows, {counts.get('rejects', 0)} rejects "
            f"in {self.output} (card: {self.output.rstrip('/')}/card.json)"
        )
        by_reason = counts.get("rejects_by_reason") or {}
        if by_reason:
            lines.append("  dataset rejects by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())))
        if not counts.get("rows") and counts.get("rejects"):
            lines.append("nothing usable: every input was rejected; docs/rejects.md says what each reason means")
        return lines


def main_stages(cfg: PreprocessConfig, clip: ClipSetup | None = None) -> list[Stage]:
    """The main pass, in order (with the CLIP stage when `clip` is given, resolved for the cluster); checked once
    here that every stage gets the columns it reads."""
    stages: list[Stage] = [
        ProbeStage(cfg.decode),
        MetadataFilterStage(cfg.filters),
        DecodeStage(cfg.decode),
        EntropyStage(cfg.difficulty),
        EntropyFilterStage(cfg.filters),
    ]
    if clip is None:
        stages += [KeyframeStage(), EncodeFramesStage()]
    else:
        stages += [
            ClipInputStage(),
            EncodeFramesStage(),
            ClipStage(clip.cfg, clip.vocabulary),
            KeyframeStage(features="clip"),
        ]
    check_chain(stages, INPUT_COLUMNS)
    return stages


REACH_TIMEOUT_S = 5.0  # to open a connection to a cluster's address before Ray's own retries (minutes) begin


def _check_reachable(address: str) -> None:
    """Refuse a `host:port` or `ray://host:port` address that accepts no connection, in seconds: `ray.init` would
    retry for minutes, printing its client's warnings. `auto` and other forms are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(
            f"config key 'ray.address': cannot reach a Ray cluster at {address} ({error}). Start one there "
            "(`ray start --head`), or check --address: the head node's GCS port (6379) or ray://HOST:10001."
        ) from None


@contextmanager
def ray_session(cfg: RayConfig, show_progress: bool) -> Iterator[None]:
    """Use the Ray instance already running in this process, connect to `cfg.address`, or start an embedded one."""
    import ray
    import ray.data  # configures Ray Data's loggers, adjusted below

    # Quiet by default: Ray's notices (token authentication, progress bars off, ...) on the console only with -v.
    # The workers' own output (open_clip's "no pretrained weights", ...) stays in their log files unless -v; their
    # errors still reach the driver as exceptions.
    loud = log.isEnabledFor(logging.INFO)
    level = logging.INFO if loud else logging.ERROR
    started = not ray.is_initialized()
    if started and cfg.address:
        # Ship this checkout's `rdtf` package to the cluster's workers, so the cluster needs only the dependencies. As
        # a folder, not a module object: inside a Ray job (`rdtf submit`) Ray deep-copies this runtime_env to merge it
        # with the job's, and a module cannot be copied. Ray follows the package's links to the layout's folders.
        package = os.path.dirname(rdtf.__file__)
        _check_reachable(cfg.address)
        ray.init(address=cfg.address, runtime_env={"py_modules": [package]}, logging_level=level, log_to_driver=loud)
    elif started:
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 2**20,
            include_dashboard=False,
            logging_level=level,
            log_to_driver=loud,
        )
    for handler in logging.getLogger("ray.data").handlers:  # Ray Data's per-execution lines stay in its log files
        if level > logging.INFO and not type(handler).__name__.endswith("FileHandler"):  # the console one
            handler.setLevel(level)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show_progress
    context.enable_operator_progress_bars = show_progress
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _result_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config without EXECUTION_KEYS, as the card stores it. A section the config lacks (a card written before
    that section existed) reads as its defaults, a key of SETTINGS_BEFORE_THEY_EXISTED as the value given there."""
    config = {
        section: {**SETTINGS_BEFORE_THEY_EXISTED.get(section, {}), **values} if isinstance(values, dict) else values
        for section, values in config.items()
    }
    stored = json.loads(json.dumps({**to_dict(PreprocessConfig()), **config}))
    for section, keys in EXECUTION_KEYS.items():
        if keys is None:
            stored.pop(section, None)
        else:
            stored[section] = {k: v for k, v in stored.get(section, {}).items() if k not in keys}
    return stored


def _check_config(layout: DatasetLayout, config: dict[str, Any], clip: ClipSetup | None) -> None:
    """Refuse to add rows made with other settings, or other CLIP weights, to an existing dataset."""
    card = layout.read_card()
    if card is None:
        return
    old, new = _result_settings(card.get("config", {})), _result_settings(config)
    if old != new:
        section = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        there, now = old.get(section), new.get(section)
        if isinstance(there, dict) and isinstance(now, dict):  # name the keys, not the whole section
            keys = [k for k in sorted(set(there) | set(now)) if there.get(k) != now.get(k)]
            there, now = ({k: side.get(k) for k in keys} for side in (there, now))
        raise ConfigError(
            f"{layout.root} was made with different '{section}' settings ({there} there, {now} now). Run with the "
            "settings it was made with, use another --out, or delete that folder to start over."
        )
    old_hash = (card.get("clip") or {}).get("weights_sha256")
    if clip is not None and old_hash is not None and old_hash != clip.weights.sha256:
        raise ConfigError(
            f"{layout.root} was made with other CLIP weights (sha256 {old_hash} there, {clip.weights.sha256} now: "
            f"the file {clip.weights.source} changed). Use another --out, or delete that folder to start over."
        )


def _pass_blocks(ws: Workspace, query: str, layout: DatasetLayout, folder: str, rows_per_task: int) -> list[Block]:
    """`query`'s rows, sorted by URI, as Parquet blocks in the staging folder `folder` for a Ray pass."""
    import ray

    size = block_rows(ws.count(query), rows_per_task, int(ray.cluster_resources().get("CPU", 1)))
    return write_blocks(ws.reader(f"{query} ORDER BY source_uri"), size, layout.fs, folder)


def _hash_pass(ws: Workspace, layout: DatasetLayout, run_id: str, cfg: PreprocessConfig, show_progress: bool) -> None:
    """Every input of `todo` read and hashed on Ray Data, into the workspace table `hashed` (HASH_OUTPUT)."""
    stage = HashStage(cfg.decode.max_file_bytes)
    folder = f"{layout.staging_dir(run_id)}/blocks/hash"
    blocks = _pass_blocks(ws, "SELECT source_uri FROM todo", layout, folder, HASH_ROWS_PER_TASK)
    passed = run_stages(blocks, layout.fs, [stage], ("source_uri",), None, HASH_OUTPUT, HASH_ROWS_PER_TASK,
                        cfg.ray.max_retries)  # fmt: skip
    total = ws.count("SELECT * FROM todo")
    with ws.appender("hashed", HASH_OUTPUT) as hashed, tqdm(total=total, desc="hashing", unit="input",
                                                            disable=not show_progress) as bar:  # fmt: skip
        for batch in passed:
            hashed.add(batch.cast(HASH_OUTPUT))
            bar.update(batch.num_rows)


def _counts(values: pa.ChunkedArray | pa.Array) -> Counter:
    """How many times each non-null value occurs."""
    return Counter({c["values"]: c["counts"] for c in pc.value_counts(values.drop_null()).to_pylist()})


def run_preprocess(
    inputs: list[str], output: str, cfg: PreprocessConfig, show_progress: bool | None = None
) -> PreprocessSummary:
    """Turn `inputs` into a curated dataset at `output`, resuming whatever an earlier run there left."""
    show_progress = sys.stderr.isatty() if show_progress is None else show_progress
    start = time.monotonic()
    layout = DatasetLayout.at(output)
    config = to_dict(cfg)

    # 0. The CLIP model and weights: a bad checkpoint fails here, before any input is read.
    clip = prepare(cfg.clip)
    if clip is None:
        log.info("CLIP stage skipped: no clip.weights; clip_embedding, clip_score and tags stay null")
    elif clip.weights.kind == "random":
        log.warning("WARNING: %s", RANDOM_WARNING)

    with Workspace(cfg.bookkeeping) as ws:
        # 1. Inputs, minus what the output already accounts for (an input changed since it was done is redone).
        found = discover(inputs, cfg.inputs, ws)
        if found == 0:
            raise InputError(f"no inputs found in {inputs} (extensions looked for: {', '.join(cfg.inputs.extensions)})")
        _check_config(layout, config, clip)
        run_id = uuid.uuid4().hex
        with OutputLock(layout, run_id) as lock:  # one writer per output, from here to the card
            summary, clip = _run(ws, output, run_id, lock, cfg, config, clip, show_progress)
            summary.seconds = time.monotonic() - start
            last_run = {
                "inputs": summary.inputs,
                "already_done": summary.already_done,
                "written": summary.written,
                "rejected": dict(summary.rejected),
                "changed": summary.changed,
                "not_done": summary.not_done,
                "near_duplicates_moved": summary.near_duplicates,
                "seconds": round(summary.seconds, 2),
            }
            counts = count_outputs(*ledger.counts(ws), layout)
            summary.card = make_card(config, "complete", counts, last_run, clip.card() if clip else None)
            layout.write_card(summary.card)
            return summary


def _run(
    ws: Workspace,
    output: str,
    run_id: str,
    lock: OutputLock,
    cfg: PreprocessConfig,
    config: dict[str, Any],
    clip: ClipSetup | None,
    show_progress: bool,
) -> tuple[PreprocessSummary, ClipSetup | None]:
    """Steps 1 (from the scan) to 6 (to the accounting check) of a run that holds the output's lock; returns the
    summary and the CLIP setup as resolved for the cluster (for the card)."""
    layout = DatasetLayout.at(output)
    finished_before = (layout.read_card() or {}).get("status") == "complete"
    if ledger.remove_temp_files(layout):
        log.info("removed half-written files left by a killed run")
    clear_staging(layout)  # shards of killed runs that were never published: redone below
    if cfg.clip.near_duplicate_threshold is not None and not finished_before and drop_rejected_rows(layout):
        log.info("finished moving the near-duplicates that a killed run had rejected")
    ledger.load(ws, layout)
    changed = ledger.changed(ws)
    if len(changed):
        log.info("%d inputs changed since they were done: their old rows are replaced", len(changed))
        ledger.drop_inputs(layout, changed)
        ledger.forget(ws, changed)
    ws.create("todo", ledger.TODO)
    found, todo = ws.count("SELECT * FROM inputs"), ws.count("SELECT * FROM todo")
    summary = PreprocessSummary(output, found, found - todo, changed=len(changed))
    log.info("%d inputs, %d already accounted for, %d to do", found, summary.already_done, todo)

    with ray_session(cfg.ray, show_progress):
        import ray

        if clip is not None:
            resources = ray.cluster_resources()
            clip = clip.for_cluster(resources.get("CPU", 0), resources.get("GPU", 0))
            model, run = clip.weights, clip.cfg
            summary.clip = f"{model.model} ({model.source} weights) on {run.device}, {run.precision}"
            if clip.weights.kind == "random":
                summary.clip += f" -- WARNING: {RANDOM_WARNING}"
        # Written once the cluster accepted the settings: a run refused (a GPU it lacks) leaves no card to compare
        # the corrected command with.
        layout.write_card(make_card(config, "running", None, None, clip.card() if clip else None))

        # 2. Hash pass.
        _hash_pass(ws, layout, run_id, cfg, show_progress)

        # 3. Unreadable inputs and duplicates (against this run's inputs and every row already in the dataset).
        readable = "SELECT * FROM hashed WHERE reject_reason IS NULL"
        ws.create("duplicates", duplicates(readable, "SELECT source_uri, sample_id FROM ledger WHERE reason IS NULL"))
        early = ws.reader(f"{EARLY_REJECTS} ORDER BY source_uri", not_done=NOT_DONE)
        new_rejects = write_rejects(layout, cut(early, cfg.ray.rows_per_shard))
        by_reason = ws.sql(f"SELECT reason, count(*) FROM ({EARLY_REJECTS}) GROUP BY reason", not_done=NOT_DONE)
        summary.rejected.update(dict(by_reason.fetchall()))

        # 4. Main pass over the kept copies.
        stages = main_stages(cfg, clip)
        sink = ShardWriter(output, cfg.decode.frame_size, run_id)
        published: set[str] = set()  # one entry per shard, not per input
        shard = cfg.ray.rows_per_shard
        blocks = _pass_blocks(ws, WORK, layout, f"{layout.staging_dir(run_id)}/blocks/main", shard)
        batches = run_stages(blocks, layout.fs, stages, INPUT_COLUMNS, sink, SUMMARY_OUTPUT, shard, cfg.ray.max_retries)
        total = ws.count(WORK)
        with ws.appender("results", RESULTS) as results, tqdm(total=total, desc="preprocessing", unit="sticker",
                                                               disable=not show_progress) as bar:  # fmt: skip
            for batch in batches:
                # data/ before rejects/: a run killed between the two redoes only rejects (sorted puts data first)
                if lock.lost:
                    raise OutputLockedError(f"another rdtf preprocess took over {output} while this one ran")
                for name in sorted(set(batch["shard"].drop_null().to_pylist()) - published):
                    publish(layout, run_id, name)
                    published.add(name)
                reason = batch["reject_reason"]
                summary.bytes_read += pc.sum(batch["num_bytes"]).as_py() or 0
                summary.rejected.update(_counts(reason.filter(pc.not_equal(reason, NOT_DONE))))
                results.add(batch.select(RESULTS.names).cast(RESULTS))
                bar.update(batch.num_rows)
        written = "SELECT source_uri FROM results WHERE reject_reason IS NULL"

        # 5. Near-duplicates across the whole dataset, when this run added rows or an earlier one did not finish.
        threshold = cfg.clip.near_duplicate_threshold
        rewritten = clip is not None and threshold is not None and (ws.count(written) or not finished_before)
        gone = 0
        if rewritten:
            moved = near_duplicate_pass(layout, threshold, cfg.clip.near_duplicate_cluster_rows)
            summary.near_duplicates = len(moved)
            ws.load("moved", pa.table({"source_uri": pa.array(sorted(moved), pa.string())}))
            gone = ws.count(f"{written} AND source_uri IN (SELECT source_uri FROM moved)")
            summary.rejected["near_duplicate"] += gone
        summary.written = ws.count(written) - gone
    clear_staging(layout, run_id)

    # 6. Account for every input exactly once: the files this run wrote are scanned and added to the ledger of its
    # start (all files again when the near-duplicate pass rewrote earlier ones).
    ws.create("not_done", "SELECT source_uri FROM hashed WHERE reject_reason = $n UNION ALL "
              "SELECT source_uri FROM results WHERE reject_reason = $n", n=NOT_DONE)  # fmt: skip
    summary.not_done = ws.count("SELECT * FROM not_done")
    if rewritten:
        ledger.load(ws, layout)
    else:
        ours = [f"{layout.root}/{name}" for name in sorted(published)]
        data = [p for p in ours if p.startswith(layout.dir(DATA_DIR) + "/")]
        ledger.load(ws, layout, data, [p for p in ours if p not in data] + new_rejects, append=True, ours=True)
    ledger.check_accounting(ws, "SELECT source_uri FROM not_done")
    return summary, clip
