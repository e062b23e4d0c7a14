"""Benchmark of `rdtf preprocess`: throughput against bare GIF decoding, and peak memory against input count.

Run from the repository root (needs the shared sticker corpus beside the checkout, ../shared/data/stickers):

    .venv/bin/python bench/preprocess.py                      # P=2 processes, N=299, 10xN=2990
    .venv/bin/python bench/preprocess.py --processes 4 --n 100 --out-md /tmp/preprocess.md

Everything is measured in one run, each number as a ratio against a baseline measured in the same run:

1. Throughput. `pipeline.runner.run_preprocess` on the 299 real stickers (manifest.csv, so with captions) into a fresh
   output folder, on an embedded Ray with P CPUs, against bare decoding of the same files with P processes (a
   `multiprocessing` Pool whose tasks open one GIF with Pillow and convert every frame to RGBA). Two pipeline
   numbers: the whole run (Ray start-up and shutdown included), and the work alone: the whole run minus a second run
   of the same job on the finished output, which discovers the inputs and starts and stops Ray but has nothing left
   to do. The work is the hash pass plus the main pass. Ratio = pipeline GIFs/s / bare GIFs/s; the issue's goal is
   at least 0.5. The files are read once before any timing, so every timed pass reads from the page cache.
2. Peak memory. The sum of the RSS of every Ray process (this driver, raylet, gcs_server, agents, workers), sampled
   every 0.2 s by a background thread, for a run on N inputs and one on 10xN inputs. The inputs are distinct
   variants of the stickers (a few unique bytes after the GIF trailer: decoded identically, different sha256, so
   nothing is de-duplicated away), N = 299 by default so that both runs have at least P tasks of the default
   `rows_per_shard` and run P workers at once. The processes counted are the driver's descendants (Ray's daemons
   and workers are when Ray is embedded) plus, in case one is not, any process whose command line names the
   RAY_TMPDIR this benchmark sets; the table says how many were found only that way. Ratio = peak(10N) / peak(N);
   the goal is that peak memory does not grow with the number of inputs (a streaming pipeline). RSS counts the
   object store's shared pages once in every process that touched them, so the sum is an upper bound.
3. Where the time goes: every stage of the main pass (and the hash pass) called directly, in this process, on a
   subset of the stickers, with the share of each stage; and bare decoding of the same subset in this process.

It sets RAY_TMPDIR to a fresh short folder under /tmp and RAY_USAGE_STATS_ENABLED=0, writes everything under temp
folders that it deletes at the end, and prints a markdown table (machine, date, P, each number) at the end; with
--out-md it also writes that table to a file.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import multiprocessing
import os
import platform
import random
import shutil
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
GIF_TRAILER = b"\x3b"
SEED = 0  # which stickers the variants and the stage subset use

if str(REPO) not in sys.path:  # run as a script from anywhere: the checkout's packages come first
    sys.path.insert(0, str(REPO))


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
    """`count` distinct GIFs: the stickers in a seeded shuffled order, cycled, each with a unique tail after the trailer.

    The GIF parsers (pipeline.gif and Pillow) stop at the trailer, so a variant decodes exactly like its sticker,
    but its bytes (and so its sample_id) are its own. Writes manifest.csv naming all of them and small.csv naming
    the first `small`; returns the paths in variant order.
    """
    order = list(range(len(stickers)))
    random.Random(SEED).shuffle(order)
    folder.mkdir(parents=True)
    paths: list[Path] = []
    rows: list[dict[str, str]] = []
    cache: dict[int, bytes] = {}
    for i in range(count):
        source, caption = stickers[order[i % len(order)]]
        data = cache.setdefault(order[i % len(order)], source.read_bytes())
        if not data.endswith(GIF_TRAILER):
            raise ValueError(f"{source} does not end with the GIF trailer; a tail after it would not be ignored")
        path = folder / f"v{i:06d}_{source.name}"
        path.write_bytes(data + f"rdtf-bench-{i}".encode())
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


@dataclass
class MemorySampler:
    """Samples, in a background thread, the RSS summed over this process, its descendants and RAY_TMPDIR processes."""

    ray_tmpdir: str
    period_s: float = SAMPLE_PERIOD_S
    peak: MemorySample = field(default_factory=lambda: MemorySample(0, {}, 0))
    samples: int = 0
    max_processes: int = 0
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
        counted = 0
        for pid, proc in procs.items():
            try:
                rss = proc.memory_info().rss
                kind = process_kind(proc, me.pid) if pid in descendants else "not descendants"
            except psutil.Error:  # it exited between the listing and now
                continue
            total += rss
            by_kind[kind] += rss
            counted += 1
        return MemorySample(total, dict(by_kind), counted)

    def _loop(self) -> None:
        while not self._stop.is_set():
            current = self.sample()
            self.samples += 1
            self.max_processes = max(self.max_processes, current.processes)
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
    inputs: int
    wall_s: float
    summary_s: float
    written: int
    rejected: dict[str, int]
    memory: MemorySampler | None = None

    @property
    def rate(self) -> float:
        return self.inputs / self.wall_s


def run_pipeline(
    inputs: list[str], output: Path, processes: int, rows_per_shard: int, ray_tmpdir: str, measure_memory: bool
) -> PipelineRun:
    """One `run_preprocess` call, timed from outside; with the memory sampler running around it if asked."""
    from pipeline.config import PreprocessConfig, RayConfig
    from pipeline.runner import run_preprocess

    cfg = PreprocessConfig(ray=RayConfig(num_cpus=processes, rows_per_shard=rows_per_shard))
    sampler = MemorySampler(ray_tmpdir) if measure_memory else None
    if sampler is not None:
        sampler.__enter__()
    try:
        start = time.perf_counter()
        summary = run_preprocess(inputs, str(output), cfg, show_progress=False)
        wall = time.perf_counter() - start
    finally:
        if sampler is not None:
            sampler.__exit__()
    left = wait_for_children_to_exit()
    if left:
        raise RuntimeError(f"processes {left} were still running 30 s after the pipeline returned")
    done = summary.written + sum(summary.rejected.values())
    return PipelineRun(done, wall, summary.seconds, summary.written, dict(summary.rejected), sampler)


# ----------------------------------------------------------------------------------------------------------------
# Stages in this process


def time_stages(paths: list[Path], captions: list[str], output: Path, rows_per_batch: int) -> tuple[dict[str, float], int]:
    """Seconds per stage over `paths`, each stage called directly on batches in this process; and rows written."""
    from pipeline.config import PreprocessConfig
    from pipeline.decode import DecodeStage, ProbeStage
    from pipeline.entropy import EntropyStage
    from pipeline.filters import EntropyFilterStage, MetadataFilterStage
    from pipeline.hash_inputs import HashStage
    from pipeline.keyframes import KeyframeStage
    from pipeline.write import ShardWriter

    cfg = PreprocessConfig()
    hash_stage = HashStage(cfg.decode.max_file_bytes)
    stages = [
        ProbeStage(cfg.decode),
        MetadataFilterStage(cfg.filters),
        DecodeStage(cfg.decode),
        EntropyStage(cfg.difficulty),
        EntropyFilterStage(cfg.filters),
        KeyframeStage(),
    ]
    sink = ShardWriter(str(output), cfg.decode.frame_size)
    seconds: Counter[str] = Counter()
    written = 0
    for stage in [hash_stage, *stages]:
        stage.setup()
    for begin in range(0, len(paths), rows_per_batch):
        chunk = paths[begin : begin + rows_per_batch]
        batch: dict[str, list[Any]] = {"source_uri": [str(p.resolve()) for p in chunk]}
        t = time.perf_counter()
        batch = hash_stage(batch)
        seconds["hash (hash pass)"] += time.perf_counter() - t
        batch["caption"] = captions[begin : begin + rows_per_batch]
        batch["source_id"] = [None] * len(chunk)
        for stage in stages:
            t = time.perf_counter()
            batch = stage(batch)
            seconds[stage.name] += time.perf_counter() - t
        written += sum(r is None for r in batch["reject_reason"])
        t = time.perf_counter()
        sink(batch)
        seconds["write (PNG + Parquet)"] += time.perf_counter() - t
    return dict(seconds), written


# ----------------------------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    return f"{model}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, {platform.system()} {platform.release()}"


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def table(rows: list[tuple[str, str]]) -> str:
    lines = ["| what | value |", "|---|---|"]
    lines += [f"| {what} | {value} |" for what, value in rows]
    return "\n".join(lines)


def peak_breakdown(sampler: MemorySampler) -> str:
    parts = sorted(sampler.peak.by_kind.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{kind} {mib(size)}" for kind, size in parts) + f" ({sampler.peak.processes} processes)"


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", "-P", type=int, default=2, help="Ray CPUs and bare-decoding processes (2)")
    parser.add_argument("--n", type=int, default=299, help=f"inputs of the small memory run; the large has {SCALE}x (299)")
    parser.add_argument("--rows-per-shard", type=int, default=None, help="RayConfig.rows_per_shard (its default)")
    parser.add_argument("--stage-subset", type=int, default=60, help="stickers timed stage by stage in-process (60)")
    parser.add_argument("--out-md", type=Path, default=None, help="also write the markdown table to this file")
    parser.add_argument("--stickers", type=Path, default=STICKERS, help="the shared sticker corpus")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.n < 1 or args.stage_subset < 0:
        parser.error("--processes and --n must be at least 1, --stage-subset at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.stickers / "manifest.csv").is_file():
        print(f"the sticker corpus is not at {args.stickers} (see --stickers)", file=sys.stderr)
        return 2
    from pipeline.config import RayConfig

    rows_per_shard = args.rows_per_shard or RayConfig().rows_per_shard
    processes = args.processes
    ray_tmpdir = tempfile.mkdtemp(prefix="rdtf-bench-ray-", dir="/tmp")  # short: unix socket paths < 107 chars
    work = Path(tempfile.mkdtemp(prefix="rdtf-bench-"))
    os.environ["RAY_TMPDIR"] = ray_tmpdir
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray  # imported once here, so that no timed run pays for the import

    started = datetime.datetime.now(datetime.timezone.utc)
    bench_start = time.perf_counter()
    try:
        stickers = sticker_files(args.stickers)
        paths = [p for p, _ in stickers]
        total_bytes = warm_page_cache(paths)
        n = len(paths)
        print(f"{n} stickers, {total_bytes / 2**20:.1f} MiB; P={processes}, rows_per_shard={rows_per_shard}", flush=True)

        # 1. Throughput: bare decoding, then the pipeline, then the pipeline again on its finished output.
        bare_s, bare_frames = bare_decode(paths, processes)
        bare_rate = n / bare_s
        print(f"bare decoding: {bare_s:.1f} s, {bare_rate:.1f} GIFs/s, {bare_frames} frames", flush=True)
        manifest = [str(args.stickers / "manifest.csv")]
        full = run_pipeline(manifest, work / "out-299", processes, rows_per_shard, ray_tmpdir, measure_memory=False)
        print(f"pipeline: {full.wall_s:.1f} s, {full.rate:.1f} GIFs/s; {full.written} written, {full.rejected}", flush=True)
        idle = run_pipeline(manifest, work / "out-299", processes, rows_per_shard, ray_tmpdir, measure_memory=False)
        work_s = full.wall_s - idle.wall_s
        print(f"same job on the finished output: {idle.wall_s:.1f} s; work alone {work_s:.1f} s", flush=True)

        # 2. Peak memory: N and SCALE x N distinct inputs.
        variants = work / "variants"
        warm_page_cache(write_variants(stickers, SCALE * args.n, args.n, variants))
        small = run_pipeline([str(variants / "small.csv")], work / "out-small", processes, rows_per_shard, ray_tmpdir, True)
        print(f"N={args.n}: {small.wall_s:.1f} s, peak {mib(small.memory.peak.total)}", flush=True)
        large = run_pipeline([str(variants / "manifest.csv")], work / "out-large", processes, rows_per_shard, ray_tmpdir, True)
        print(f"{SCALE}xN={SCALE * args.n}: {large.wall_s:.1f} s, peak {mib(large.memory.peak.total)}", flush=True)
        for run, size in ((small, args.n), (large, SCALE * args.n)):
            if run.inputs != size:
                raise RuntimeError(f"the run on {size} inputs processed {run.inputs}: were some de-duplicated?")

        # 3. Where the time goes, in this process, on a subset.
        stage_rows: list[tuple[str, str]] = []
        if args.stage_subset:
            subset = random.Random(SEED).sample(stickers, min(args.stage_subset, n))
            sub_paths = [p for p, _ in subset]
            seconds, _ = time_stages(sub_paths, [c for _, c in subset], work / "out-stages", rows_per_shard)
            start = time.perf_counter()
            sub_frames = sum(decode_all_frames(str(p)) for p in sub_paths)
            sub_bare = time.perf_counter() - start
            total = sum(seconds.values())
            stage_rows.append(
                (f"stages in one process, {len(sub_paths)} stickers",
                 f"{total:.1f} s = {len(sub_paths) / total:.1f} GIFs/s (bare decoding of all {sub_frames} frames: "
                 f"{sub_bare:.1f} s = {len(sub_paths) / sub_bare:.1f} GIFs/s)")
            )
            for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
                stage_rows.append((f"  stage {name}", f"{s:.2f} s ({100 * s / total:.0f}%)"))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_own_children()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)

    not_descendants = len(small.memory.only_by_cmdline | large.memory.only_by_cmdline)
    rows = [
        ("machine", machine()),
        ("date", started.strftime("%Y-%m-%d %H:%M UTC")),
        ("P (Ray CPUs = bare-decoding processes)", str(processes)),
        ("rows_per_shard", str(rows_per_shard)),
        ("inputs (throughput)", f"{n} real stickers, {total_bytes / 2**20:.1f} MiB, {bare_frames} frames"),
        ("bare decoding, P processes", f"{bare_s:.1f} s = {bare_rate:.1f} GIFs/s"),
        ("pipeline, whole run", f"{full.wall_s:.1f} s = {full.rate:.1f} GIFs/s "
                                f"({full.written} written, {sum(full.rejected.values())} rejected)"),
        ("same job on its finished output (discovery, Ray start/stop)", f"{idle.wall_s:.1f} s"),
        ("pipeline, work alone (hash pass + main pass)", f"{work_s:.1f} s = {n / work_s:.1f} GIFs/s"),
        ("**ratio pipeline / bare, whole run** (goal >= 0.5)", f"**{full.rate / bare_rate:.2f}**"),
        ("**ratio pipeline / bare, work alone** (goal >= 0.5)", f"**{(n / work_s) / bare_rate:.2f}**"),
        (f"peak RSS of all Ray processes, N = {args.n}",
         f"{mib(small.memory.peak.total)} ({small.wall_s:.0f} s run; {peak_breakdown(small.memory)})"),
        (f"peak RSS of all Ray processes, {SCALE}xN = {SCALE * args.n}",
         f"{mib(large.memory.peak.total)} ({large.wall_s:.0f} s run, {large.rate:.1f} GIFs/s; "
         f"{peak_breakdown(large.memory)})"),
        (f"**ratio peak({SCALE}N) / peak(N)** (goal: ~1, no growth)",
         f"**{large.memory.peak.total / small.memory.peak.total:.2f}**"),
        ("Ray processes not descendants of the driver (found by RAY_TMPDIR)", str(not_descendants)),
        ("memory samples (every 0.2 s)", f"{small.memory.samples} + {large.memory.samples}"),
        *stage_rows,
        ("benchmark wall time", f"{time.perf_counter() - bench_start:.0f} s"),
    ]
    markdown = table(rows)
    print()
    print(markdown)
    if args.out_md is not None:
        args.out_md.write_text(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
