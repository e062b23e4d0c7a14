"""Curriculum coverage at the paper's scale (issue 14): which rows a run trains, per difficulty decile, after 1 and
1.2 epochs of 1M rows on 16 ranks, with the real curriculum (`trainer.curriculum`) and pacer (`trainer.pacing`),
against uniform sampling and against issue 14's loader, in the same run. No model, no frames: losses are simulated.

    .venv/bin/python bench/curriculum_coverage.py --out-md /tmp/coverage.md      # about 10 min on 2 busy cores
    .venv/bin/python bench/curriculum_coverage.py --rows 100000 --ranks 4        # a quick look

1. Rows: static difficulty s ~ Beta(5, 8) (about the real stickers' IQR 0.25..0.45, docs/entropy.md) and a hidden
   hardness h = s + N(0, 0.1) that the loss follows, so the static score is an imperfect guess that the adaptive
   part can correct. Files of 128 rows (`ray.rows_per_shard`), every 16th file to a rank, as `ParquetRows` splits.
2. Per rank and step (batch 1 per rank, the paper's setup; `curriculum.length` 50K steps, the paper's): the task of
   the step, one row drawn from a 256-row shuffle buffer (oldest epoch first, as `ClipLoader` draws), its loss on
   the generated frames = base(timestep) * task factor * exp(0.8 (h - 0.4) + N(0, 0.15)) * (1 - 0.3 progress),
   fed to `observe_sample_losses` and `observe_task_loss`. One process per rank: the ranks' bin scores and loss
   distributions are not pooled here as `sync()` pools them in training (each rank learns from its own losses only).
3. Schemes: `paced` (rdtf now: `EpochPacer` with the curriculum's weights, `curriculum.pacing_passes` passes),
   `issue14` (each streamed row admitted with probability = its weight, turned-away rows wait for the next epoch: the
   loader before this change, with today's weights), `uniform` (every draw uniform over the rank's share, with
   replacement). Coverage = share of rows trained at least once, per decile of static difficulty over all rows.
4. Memory per rank: the numpy arrays the curriculum and the pacer hold for the share; checkpoint per rank: the
   pickled curriculum and loader state, as `trainer_state-rank{r}.pt` holds them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import pickle
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rdtf.trainer.curriculum import TASK_GROUP, Curriculum, CurriculumConfig  # noqa: E402
from rdtf.trainer.pacing import EpochPacer  # noqa: E402

ROWS_PER_FILE = 128  # pipeline ray.rows_per_shard
BUFFER = 256  # data.shuffle_buffer default
TASK_FACTOR = {"generation": 1.0, "interpolation": 0.6, "prediction": 0.75}  # easy tasks lose less
SCHEMES = ("paced", "issue14", "uniform")


def make_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    static = rng.beta(5, 8, n).astype(np.float32)
    hardness = np.clip(static + rng.normal(0, 0.1, n), 0, 1)
    return static, hardness


def share_of(rank: int, ranks: int, n: int) -> np.ndarray:
    """Global row ids of `rank`'s files (every ranks-th file of ROWS_PER_FILE rows), in file order."""
    files = np.arange(rank, -(-n // ROWS_PER_FILE), ranks)
    return np.concatenate([np.arange(f * ROWS_PER_FILE, min((f + 1) * ROWS_PER_FILE, n)) for f in files])


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """As `ParquetRows.epoch_order`: the files in a seeded order, rows in file order."""
    starts = np.arange(0, num_rows, ROWS_PER_FILE)
    order = np.random.default_rng([seed, epoch]).permutation(len(starts))
    return np.concatenate([np.arange(starts[f], min(starts[f] + ROWS_PER_FILE, num_rows)) for f in order])


def array_bytes(*objects: Any) -> int:
    return sum(v.nbytes for o in objects for v in vars(o).values() if isinstance(v, np.ndarray))


def simulate(job: tuple[str, int, int, int, float, int, int]) -> dict[str, Any]:
    """One rank of one scheme: draws per row at 1 and `epochs` epochs, the order of the first epoch, its state."""
    scheme, rank, ranks, n, epochs, length, seed = job
    static_all, hardness_all = make_rows(n, seed)
    rows = share_of(rank, ranks, n)
    static, hardness = static_all[rows], hardness_all[rows]
    share = len(rows)
    config = CurriculumConfig(length=length)
    curriculum = Curriculum(config, seed)
    curriculum.bind(static)
    rng = np.random.default_rng([seed, rank, 1])
    steps = int(round(epochs * share))
    trained = np.zeros(share, dtype=np.int32)
    after_one = None
    first_epoch = np.empty(share, dtype=np.int64)  # the rows of the first `share` draws, in order
    pacer = EpochPacer(share, lambda e: epoch_order(share, seed, e), config.pacing_passes, seed, rank)
    buffer: list[tuple[int, int]] = []  # (epoch, row)
    stream = {"epoch": 0, "cursor": 0, "order": epoch_order(share, seed, 0)}
    started = time.perf_counter()

    def refill(step: int) -> None:
        missing = BUFFER - len(buffer)
        if scheme == "paced":
            buffer.extend((p[0], r) for p, r in pacer.take(missing, step, curriculum.sample_weights))
            return
        while len(buffer) < BUFFER:  # issue14: admit with probability = weight, a rejected row waits an epoch
            if stream["cursor"] == share:
                stream["epoch"] += 1
                stream.update(cursor=0, order=epoch_order(share, seed, stream["epoch"]))
            row = int(stream["order"][stream["cursor"]])
            stream["cursor"] += 1
            if rng.random() < curriculum.sample_weights(np.array([row]), step)[0]:
                buffer.append((stream["epoch"], row))

    for step in range(steps):
        task = curriculum.task_for_step(step)
        if scheme == "uniform":
            row = int(rng.integers(share))
        else:
            refill(step)
            first = min(e for e, _ in buffer)
            oldest = [i for i, (e, _) in enumerate(buffer) if e == first]
            row = buffer.pop(oldest[int(rng.integers(len(oldest)))])[1]
        timestep = int(rng.integers(1000))
        base = (0.2 + 0.8 * timestep / 1000) * TASK_FACTOR[TASK_GROUP[task]] * (1 - 0.3 * step / steps)
        loss = base * float(np.exp(0.8 * (hardness[row] - 0.4) + rng.normal(0, 0.15)))
        curriculum.observe_sample_losses(np.array([row]), np.array([loss]), task, np.array([timestep]))
        curriculum.observe_task_loss(task, loss)
        trained[row] += 1
        if step < share:
            first_epoch[step] = row
        if step == min(share, steps) - 1:  # one epoch (or the whole run when it is shorter, e.g. to measure memory)
            after_one = trained.copy()
    loader_state = {"pacer": pacer.state_dict(), "buffer": [((e, 0), r) for e, r in buffer], "draws": steps}
    return {
        "scheme": scheme,
        "rank": rank,
        "rows": rows,
        "after_one": after_one,
        "after_all": trained,
        "first_epoch": first_epoch[: min(share, steps)],
        "memory_bytes": array_bytes(curriculum.samples, pacer),  # the pacer's cached epoch order included
        "checkpoint_bytes": len(pickle.dumps({"curriculum": curriculum.state_dict(), "data": loader_state})),
        "seconds": time.perf_counter() - started,
    }


def summarise(results: list[dict[str, Any]], n: int, seed: int) -> dict[str, Any]:
    static, hardness = make_rows(n, seed)
    edges = np.quantile(static, np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges, static, side="right") - 1, 0, 9)
    summary: dict[str, Any] = {}
    for scheme in SCHEMES:
        parts = [r for r in results if r["scheme"] == scheme]
        if not parts:
            continue
        rows = np.concatenate([r["rows"] for r in parts])
        row = {}
        for name in ("after_one", "after_all"):
            count = np.zeros(n, dtype=np.int32)
            count[rows] = np.concatenate([r[name] for r in parts])
            covered = np.bincount(decile[rows], weights=count[rows] > 0, minlength=10)
            row[name] = (covered / np.bincount(decile[rows], minlength=10)).tolist()
            row[f"{name}_total"] = float((count[rows] > 0).mean())
        tenths = np.array([np.array_split(static[r["rows"][r["first_epoch"]]], 10) for r in parts], dtype=object)
        row["first_epoch_static_by_tenth"] = [float(np.mean(np.concatenate(tenths[:, t]))) for t in range(10)]
        hard = np.array([np.array_split(hardness[r["rows"][r["first_epoch"]]], 10) for r in parts], dtype=object)
        row["first_epoch_hardness_by_tenth"] = [float(np.mean(np.concatenate(hard[:, t]))) for t in range(10)]
        row["memory_bytes_max"] = max(r["memory_bytes"] for r in parts)
        row["checkpoint_bytes_max"] = max(r["checkpoint_bytes"] for r in parts)
        row["seconds"] = sum(r["seconds"] for r in parts)
        summary[scheme] = row
    return summary


def markdown(summary: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    lines = [
        f"{meta['machine']}; {meta['date']}; commit {meta['commit']}; {args.rows:,} rows, {args.ranks} ranks, "
        f"{args.epochs} epochs, curriculum.length {args.length}, seed {args.seed}; {meta['seconds']:.0f} s.",
        "",
        "Rows trained at least once, per decile of static difficulty (1 = easiest):",
        "",
        "| scheme | after | " + " | ".join(f"d{d}" for d in range(1, 11)) + " | all |",
        "|---|---|" + "---|" * 11,
    ]
    for scheme, row in summary.items():
        for name, label in (("after_one", "1 epoch"), ("after_all", f"{args.epochs} epochs")):
            cells = " | ".join(f"{100 * v:.1f}%" for v in row[name])
            lines.append(f"| {scheme} | {label} | {cells} | {100 * row[f'{name}_total']:.1f}% |")
    lines += [
        "",
        "Mean static difficulty (and hidden hardness) of the rows drawn, per tenth of the first epoch:",
        "",
        "| scheme | " + " | ".join(f"t{t}" for t in range(1, 11)) + " |",
        "|---|" + "---|" * 10,
    ]
    for scheme, row in summary.items():
        cells = zip(row["first_epoch_static_by_tenth"], row["first_epoch_hardness_by_tenth"], strict=True)
        lines.append(f"| {scheme} | " + " | ".join(f"{s:.3f} ({h:.3f})" for s, h in cells) + " |")
    lines += ["", "| scheme | state in memory per rank (max) | checkpoint per rank (max) |", "|---|---|---|"]
    for scheme, row in summary.items():
        lines.append(
            f"| {scheme} | {row['memory_bytes_max'] / 2**20:.2f} MiB | {row['checkpoint_bytes_max'] / 2**20:.2f} MiB |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=1.2)
    parser.add_argument("--length", type=int, default=50_000, help="curriculum.length (paper: 50K steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    jobs = [
        (s, r, args.ranks, args.rows, args.epochs, args.length, args.seed) for s in SCHEMES for r in range(args.ranks)
    ]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        results = pool.map(simulate, jobs, chunksize=1)
    summary = summarise(results, args.rows, args.seed)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit.stdout.strip(),
        "seconds": time.perf_counter() - started,
    }
    text = markdown(summary, args, meta)
    print(text)
    if args.out_md:
        args.out_md.write_text(text + "\n")
    if args.out_json:
        args.out_json.write_text(
            json.dumps({"args": vars(args) | {"out_json": None, "out_md": None}, **meta, "summary": summary}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
