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
"""

from __future__ import annotations

import json
import logging
import os
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

import pipeline
import schemas
from pipeline.card import count_outputs, make_card
from pipeline.clip import ClipInputStage, ClipSetup, ClipStage, prepare
from pipeline.clip_models import RANDOM_WARNING
from pipeline.config import PreprocessConfig, RayConfig
from pipeline.decode import DecodeStage, ProbeStage
from pipeline.dedupe import duplicates
from pipeline.discover import InputError, discover
from pipeline.entropy import EntropyStage
from pipeline.filters import EntropyFilterStage, MetadataFilterStage
from pipeline.hash_inputs import HashStage
from pipeline.keyframes import KeyframeStage
from pipeline.ledger import drop_inputs, remove_temp_files, rows, scan, without
from pipeline.lock import OutputLock, OutputLockedError
from pipeline.near_duplicates import drop_rejected_rows, near_duplicate_pass
from pipeline.plan import run_stages
from pipeline.stage import NOT_DONE, STATUS_COLUMNS, Stage, check_chain
from pipeline.write import EncodeFramesStage, ShardWriter, clear_staging, publish, write_rejects
from schemas.config import ConfigError, to_dict
from schemas.dataset import REJECT_SCHEMA
from schemas.layout import DATA_DIR, DatasetLayout

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
EXECUTION_KEYS: dict[str, tuple[str, ...] | None] = {"ray": None, "clip": ("pool_size", "num_cpus", "num_gpus")}


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


@contextmanager
def ray_session(cfg: RayConfig, show_progress: bool) -> Iterator[None]:
    """Use the Ray instance already running in this process, connect to `cfg.address`, or start an embedded one."""
    import ray
    import ray.data  # configures Ray Data's loggers, adjusted below

    # Quiet by default: Ray's notices (token authentication, progress bars off, ...) on the console only with -v.
    level = logging.INFO if log.isEnabledFor(logging.INFO) else logging.ERROR
    started = not ray.is_initialized()
    if started and cfg.address:
        # Ship this checkout's packages to the cluster's workers, so the cluster needs only the dependencies. As
        # folders, not module objects: inside a Ray job (`rdtf submit`) Ray deep-copies this runtime_env to merge it
        # with the job's, and a module cannot be copied.
        packages = [os.path.dirname(module.__file__) for module in (pipeline, schemas)]
        ray.init(address=cfg.address, runtime_env={"py_modules": packages}, logging_level=level)
    elif started:
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 2**20,
            include_dashboard=False,
            logging_level=level,
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
    that section existed) reads as its defaults."""
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
        raise ConfigError(
            f"{layout.root} was made with different '{section}' settings ({old.get(section)} there, "
            f"{new.get(section)} now). Use another --out, or delete that folder to start over."
        )
    old_hash = (card.get("clip") or {}).get("weights_sha256")
    if clip is not None and old_hash is not None and old_hash != clip.weights.sha256:
        raise ConfigError(
            f"{layout.root} was made with other CLIP weights (sha256 {old_hash} there, {clip.weights.sha256} now: "
            f"the file {clip.weights.source} changed). Use another --out, or delete that folder to start over."
        )


def _hash_pass(todo: pa.Table, cfg: PreprocessConfig, show_progress: bool) -> pa.Table:
    """Every input of `todo` read and hashed on Ray Data: HASH_OUTPUT, as Arrow."""
    stage = HashStage(cfg.decode.max_file_bytes)
    batches = []
    with tqdm(total=todo.num_rows, desc="hashing", unit="input", disable=not show_progress) as bar:
        uris = todo.select(["source_uri"])
        for batch in run_stages(uris, [stage], ("source_uri",), None, HASH_OUTPUT, 1024, cfg.ray.max_retries):
            batches.append(batch)
            bar.update(batch.num_rows)
    return pa.concat_tables(batches).cast(HASH_OUTPUT) if batches else HASH_OUTPUT.empty_table()


def _early_rejects(hashed: pa.Table, dupes: pa.Table) -> pa.Table:
    """REJECT_SCHEMA rows for what the hash pass rejected and for the duplicates (NOT_DONE inputs are neither)."""
    reason = hashed["reject_reason"]
    failed = hashed.filter(pc.and_(pc.is_valid(reason), pc.not_equal(reason, NOT_DONE)))
    message = pc.binary_join_element_wise("same bytes as ", dupes["kept_uri"], "")
    duplicates = pa.table(
        {
            "source_uri": dupes["source_uri"],
            "sample_id": dupes["sample_id"],
            "source_version": dupes["source_version"],
            "stage": pa.repeat(pa.scalar("dedupe"), dupes.num_rows),
            "reason": pa.repeat(pa.scalar("duplicate"), dupes.num_rows),
            "message": message,
            "kept_sample_id": dupes["sample_id"],
        }
    )
    columns = {"stage": "reject_stage", "reason": "reject_reason", "message": "reject_message"}
    failed = failed.select([columns.get(c, c) for c in REJECT_SCHEMA.names]).rename_columns(REJECT_SCHEMA.names)
    return pa.concat_tables([failed.cast(REJECT_SCHEMA), duplicates.cast(REJECT_SCHEMA)]).sort_by("source_uri")


def _changed(items: pa.Table, ledger: pa.Table) -> pa.Array:
    """URIs whose listed version (size and mtime) differs from the one recorded when they were done."""
    listed = items.filter(pc.is_valid(items["source_version"])).select(["source_uri", "source_version"])
    if listed.num_rows == 0:  # a manifest says nothing of the content
        return pa.array([], pa.string())
    done = ledger.filter(pc.is_valid(ledger["source_version"])).select(["source_uri", "source_version"])
    both = listed.join(done.rename_columns(["source_uri", "done_version"]), "source_uri")
    return pc.unique(both.filter(pc.not_equal(both["source_version"], both["done_version"]))["source_uri"])


def _counts(values: pa.ChunkedArray | pa.Array) -> Counter:
    """How many times each non-null value occurs."""
    return Counter({c["values"]: c["counts"] for c in pc.value_counts(values.drop_null()).to_pylist()})


def _check_accounting(ledger: pa.Table, inputs: pa.Table, not_done: pa.Array) -> None:
    """Every input named by this run is a row or a reject exactly once (unless left NOT_DONE), and no two rows of
    the dataset share a sample_id. Raises with examples: either would be a bug in rdtf."""
    named = ledger.filter(pc.is_in(ledger["source_uri"], value_set=inputs["source_uri"]))
    counts = named.group_by("source_uri").aggregate([("source_uri", "count")])
    twice = counts.filter(pc.greater(counts["source_uri_count"], 1))["source_uri"]
    expected = inputs.filter(pc.invert(pc.is_in(inputs["source_uri"], value_set=not_done)))
    missing = expected.join(counts, "source_uri", join_type="left anti")["source_uri"]
    ids = rows(ledger).group_by("sample_id").aggregate([("sample_id", "count")])
    shared = ids.filter(pc.greater(ids["sample_id_count"], 1))["sample_id"]
    if len(missing) or len(twice) or len(shared):
        raise RuntimeError(
            f"accounting check failed: {len(missing)} inputs missing (e.g. {missing[:3].to_pylist()}), "
            f"{len(twice)} present more than once (e.g. {twice[:3].to_pylist()}), {len(shared)} sample ids on more "
            f"than one row (e.g. {shared[:3].to_pylist()}). This is a bug in rdtf: please report it."
        )


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

    # 1. Inputs, minus what the output already accounts for (an input changed since it was done is redone).
    items = discover(inputs, cfg.inputs)
    if items.num_rows == 0:
        raise InputError(f"no inputs found in {inputs} (extensions looked for: {', '.join(cfg.inputs.extensions)})")
    _check_config(layout, config, clip)
    run_id = uuid.uuid4().hex
    with OutputLock(layout, run_id) as lock:  # one writer per output, from here to the card
        finished_before = (layout.read_card() or {}).get("status") == "complete"
        if remove_temp_files(layout):
            log.info("removed half-written files left by a killed run")
        clear_staging(layout)  # shards of killed runs that were never published: redone below
        if cfg.clip.near_duplicate_threshold is not None and drop_rejected_rows(layout):
            log.info("finished moving the near-duplicates that a killed run had rejected")
        ledger = scan(layout)
        changed = _changed(items, ledger)
        if len(changed):
            log.info("%d inputs changed since they were done: their old rows are replaced", len(changed))
            drop_inputs(layout, changed)
            ledger = without(ledger, changed)
        todo = items.join(ledger.select(["source_uri"]), "source_uri", join_type="left anti")
        todo = todo.sort_by("source_uri")
        summary = PreprocessSummary(output, items.num_rows, items.num_rows - todo.num_rows, changed=len(changed))
        log.info("%d inputs, %d already accounted for, %d to do", items.num_rows, summary.already_done, todo.num_rows)
        layout.write_card(make_card(config, "running", None, None, clip.card() if clip else None))

        with ray_session(cfg.ray, show_progress):
            import ray

            if clip is not None:
                resources = ray.cluster_resources()
                clip = clip.for_cluster(resources.get("CPU", 0), resources.get("GPU", 0))
                model, run = clip.weights, clip.cfg
                summary.clip = f"{model.model} ({model.source} weights) on {run.device}, {run.precision}"
                if clip.weights.kind == "random":
                    summary.clip += f" -- WARNING: {RANDOM_WARNING}"

            # 2. Hash pass.
            hashed = _hash_pass(todo, cfg, show_progress)
            not_done = [hashed.filter(pc.equal(hashed["reject_reason"], NOT_DONE))["source_uri"].combine_chunks()]

            # 3. Unreadable inputs and duplicates (against this run's inputs and every row already in the dataset).
            readable = hashed.filter(pc.is_null(hashed["reject_reason"]))
            dupes = duplicates(readable, rows(ledger))
            early = _early_rejects(hashed, dupes)
            new_rejects = write_rejects(layout, early, cfg.ray.rows_per_shard)
            summary.rejected.update(_counts(early["reason"]))

            # 4. Main pass over the kept copies.
            kept = readable.join(dupes.select(["source_uri"]), "source_uri", join_type="left anti")
            work = kept.join(todo.select(["source_uri", "caption", "source_id"]), "source_uri")
            work = work.sort_by("source_uri").select(list(INPUT_COLUMNS))
            stages = main_stages(cfg, clip)
            sink = ShardWriter(output, cfg.decode.frame_size, run_id)
            written_now: list[pa.Array] = []  # the URIs of this run's rows, for the near-duplicate pass
            published: set[str] = set()  # one entry per shard, not per input
            shard = cfg.ray.rows_per_shard
            batches = run_stages(work, stages, INPUT_COLUMNS, sink, SUMMARY_OUTPUT, shard, cfg.ray.max_retries)
            with tqdm(total=work.num_rows, desc="preprocessing", unit="sticker", disable=not show_progress) as bar:
                for batch in batches:
                    # data/ before rejects/: a run killed between the two redoes only rejects (sorted puts data first)
                    if lock.lost:
                        raise OutputLockedError(f"another rdtf preprocess took over {output} while this one ran")
                    for shard in sorted(set(batch["shard"].drop_null().to_pylist()) - published):
                        publish(layout, run_id, shard)
                        published.add(shard)
                    reason = batch["reject_reason"]
                    summary.bytes_read += pc.sum(batch["num_bytes"]).as_py() or 0
                    written_now.append(batch.filter(pc.is_null(reason))["source_uri"].combine_chunks())
                    summary.rejected.update(_counts(reason.filter(pc.not_equal(reason, NOT_DONE))))
                    not_done.append(batch.filter(pc.equal(reason, NOT_DONE))["source_uri"].combine_chunks())
                    bar.update(batch.num_rows)
            written = pa.chunked_array(written_now, pa.string())

            # 5. Near-duplicates across the whole dataset, when this run added rows or an earlier one did not finish.
            threshold = cfg.clip.near_duplicate_threshold
            rewritten = clip is not None and threshold is not None and (len(written) or not finished_before)
            if rewritten:
                moved = near_duplicate_pass(layout, threshold, cfg.clip.near_duplicate_cluster_rows)
                summary.near_duplicates = len(moved)
                gone = pc.is_in(written, value_set=pa.array(sorted(moved), pa.string()))
                summary.rejected["near_duplicate"] += pc.sum(gone).as_py() or 0
                written = written.filter(pc.invert(gone))
            summary.written = len(written)
        clear_staging(layout, run_id)

        # 6. Account for every input exactly once, then the card: the files this run wrote are scanned and added to
        # the ledger of its start (all files again when the near-duplicate pass rewrote earlier ones).
        left = pa.chunked_array(not_done, pa.string()).combine_chunks()
        summary.not_done = len(left)
        if rewritten:
            ledger = scan(layout)
        else:
            ours = [f"{layout.root}/{shard}" for shard in sorted(published)]
            data = [p for p in ours if p.startswith(layout.dir(DATA_DIR) + "/")]
            ledger = pa.concat_tables([ledger, scan(layout, data, [p for p in ours if p not in data] + new_rejects)])
        _check_accounting(ledger, items, left)
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
        counts = count_outputs(ledger, layout)
        summary.card = make_card(config, "complete", counts, last_run, clip.card() if clip else None)
        layout.write_card(summary.card)
        return summary
