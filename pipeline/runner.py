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
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from tqdm import tqdm

import pipeline
import schemas
from pipeline.card import count_outputs, make_card
from pipeline.clip import ClipInputStage, ClipSetup, ClipStage, prepare
from pipeline.clip_models import RANDOM_WARNING
from pipeline.config import PreprocessConfig, RayConfig
from pipeline.decode import DecodeStage, ProbeStage
from pipeline.dedupe import kept_copies
from pipeline.discover import InputError, InputItem, discover
from pipeline.entropy import EntropyStage
from pipeline.filters import EntropyFilterStage, MetadataFilterStage
from pipeline.hash_inputs import HashStage
from pipeline.keyframes import KeyframeStage
from pipeline.ledger import accounted, entries, remove_temp_files
from pipeline.lock import OutputLock, OutputLockedError
from pipeline.near_duplicates import drop_rejected_rows, near_duplicate_pass
from pipeline.plan import run_stages
from pipeline.stage import STATUS_COLUMNS, Stage, check_chain
from pipeline.write import EncodeFramesStage, ShardWriter, clear_staging, publish, write_rejects
from schemas.config import ConfigError, to_dict
from schemas.layout import DatasetLayout

log = logging.getLogger("rdtf.preprocess")

INPUT_COLUMNS = ("source_uri", "sample_id", "num_bytes", "caption", "source_id")
HASH_OUTPUT = pa.schema(
    [("source_uri", pa.string()), ("sample_id", pa.string()), ("num_bytes", pa.int64())]
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

    started = not ray.is_initialized()
    if started and cfg.address:
        # Ship this checkout's packages to the cluster's workers, so the cluster needs only the dependencies.
        ray.init(address=cfg.address, runtime_env={"py_modules": [pipeline, schemas]}, logging_level=logging.WARNING)
    elif started:
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 2**20,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    if not log.isEnabledFor(logging.INFO):  # Ray Data's per-execution lines stay in its log files, off the console
        for handler in logging.getLogger("ray.data").handlers:
            if not type(handler).__name__.endswith("FileHandler"):  # the console one (PlainRayHandler)
                handler.setLevel(logging.WARNING)
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


def _hash_pass(todo: list[InputItem], cfg: PreprocessConfig, show_progress: bool) -> list[dict[str, Any]]:
    stage = HashStage(cfg.decode.max_file_bytes)
    results: list[dict[str, Any]] = []
    rows = [{"source_uri": i.source_uri} for i in todo]
    with tqdm(total=len(todo), desc="hashing", unit="input", disable=not show_progress) as bar:
        for batch in run_stages(rows, [stage], ("source_uri",), None, HASH_OUTPUT, 1024):
            results += batch.to_pylist()
            bar.update(batch.num_rows)
    return results


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

    # 1. Inputs, minus what the output already accounts for.
    items = discover(inputs, cfg.inputs)
    if not items:
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
        done = accounted(layout)
        todo = [item for item in items if item.source_uri not in done]
        summary = PreprocessSummary(output, len(items), len(items) - len(todo))
        log.info("%d inputs, %d already accounted for, %d to do", len(items), summary.already_done, len(todo))
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
            hashed = _hash_pass(todo, cfg, show_progress) if todo else []

            # 3. Unreadable inputs and duplicates (against everything, including inputs done by earlier runs).
            wanted = {item.source_uri for item in items}
            known = {uri: sid for uri, sid in done.items() if uri in wanted and sid is not None}
            known.update({r["source_uri"]: r["sample_id"] for r in hashed if r["reject_reason"] is None})
            kept = kept_copies(known)
            for row in hashed:
                if row["reject_reason"] is None and kept[row["sample_id"]] != row["source_uri"]:
                    row.update(
                        reject_reason="duplicate",
                        reject_stage="dedupe",
                        reject_message=f"same bytes as {kept[row['sample_id']]}",
                        kept_sample_id=row["sample_id"],
                    )
            early = [r for r in hashed if r["reject_reason"] is not None]
            for begin in range(0, len(early), cfg.ray.rows_per_shard):
                chunk = early[begin : begin + cfg.ray.rows_per_shard]
                write_rejects(layout, {c: [r[c] for r in chunk] for c in HASH_OUTPUT.names})
            summary.rejected.update(r["reject_reason"] for r in early)

            # 4. Main pass over the kept copies.
            by_uri = {item.source_uri: item for item in todo}
            rows = [
                {
                    **{c: r[c] for c in ("source_uri", "sample_id", "num_bytes")},
                    "caption": by_uri[r["source_uri"]].caption,
                    "source_id": by_uri[r["source_uri"]].source_id,
                }
                for r in hashed
                if r["reject_reason"] is None
            ]
            stages = main_stages(cfg, clip)
            sink = ShardWriter(output, cfg.decode.frame_size, run_id)
            written_now: set[str] = set()
            published: set[str] = set()  # one entry per shard, not per input
            batches = (
                run_stages(rows, stages, INPUT_COLUMNS, sink, SUMMARY_OUTPUT, cfg.ray.rows_per_shard) if rows else []
            )
            with tqdm(total=len(rows), desc="preprocessing", unit="sticker", disable=not show_progress) as bar:
                for batch in batches:
                    # data/ before rejects/: a run killed between the two redoes only rejects (sorted puts data first)
                    if lock.lost:
                        raise OutputLockedError(f"another rdtf preprocess took over {output} while this one ran")
                    for shard in sorted(set(batch["shard"].to_pylist()) - published):
                        publish(layout, run_id, shard)
                        published.add(shard)
                    for uri, reason, size, _ in zip(*(batch[c].to_pylist() for c in SUMMARY_OUTPUT.names), strict=True):
                        summary.bytes_read += size or 0
                        if reason is None:
                            written_now.add(uri)
                        else:
                            summary.rejected[reason] += 1
                    bar.update(batch.num_rows)

            # 5. Near-duplicates across the whole dataset, when this run added rows or an earlier one did not finish.
            threshold = cfg.clip.near_duplicate_threshold
            if clip is not None and threshold is not None and (written_now or not finished_before):
                moved = near_duplicate_pass(layout, threshold, cfg.clip.near_duplicate_cluster_rows)
                summary.near_duplicates = len(moved)
                summary.rejected["near_duplicate"] += len(written_now.intersection(moved))
                written_now.difference_update(moved)
            summary.written = len(written_now)
        clear_staging(layout, run_id)

        # 6. Account for every input exactly once, then the card.
        written = entries(layout)
        present = Counter(uri for uri, _ in written if uri in wanted)
        missing = [uri for uri in wanted if uri not in present]
        twice = [uri for uri, n in present.items() if n > 1]
        if missing or twice:
            raise RuntimeError(
                f"accounting check failed: {len(missing)} inputs missing (e.g. {missing[:3]}), "
                f"{len(twice)} present more than once (e.g. {twice[:3]}). This is a bug in rdtf: please report it."
            )
        summary.seconds = time.monotonic() - start
        last_run = {
            "inputs": summary.inputs,
            "already_done": summary.already_done,
            "written": summary.written,
            "rejected": dict(summary.rejected),
            "near_duplicates_moved": summary.near_duplicates,
            "seconds": round(summary.seconds, 2),
        }
        summary.card = make_card(config, "complete", count_outputs(layout), last_run, clip.card() if clip else None)
        layout.write_card(summary.card)
        return summary
