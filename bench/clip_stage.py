"""Benchmark of the CLIP stage: images/s end to end against bare open_clip image encoding, in the same run.

Requirements: torch, pyarrow, pillow and open_clip_torch (with its ftfy and regex) for the bare encoding; ray[data]
and this checkout's packages for the stage. Without Ray (as on the GPU benchmark machine, where Ray's wheel is too
large to carry) only the bare encoding runs, and the table says so. Run from the repository root, with the shared
sticker corpus beside the checkout (../shared/data/stickers):

    .venv/bin/python bench/clip_stage.py                                   # ViT-B-32, random weights, fp32, CPU
    .venv/bin/python bench/clip_stage.py --model rdtf-tiny-clip --stickers 299 --batch-size 64
    python bench/clip_stage.py --device cuda --precision bf16 --batch-size 1024 --stickers 299   # a GPU machine

What it measures, each number against a baseline measured in the same run:
1. Not timed: a curated dataset of the first N shared stickers (`rdtf preprocess` without the CLIP stage).
2. The stage end to end, REPEATS times: Ray Data reads the dataset's Parquet files (sample_id, frames, caption);
   CPU tasks decode each distinct stored PNG frame once (pipeline.clip.ClipInputStage hands on each distinct
   frame); a pool of actors runs pipeline.clip.ClipStage (resize to the model's input on its device, embeddings,
   CLIP scores, tags, captions; the model loaded once per actor); Ray Data writes the results as Parquet. The
   legs are those of `rdtf preprocess` (pipeline.plan.map_stages). Timed from the start of the read to the last
   file written, actor start-up (imports, model load) included; the same pass over the first file only gives that
   fixed cost, and the work alone is the difference. Images are the distinct frames the encoder sees (a frame held
   on screen is sampled several times and encoded once). --reads K makes a pass read the files K times.
3. Bare encoding: the same model, weights, batch size and precision in this process, with as many threads as the
   actor pool has CPUs on a CPU: batches of the stickers' own frames, already at the input size, normalized and
   on the device, through `model.encode_image`; warm-up passes, then passes for at least BARE_SECONDS (cuda
   synchronized). This is what the reference figures measure (bare ViT-B-32 bf16 about 21,000 images/s and
   ViT-L-14 about 1,750 on one H100, docs/stack-notes).
Ratio = stage images/s / bare images/s; the issue's goal is at least 0.8. It prints a markdown table (machine,
date, code, settings, each number); --out-md also writes it to a file.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

REPO = Path(__file__).resolve().parent.parent
STICKERS = REPO.parent / "shared" / "data" / "stickers"
CLIP_CONFIGS = REPO / "pipeline" / "clip_configs"  # the project's small open_clip configs (rdtf-tiny-clip)
REPEATS = 3  # stage passes; the median is reported
WARMUP_PASSES = 2  # bare encoding passes before the timing (cuDNN/cuBLAS autotuning, allocator, CPU caches)
BARE_SECONDS = 5.0  # bare encoding is timed over at least this long
TASKS_PER_CPU = 4  # read blocks per CPU, as pipeline.blocks cuts the main pass: decode tasks keep every CPU busy

if str(REPO) not in sys.path:  # run as a script from anywhere: the checkout's packages come first
    sys.path.insert(0, str(REPO))

from provenance import code_version, machine  # noqa: E402

Rows = list[tuple[str, str]]


# ----------------------------------------------------------------------------------------------------------------
# Bare open_clip image encoding: needs torch, open_clip and Pillow only


def sticker_paths(stickers: Path, count: int) -> list[Path]:
    with open(stickers / "manifest.csv", newline="") as f:
        return [stickers / row["file"] for row in csv.DictReader(f)][:count]


def sample_images(paths: list[Path], size: int, count: int) -> np.ndarray:
    """(count, size, size, 3) uint8: the stickers' frames composited on white and resized, cycled to `count`."""
    frames: list[np.ndarray] = []
    for path in paths:
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                canvas = Image.new("RGBA", frame.size, (255, 255, 255, 255))
                canvas.alpha_composite(frame.convert("RGBA"))
                frames.append(np.asarray(canvas.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))
                if len(frames) >= count:
                    return np.stack(frames)
    return np.stack([frames[i % len(frames)] for i in range(count)])


def open_clip_model(model: str, weights: str, seed: int, device: str, precision: str):
    """The model as pipeline.clip_models.load_model builds it, with open_clip alone (no Ray, no pipeline)."""
    import open_clip
    import torch

    open_clip.add_model_config(CLIP_CONFIGS)
    torch.manual_seed(seed)
    pretrained = None if weights == "random" else weights
    return open_clip.create_model(model, pretrained=pretrained, device=device, precision=precision).eval()


class BareEncoder:
    """`model.encode_image` on one ready batch (the stickers' frames at the input size, normalized, on the device)."""

    def __init__(self, args: argparse.Namespace, threads: int, paths: list[Path]):
        import open_clip
        import torch

        if args.device == "cpu":
            torch.set_num_threads(threads)
        self.torch, self.args = torch, args
        self.model = open_clip_model(args.model, args.weights, args.seed, args.device, args.precision)
        preprocess = open_clip.get_model_preprocess_cfg(self.model)
        size = preprocess["size"] if isinstance(preprocess["size"], int) else preprocess["size"][0]
        pixels = torch.from_numpy(sample_images(paths, size, args.batch_size)).to(args.device)
        mean = torch.tensor(preprocess["mean"], device=args.device).view(1, 3, 1, 1)
        std = torch.tensor(preprocess["std"], device=args.device).view(1, 3, 1, 1)
        dtype = open_clip.get_input_dtype(args.precision) or torch.float32
        self.batch = ((pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std).to(dtype)
        start = time.perf_counter()
        self.passes(WARMUP_PASSES)
        self.warmup_s = (time.perf_counter() - start) / WARMUP_PASSES  # seconds per warm-up pass

    def passes(self, count: int) -> None:
        with self.torch.inference_mode():
            for _ in range(count):
                self.model.encode_image(self.batch)
            if self.args.device == "cuda":
                self.torch.cuda.synchronize()

    def rate(self) -> float:
        """images/s over at least 3 passes and BARE_SECONDS."""
        passes, start = 0, time.perf_counter()
        while passes < 3 or time.perf_counter() - start < BARE_SECONDS:
            self.passes(1)
            passes += 1
        return passes * self.args.batch_size / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------
# The stage end to end: needs Ray and the checkout's packages


def build_dataset(paths: list[Path], captions: list[str], folder: Path, cpus: int) -> list[str]:
    """`rdtf preprocess` (no CLIP stage) of the stickers into `folder`; the data files."""
    from rdtf.pipeline.config import PreprocessConfig, RayConfig
    from rdtf.pipeline.runner import run_preprocess
    from rdtf.schemas.layout import DATA_DIR, DatasetLayout

    folder.mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "text"])
        writer.writeheader()
        writer.writerows({"file": str(p), "text": c} for p, c in zip(paths, captions, strict=True))
    cfg = PreprocessConfig(ray=RayConfig(num_cpus=cpus))
    run_preprocess([str(folder / "manifest.csv")], str(folder / "dataset"), cfg, show_progress=False)
    return DatasetLayout.at(str(folder / "dataset")).parquet_files(DATA_DIR)


def replicate(files: list[str], times: int, folder: Path) -> list[str]:
    """`files` and times - 1 copies of them (Ray Data reads a path named twice only once)."""
    copies = list(files)
    for k in range(1, times):
        (folder / f"copy-{k}").mkdir(parents=True)
        copies += [shutil.copy(f, folder / f"copy-{k}" / Path(f).name) for f in files]
    return copies


def distinct_frames(files: list[str]) -> tuple[int, int, int]:
    """Rows, sampled frames and distinct frames (what the encoder sees) in the dataset's files."""
    import pyarrow.parquet as pq

    rows = sampled = distinct = 0
    for path in files:
        for frames in pq.read_table(path, columns=["frames"])["frames"].to_pylist():
            rows += 1
            sampled += len(frames)
            distinct += len(set(frames))  # equal frames have equal PNG bytes (one encoder, one setting)
    return rows, sampled, distinct


def stage_pass(files: list[str], args: argparse.Namespace, out: Path, cpus: int) -> float:
    """Seconds to read `files`, decode, embed and write the results (one pass, actor start-up included)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from rdtf.pipeline.clip import ClipInputStage, ClipStage, prepare
    from rdtf.pipeline.config import ClipConfig
    from rdtf.pipeline.plan import map_stages
    from rdtf.pipeline.stage import Stage
    from rdtf.schemas.dataset import SAMPLE_SCHEMA
    from rdtf.schemas.frames import decode_frames

    class DecodeStoredFramesStage(Stage):
        """A dataset's stored frames (PNG) back to arrays; a frame stored twice (held on screen) is decoded once."""

        name = "decode_stored"
        reads = ("encoded_frames",)
        writes = ("frames",)

        def process_row(self, row):
            decoded: dict[bytes, np.ndarray] = {}
            frames = [decoded.get(b) if b in decoded else decoded.setdefault(b, decode_frames([b])[0])
                      for b in row["encoded_frames"]]  # fmt: skip
            return {"frames": np.stack(frames)}

    cfg = ClipConfig(
        model=args.model,
        weights=args.weights,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        pool_size=args.actors,
        num_cpus=args.actor_cpus,
        num_gpus=args.actor_gpus,
    )
    setup = prepare(cfg).for_cluster(cpus, ray.cluster_resources().get("GPU", 0))
    stages = [DecodeStoredFramesStage(), ClipInputStage(), ClipStage(setup.cfg, setup.vocabulary)]
    names = ["sample_id", "clip_embedding", "clip_score", "tags", "caption", "caption_source"]
    output = pa.schema([SAMPLE_SCHEMA.field(n) for n in names])
    columns = ("sample_id", "source_uri", "encoded_frames", "caption")
    start = time.perf_counter()
    dataset = ray.data.read_parquet(files, override_num_blocks=TASKS_PER_CPU * cpus)
    dataset = dataset.select_columns(["sample_id", "source_uri", "frames", "caption"])
    dataset = map_stages(dataset.rename_columns({"frames": "encoded_frames"}), stages, columns, None, output)
    dataset.write_parquet(str(out))
    seconds = time.perf_counter() - start
    written = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("*.parquet"))])
    expected = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if written.num_rows != expected or written["clip_embedding"].null_count:
        raise RuntimeError(f"the stage wrote {written.num_rows} rows of {expected}, "
                           f"{written['clip_embedding'].null_count} without an embedding")  # fmt: skip
    return seconds


# ----------------------------------------------------------------------------------------------------------------
# The run


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip config (ViT-B-32; small: rdtf-tiny-clip)")
    parser.add_argument("--weights", default="random", help="checkpoint file, pretrained tag, or random (random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None, help="bf16 on cuda, else fp32")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass, both sides (32)")
    parser.add_argument("--stickers", type=int, default=40, help="first N stickers of the shared manifest (40)")
    parser.add_argument("--reads", type=int, default=1, help="times each pass reads the dataset's files (1)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="Ray CPUs (all)")
    parser.add_argument("--actors", type=int, default=1, help="CLIP actors (1)")
    parser.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs per actor, and its threads (1)")
    parser.add_argument("--actor-gpus", type=float, default=1.0, help="GPUs per actor on cuda (1)")
    parser.add_argument("--corpus", type=Path, default=STICKERS, help="the shared sticker corpus")
    parser.add_argument("--out-md", type=Path, default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.corpus / "manifest.csv").is_file():
        print(f"the sticker corpus is not at {args.corpus} (see --corpus)", file=sys.stderr)
        return 2
    try:
        import ray
    except ImportError:
        ray = None
    paths = sticker_paths(args.corpus, args.stickers)
    threads = max(1, int(args.actor_cpus)) * args.actors
    rows: Rows = [
        ("machine", machine(gpu_name() if args.device == "cuda" else None)),
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("code", code_version()),
        ("load average (1 min) at the start", f"{os.getloadavg()[0]:.2f}"),
        ("model, weights, precision, batch", f"{args.model}, {args.weights}, {args.precision}, {args.batch_size}"),
        ("device", args.device),
    ]
    encoder = BareEncoder(args, threads, paths)
    bare: list[float] = []
    where = f"{threads} threads" if args.device == "cpu" else "1 GPU"

    def each(values: list[float], digits: int = 1) -> str:
        return ", ".join(f"{v:,.{digits}f}" for v in values)

    def bare_row() -> tuple[str, str]:
        return (
            f"bare open_clip encode_image ({where}; timed {REPEATS}x, before each stage pass)",
            f"{statistics.median(bare):,.1f} images/s (median of {each(bare)}; warm-up {encoder.warmup_s:.2f} s/pass)",
        )

    if ray is None:
        bare += [encoder.rate() for _ in range(REPEATS)]
        rows += [bare_row(), ("stage end to end", "not measured: Ray is not installed here (it needs ray[data])")]
        return report(rows, args.out_md)

    work = Path(tempfile.mkdtemp(prefix="rdtf-bench-clip-"))
    ray_tmpdir = tempfile.mkdtemp(prefix="rdtf-bench-ray-", dir="/tmp")  # short: unix socket paths < 107 chars
    os.environ["RAY_TMPDIR"] = ray_tmpdir
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        ray.init(num_cpus=args.cpus, object_store_memory=512 * 2**20, include_dashboard=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        with open(args.corpus / "manifest.csv", newline="") as f:
            captions = [row["text"] for row in csv.DictReader(f)][: len(paths)]
        files = build_dataset(paths, captions, work / "input", args.cpus)
        count, sampled, distinct = distinct_frames(files)
        _, _, distinct_first = distinct_frames(files[:1])
        frames = f"{sampled} sampled frames, {distinct} distinct (the images counted)"
        rows.append(("dataset", f"{count} rows in {len(files)} files, {frames}; each pass reads it {args.reads}x"))
        gpus = f" x {args.actor_gpus:g} GPUs" if args.device == "cuda" else ""
        rows.append(("Ray CPUs; actors x CPUs each", f"{args.cpus}; {args.actors} x {args.actor_cpus:g}{gpus}"))
        read = replicate(files, args.reads, work / "copies")
        passes, fixed = [], []
        for i in range(REPEATS):  # interleaved, so that a busy spell of a shared machine hits both sides
            bare.append(encoder.rate())
            passes.append(stage_pass(read, args, work / f"out-{i}", args.cpus))
            fixed.append(stage_pass(files[:1], args, work / f"first-{i}", args.cpus))
        whole, small, bare_rate = statistics.median(passes), statistics.median(fixed), statistics.median(bare)
        distinct *= args.reads
        work_rate = (distinct - distinct_first) / (whole - small)
        rows += [
            bare_row(),
            ("stage, whole pass", f"{whole:.1f} s = {distinct / whole:,.1f} images/s (median of {each(passes)} s)"),
            (
                "stage over the first file only (actor start-up, model load)",
                f"{small:.1f} s for {distinct_first} images (median of {each(fixed)} s)",
            ),
            ("stage, work alone = whole - first file", f"{work_rate:,.1f} images/s"),
            ("**ratio stage / bare, whole pass** (goal >= 0.8)", f"**{distinct / whole / bare_rate:.2f}**"),
            ("**ratio stage / bare, work alone** (goal >= 0.8)", f"**{work_rate / bare_rate:.2f}**"),
        ]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    return report(rows, args.out_md)


def report(rows: Rows, out_md: Path | None) -> int:
    """Print the markdown table (and write it to `out_md`)."""
    table = "\n".join(["| what | value |", "|---|---|", *(f"| {what} | {value} |" for what, value in rows)])
    print(f"\n{table}")
    if out_md is not None:
        out_md.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
