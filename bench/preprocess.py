"""Benchmark of `rdtf preprocess`: throughput against bare GIF decoding, and peak memory against input count.

Run from the repository root (needs the shared sticker corpus beside the checkout, ../shared/data/stickers):

    .venv/bin/python bench/preprocess.py                      # P=2, N=299, 10xN=2990, 3 rounds: about 8 min on 2 CPUs
    .venv/bin/python bench/preprocess.py --processes 4 --n 100 --out-md /tmp/preprocess.md

Everything is measured in one run, each number as a ratio against a baseline measured in the same run:

1. Throughput. `pipeline.runner.run_preprocess` on the 299 real stickers (manifest.csv, so with captions) into a fresh
   output folder, on an embedded Ray with P CPUs, against bare decoding of the same files with P processes (a
   `multiprocessing` Pool whose tasks open one GIF with Pillow and convert every frame to RGBA). Two pipeline
   numbers: the whole run (Ray start-up and shutdown included), and the work alone: the whole run minus a second run
   of the same job on the finished output, which discovers the inputs and starts and stops Ray but has nothing left
   to do. The work is the hash pass plus the main pass. Each of the three is timed REPEATS times (bare decoding and
   pipeline interleaved) and the medians are used. Ratio = pipeline GIFs/s / bare GIFs/s; the issue's goal is at
   least 0.5. The files are read once before any timing, so every timed pass reads from the page cache.
2. Peak memory. The sum of the RSS of every Ray process (this driver, raylet, gcs_server, agents, workers), sampled
   every 0.2 s by a background thread, for a run on N inputs and one on 10xN inputs, in each of --rounds (3)
   rounds. The inputs are distinct variants of the stickers (a few unique bytes after the GIF trailer: decoded
   identically, different sha256, so nothing is de-duplicated away), N = 299 by default so that both runs are cut
   into several tasks of the default `rows_per_shard` and can run P of them at once (the table says how many did).
   The processes counted are the driver's descendants (Ray's daemons and workers are when Ray is embedded) plus,
   in case one is not, any process whose command line names the RAY_TMPDIR this benchmark sets; the table says how
   many were found only that way.
   Ratio = peak(10N) / peak(N) (the highest of the rounds); the goal is that peak memory does not grow with the
   number of inputs (a streaming pipeline). RSS counts the object store's shared pages once in every process that
   touched them, so the sum is an upper bound. The same runs give the steady state: 9N inputs over the time the
   10N run took beyond the N run (the fixed costs cancel), as a ratio against bare decoding of the same 10N files
   timed at the start of the same round; the goal is at least 0.6. And the whole run at 10N: the 10N run's wall
   time (Ray's start and stop included) against that bare decoding: at N = 299 Ray's fixed costs alone take more
   than the whole budget that 0.5 allows (docs/benchmarks.md), at 10N they are a tenth as large a share. Both
   ratios are the medians of the rounds: this machine's speed drifts by 10-20% over minutes, and one round against
   a baseline timed minutes apart read anywhere from 0.47 to 0.69 with the same code.
3. Where the time goes: every stage of the main pass (and the hash pass) called directly, in this process, on a
   subset of the stickers, with the share of each stage; and bare decoding of the same subset in this process.

It sets RAY_TMPDIR to a fresh short folder under /tmp and RAY_USAGE_STATS_ENABLED=0, writes everything under temp
folders that it deletes at the end, and prints a markdown table (machine, date, P, each number) at the end; with
--out-md it also writes that table to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from PIL import Image, ImageSequence

REPO = Path(__file__).resolve().parent.parent
STICKERS = REPO.parent / "shared" / "data" / "stickers"
SAMPLE_PERIOD_S = 0.2
SCALE = 10  # the large memory run has SCALE x N inputs
SEED = 0  # which stickers the variants and the stage subset use
REPEATS = 3  # bare decoding, pipeline, and pipeline on its finished output: each timed this often, median reported
# A worker's process title while it runs a pipeline task (the read fused into the first leg, or a later leg).
BUSY_WORKERS = ("ray::ReadBlockFiles->", "ray::MapBatches")

if str(REPO) not in sys.path:  # run as a script from anywhere: the checkout's packages come first
    sys.path.insert(0, str(REPO))

from provenance import code_version, machine  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Inputs


def sticker_files(stickers: Path) -> list[tuple[Path, str]]:
    """(path, caption) of every sticker in the manifest, in manifest order."""
    with open(stickers / "manifest.csv", newline="") as f:
        return [(stickers / row["file"], row["text"]) for row in csv.DictReader(f)]


def warm_page_cache(paths: list[Path]) -> int:
    """Read every file once so that no timed pass pays for the disk; the total bytes."""
    return sum(len(p.read_bytes()) for p in paths)


def write_variants(stickers: list[tuple[Path, str]], count: int, small: int, folder: Path) -> list[Path]:
    """`count` distinct GIFs: the stickers in a seeded shuffle, cycled, each with a unique tail after its trailer.

    The GIF parsers (pipeline.gif and Pillow) stop at the trailer, so a variant decodes exactly like its sticker,
    but its bytes (and so its sample_id) are its own. Writes manifest.csv naming all of them and small.csv naming
    the first `small`; returns the paths in variant order.
    """
    from rdtf.pipeline.gif import parse_gif

    order = list(range(len(stickers)))
    random.Random(SEED).shuffle(order)
    folder.mkdir(parents=True)
    paths: list[Path] = []
    rows: list[dict[str, str]] = []
    cache: dict[int, bytes] = {}
    for i in range(count):
        source, caption = stickers[order[i % len(order)]]
        data = cache.setdefault(order[i % len(order)], source.read_bytes())
        tail = f"rdtf-bench-{i}".encode()
        if i < len(order) and parse_gif(data).truncated:  # checked once per sticker
            raise ValueError(f"{source} has no GIF trailer: a tail after its end would be read as image data")
        path = folder / f"v{i:06d}_{source.name}"
        path.write_bytes(data + tail)
        paths.append(path)
        rows.append({"file": path.name, "text": caption})
    for name, part in (("manifest.csv", rows), ("small.csv", rows[:small])):
        with open(folder / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "text"])
            writer.writeheader()
            writer.writerows(part)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Bare decoding: the baseline


def decode_all_frames(path: str) -> int:
    """One Pool task: open a GIF with Pillow and decode every frame to RGBA; the frame count."""
    frames = 0
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            frame.convert("RGBA")
            frames += 1
    return frames


def bare_decode(paths: list[Path], processes: int) -> tuple[float, int]:
    """Seconds (Pool start to last result) and frames decoded, for all `paths` on `processes` processes."""
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        frames = sum(pool.imap_unordered(decode_all_frames, [str(p) for p in paths], chunksize=1))
    return time.perf_counter() - start, frames


# ----------------------------------------------------------------------------------------------------------------
# Memory of the Ray processes


def process_kind(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    name = proc.name()
    cmdline = " ".join(proc.cmdline())
    if "raylet" in name or "/raylet " in cmdline:
        return "raylet"
    if "gcs_server" in name or "gcs_server" in cmdline:
        return "gcs_server"
    if name.startswith("ray::") or "default_worker.py" in cmdline or cmdline.startswith("ray::"):
        return "workers"
    return "other ray"  # dashboard agent, runtime-env agent, log monitor, ...


@dataclass
class MemorySample:
    total: int  # bytes, sum of RSS
    by_kind: dict[str, int]  # bytes per process kind
    processes: int
    busy_workers: int = 0


@dataclass
class MemorySampler:
    """Samples, in a background thread, the RSS summed over this process, its descendants and RAY_TMPDIR processes."""

    ray_tmpdir: str
    period_s: float = SAMPLE_PERIOD_S
    peak: MemorySample = field(default_factory=lambda: MemorySample(0, {}, 0))
    samples: int = 0
    max_processes: int = 0
    max_busy_workers: int = 0  # pipeline tasks running at once
    only_by_cmdline: set[int] = field(default_factory=set)  # Ray processes that were not descendants of the driver
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> MemorySample:
        me = psutil.Process()
        procs = {me.pid: me}
        try:
            procs.update({p.pid: p for p in me.children(recursive=True)})
        except psutil.Error:
            pass
        descendants = set(procs)
        for p in psutil.process_iter(["cmdline"]):
            cmdline = p.info.get("cmdline") or []
            if p.pid not in procs and any(self.ray_tmpdir in arg for arg in cmdline):
                procs[p.pid] = p
                self.only_by_cmdline.add(p.pid)
        total = 0
        by_kind: Counter[str] = Counter()
        counted = busy = 0
        for pid, proc in procs.items():
            try:
                rss = proc.memory_info().rss
                kind = process_kind(proc, me.pid) if pid in descendants else "not descendants"
                busy += proc.name().startswith(BUSY_WORKERS)
            except psutil.Error:  # it exited between the listing and now
                continue
            total += rss
            by_kind[kind] += rss
            counted += 1
        return MemorySample(total, dict(by_kind), counted, busy)

    def _loop(self) -> None:
        while not self._stop.is_set():
            current = self.sample()
            self.samples += 1
            self.max_processes = max(self.max_processes, current.processes)
            self.max_busy_workers = max(self.max_busy_workers, current.busy_workers)
            if current.total > self.peak.total:
                self.peak = current
            self._stop.wait(self.period_s)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def wait_for_children_to_exit(timeout_s: float = 30.0) -> list[int]:
    """After ray.shutdown: wait until this process has no children left; the pids still there after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        children = psutil.Process().children(recursive=True)
        if not children or time.monotonic() > deadline:
            return [c.pid for c in children]
        time.sleep(0.2)


def stop_own_children() -> None:
    """Terminate (then kill) what is left of the processes this benchmark started, by pid."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


# ----------------------------------------------------------------------------------------------------------------
# Pipeline runs


@dataclass
class PipelineRun:
    processed: int  # written + rejected by this run
    wall_s: float
    written: int
    rejected: dict[str, int]
    memory: MemorySampler  # empty when memory was not measured

    @property
    def rate(self) -> float:
        return self.processed / self.wall_s


def run_pipeline(
    inputs: list[str], output: Path, processes: int, rows_per_shard: int, ray_tmpdir: str, measure_memory: bool
) -> PipelineRun:
    """One `run_preprocess` call, timed from outside; with the memory sampler running around it if asked."""
    from rdtf.pipeline.config import PreprocessConfig, RayConfig
    from rdtf.pipeline.runner import run_preprocess

    cfg = PreprocessConfig(ray=RayConfig(num_cpus=processes, rows_per_shard=rows_per_shard))
    sampler = MemorySampler(ray_tmpdir)
    with sampler if measure_memory else contextlib.nullcontext():
        start = time.perf_counter()
        summary = run_preprocess(inputs, str(output), cfg, show_progress=False)
        wall = time.perf_counter() - start
    left = wait_for_children_to_exit()
    if left:
        raise RuntimeError(f"processes {left} were still running 30 s after the pipeline returned")
    done = summary.written + sum(summary.rejected.values())
    return PipelineRun(done, wall, summary.written, dict(summary.rejected), sampler)


# ----------------------------------------------------------------------------------------------------------------
# Stages in this process


def time_stages(
    paths: list[Path], captions: list[str], output: Path, rows_per_batch: int
) -> tuple[dict[str, float], int]:
    """Seconds per stage over `paths`, each stage called directly on batches in this process; and rows written."""
    from rdtf.pipeline.config import PreprocessConfig
    from rdtf.pipeline.hash_inputs import HashStage
    from rdtf.pipeline.runner import main_stages
    from rdtf.pipeline.write import ShardWriter

    cfg = PreprocessConfig()
    hash_stage = HashStage(cfg.decode.max_file_bytes)
    stages = main_stages(cfg)
    sink = ShardWriter(str(output), cfg.decode.frame_size, "bench")
    seconds: Counter[str] = Counter()
    written = 0
    for stage in [hash_stage, *stages]:
        stage.setup()
    for begin in range(0, len(paths), rows_per_batch):
        chunk = paths[begin : begin + rows_per_batch]
        batch: dict[str, list[Any]] = {"source_uri": [str(p.resolve()) for p in chunk]}
        t = time.perf_counter()
        batch = hash_stage(batch)
        seconds["HashStage (hash pass)"] += time.perf_counter() - t
        batch["caption"] = captions[begin : begin + rows_per_batch]
        batch["source_id"] = [None] * len(chunk)
        for stage in stages:
            t = time.perf_counter()
            batch = stage(batch)
            seconds[type(stage).__name__] += time.perf_counter() - t
        written += sum(r is None for r in batch["reject_reason"])
        t = time.perf_counter()
        sink(batch)
        seconds["ShardWriter (Parquet)"] += time.perf_counter() - t
    return dict(seconds), written


# ----------------------------------------------------------------------------------------------------------------
# The three measurements; each returns the rows of the final table


Rows = list[tuple[str, str]]


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def measure_throughput(
    stickers: Path, paths: list[Path], processes: int, rows_per_shard: int, ray_tmpdir: str, work: Path
) -> Rows:
    """Bare decoding and the pipeline, REPEATS times each, interleaved; then the job again on a finished output."""
    n = len(paths)
    total_bytes = warm_page_cache(paths)
    print(f"{n} stickers, {total_bytes / 2**20:.1f} MiB; P={processes}, rows_per_shard={rows_per_shard}", flush=True)
    manifest = [str(stickers / "manifest.csv")]
    bare: list[float] = []
    full: list[PipelineRun] = []
    for i in range(REPEATS):
        seconds, frames = bare_decode(paths, processes)
        bare.append(seconds)
        full.append(run_pipeline(manifest, work / f"out-stickers-{i}", processes, rows_per_shard, ray_tmpdir, False))
        print(
            f"bare decoding {seconds:.1f} s ({frames} frames); pipeline {full[-1].wall_s:.1f} s "
            f"({full[-1].written} written, {full[-1].rejected})",
            flush=True,
        )
    # Nothing left to do: discovery, the resume check, Ray start and stop, the accounting check and the card.
    idle = [
        run_pipeline(manifest, work / "out-stickers-0", processes, rows_per_shard, ray_tmpdir, False).wall_s
        for _ in range(REPEATS)
    ]
    print(f"same job on its finished output: {', '.join(f'{s:.1f}' for s in idle)} s", flush=True)
    bare_s = statistics.median(bare)
    full_s = statistics.median(run.wall_s for run in full)
    idle_s = statistics.median(idle)
    work_s = full_s - idle_s
    bare_rate = n / bare_s
    if any(run.processed != n for run in full):
        raise RuntimeError(f"a pipeline run did not process all {n} stickers")

    def each(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    rows = [
        ("inputs (throughput)", f"{n} real stickers (manifest.csv), {total_bytes / 2**20:.1f} MiB, {frames} frames"),
        (
            "bare decoding (Pillow, every frame to RGBA), P processes",
            f"{bare_s:.1f} s = {bare_rate:.1f} GIFs/s (median of {each(bare)} s)",
        ),
        (
            "pipeline, whole run",
            f"{full_s:.1f} s = {n / full_s:.1f} GIFs/s (median of {each([r.wall_s for r in full])} s; "
            f"{full[0].written} written, {sum(full[0].rejected.values())} rejected)",
        ),
        ("same job on its finished output (discovery, Ray start/stop)", f"{idle_s:.1f} s (median of {each(idle)} s)"),
        (
            "pipeline, work alone = whole run - the above (hash + main pass)",
            f"{work_s:.1f} s = {n / work_s:.1f} GIFs/s",
        ),
        ("**ratio pipeline / bare, whole run** (goal >= 0.5)", f"**{n / full_s / bare_rate:.2f}**"),
        ("**ratio pipeline / bare, work alone** (goal >= 0.5)", f"**{n / work_s / bare_rate:.2f}**"),
    ]
    return rows


def peak_breakdown(sampler: MemorySampler) -> str:
    parts = sorted(sampler.peak.by_kind.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{kind} {mib(size)}" for kind, size in parts) + f"; {sampler.peak.processes} processes"


def measure_memory(
    stickers: list[tuple[Path, str]],
    n: int,
    processes: int,
    rows_per_shard: int,
    ray_tmpdir: str,
    work: Path,
    rounds: int,
) -> Rows:
    """Peak memory of the runs on N and 10xN inputs; the steady state, the rate at the margin between them (the fixed
    costs, Ray's start and stop among them, cancel out); and the whole 10xN run. `rounds` times, each round's ratios
    against bare decoding of the same 10xN files timed just before its runs (this machine's speed drifts by 10-20%
    over minutes: a baseline from another moment moved the ratios by as much), medians reported."""
    variants = work / "variants"
    paths = write_variants(stickers, SCALE * n, n, variants)
    warm_page_cache(paths)
    steady_ratios: list[float] = []
    whole_ratios: list[float] = []
    details: list[str] = []
    peaks: dict[int, PipelineRun] = {}  # size -> its run with the highest peak
    escaped: set[int] = set()  # Ray processes found only by RAY_TMPDIR, in any run
    for round_ in range(1, rounds + 1):
        bare_s, _ = bare_decode(paths, processes)
        print(f"round {round_}: bare decoding of {len(paths)} variants: {bare_s:.1f} s", flush=True)
        runs: list[PipelineRun] = []
        for size, manifest in ((n, "small.csv"), (SCALE * n, "manifest.csv")):
            output = work / f"out-{size}"
            run = run_pipeline([str(variants / manifest)], output, processes, rows_per_shard, ray_tmpdir, True)
            shutil.rmtree(output)
            if run.processed != size:
                raise RuntimeError(f"the run on {size} inputs processed {run.processed}: were some de-duplicated?")
            print(f"round {round_}: {size} inputs: {run.wall_s:.1f} s, peak {mib(run.memory.peak.total)}", flush=True)
            runs.append(run)
            escaped |= run.memory.only_by_cmdline
            if size not in peaks or run.memory.peak.total > peaks[size].memory.peak.total:
                peaks[size] = run
        n_run, large_run = runs
        steady = (large_run.processed - n_run.processed) / (large_run.wall_s - n_run.wall_s)
        steady_ratios.append(steady / (large_run.processed / bare_s))
        whole_ratios.append(bare_s / large_run.wall_s)
        details.append(
            f"{bare_s:.1f} s bare, {n_run.wall_s:.1f} s N, {large_run.wall_s:.1f} s {SCALE}xN: steady {steady:.1f} "
            f"GIFs/s against bare {large_run.processed / bare_s:.1f} = {steady_ratios[-1]:.2f}, whole "
            f"{whole_ratios[-1]:.2f}"
        )
    small, large = peaks[n], peaks[SCALE * n]  # the runs with the highest peaks (maybe from different rounds)
    rows = [
        (
            f"highest peak RSS of all Ray processes, {label} = {run.processed} inputs",
            f"{mib(run.memory.peak.total)} ({run.wall_s:.0f} s run, {run.rate:.1f} GIFs/s, at most "
            f"{run.memory.max_busy_workers} tasks at once; at the peak: {peak_breakdown(run.memory)})",
        )
        for label, run in (("N", small), (f"{SCALE}xN", large))
    ]
    listed = ", ".join(f"{r:.2f}" for r in steady_ratios)
    return rows + [
        *[(f"round {i} of {rounds}", detail) for i, detail in enumerate(details, 1)],
        (
            f"**ratio pipeline / bare, steady state** (goal >= 0.6): ({SCALE}N - N) / (T({SCALE}N) - T(N)) against "
            f"bare decoding of the {SCALE}N files, median of the rounds ({listed})",
            f"**{statistics.median(steady_ratios):.2f}**",
        ),
        (
            f"**ratio pipeline / bare, whole run on {SCALE}xN = {large.processed} inputs** (Ray's start and stop "
            f"included; memory sampled), median of the rounds ({', '.join(f'{r:.2f}' for r in whole_ratios)})",
            f"**{statistics.median(whole_ratios):.2f}**",
        ),
        (
            f"**ratio peak({SCALE}N) / peak(N)** (goal: ~1, no growth), highest peaks",
            f"**{large.memory.peak.total / small.memory.peak.total:.2f}**",
        ),
        ("Ray processes that were not descendants of the driver (found by RAY_TMPDIR), any run", str(len(escaped))),
        (f"memory samples (every {SAMPLE_PERIOD_S} s)", f"{small.memory.samples} + {large.memory.samples}"),
    ]


def measure_stages(stickers: list[tuple[Path, str]], count: int, rows_per_shard: int, work: Path) -> Rows:
    subset = random.Random(SEED).sample(stickers, min(count, len(stickers)))
    paths = [p for p, _ in subset]
    seconds, _ = time_stages(paths, [c for _, c in subset], work / "out-stages", rows_per_shard)
    start = time.perf_counter()
    frames = sum(decode_all_frames(str(p)) for p in paths)
    bare_s = time.perf_counter() - start
    total = sum(seconds.values())
    rows = [
        (
            f"all stages in one process, {len(paths)} random stickers",
            f"{total:.1f} s = {len(paths) / total:.1f} GIFs/s (bare decoding of their {frames} frames in one process: "
            f"{bare_s:.1f} s = {len(paths) / bare_s:.1f} GIFs/s)",
        )
    ]
    return rows + [(f"  {name}", f"{s:.2f} s ({100 * s / total:.0f}%)") for name, s in seconds.items()]


# ----------------------------------------------------------------------------------------------------------------


def markdown_table(rows: Rows) -> str:
    return "\n".join(["| what | value |", "|---|---|", *(f"| {what} | {value} |" for what, value in rows)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--processes", "-P", type=int, default=2, help="Ray CPUs and bare-decoding processes (2)")
    parser.add_argument("--n", type=int, default=299, help=f"inputs of the small memory run, {SCALE}x that the large")
    parser.add_argument("--rows-per-shard", type=int, default=None, help="RayConfig.rows_per_shard (its default)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the N and 10xN runs, medians reported (3)")
    parser.add_argument("--stage-subset", type=int, default=60, help="stickers timed stage by stage in-process (60)")
    parser.add_argument("--out-md", type=Path, default=None, help="also write the markdown table to this file")
    parser.add_argument("--stickers", type=Path, default=STICKERS, help="the shared sticker corpus")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.n < 1 or args.rounds < 1 or args.stage_subset < 0:
        parser.error("--processes, --n and --rounds must be at least 1, --stage-subset at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.stickers / "manifest.csv").is_file():
        print(f"the sticker corpus is not at {args.stickers} (see --stickers)", file=sys.stderr)
        return 2
    from rdtf.pipeline.config import DecodeConfig, RayConfig

    rows_per_shard = args.rows_per_shard or RayConfig().rows_per_shard
    ray_tmpdir = tempfile.mkdtemp(prefix="rdtf-bench-ray-", dir="/tmp")  # short: unix socket paths < 107 chars
    work = Path(tempfile.mkdtemp(prefix="rdtf-bench-"))
    os.environ["RAY_TMPDIR"] = ray_tmpdir
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray  # once here, so that no timed run pays for the import

    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    rows: Rows = [
        ("machine", machine()),
        ("date", started.strftime("%Y-%m-%d %H:%M UTC")),
        ("code", code_version()),
        ("load average (1 min) at the start", f"{os.getloadavg()[0]:.2f}"),
        ("P (Ray CPUs = bare-decoding processes)", str(args.processes)),
        ("rows_per_shard (inputs per task)", str(rows_per_shard)),
        ("decode.resample (the filter that shrinks frames larger than the canvas)", DecodeConfig().resample),
    ]
    try:
        stickers = sticker_files(args.stickers)
        paths = [p for p, _ in stickers]
        rows += measure_throughput(args.stickers, paths, args.processes, rows_per_shard, ray_tmpdir, work)
        rows += measure_memory(stickers, args.n, args.processes, rows_per_shard, ray_tmpdir, work, args.rounds)
        if args.stage_subset:
            rows += measure_stages(stickers, args.stage_subset, rows_per_shard, work)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_own_children()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    rows.append(("benchmark wall time", f"{time.perf_counter() - clock:.0f} s"))
    markdown = markdown_table(rows)
    print(f"\n{markdown}")
    if args.out_md is not None:
        args.out_md.write_text(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
