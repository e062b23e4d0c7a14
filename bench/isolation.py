"""Cost of decoding in the decoder process (pipeline.isolation) against decoding in the worker itself.

Run from the repository root (needs the shared sticker corpus beside the checkout, ../shared/data/stickers):

    .venv/bin/python bench/isolation.py              # the 299 real stickers, 5 repeats: about 1 min on 2 CPUs

Both ways run what ProbeStage and DecodeStage do with each input -- probe its headers, then decode the sampled
frames onto the canvas -- on the same files, read into memory before any timing, in one process, one way then the
other in every repeat; the medians over the repeats are reported. Also: the child's start-up, the round trip of one
sticker's frames (16 x 256 x 256 x 3 bytes, there and back), the slowest input, and the child's peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rdtf.pipeline.config import DecodeConfig  # noqa: E402
from rdtf.pipeline.frame_readers import sampled_frames  # noqa: E402
from rdtf.pipeline.isolation import DecoderProcess  # noqa: E402
from rdtf.pipeline.probe import probe  # noqa: E402


def decode_in_worker(data: bytes, cfg: DecodeConfig) -> np.ndarray:
    facts = probe(data)
    return sampled_frames(
        data, facts.format, facts.durations_ms, cfg.fps, cfg.max_frames, cfg.frame_size, cfg.resample
    )[0]


def decode_in_child(data: bytes, cfg: DecodeConfig, child: DecoderProcess) -> np.ndarray:
    facts = child.run(probe, data, timeout_s=cfg.timeout_s)
    args = (data, facts.format, facts.durations_ms, cfg.fps, cfg.max_frames, cfg.frame_size, cfg.resample)
    return child.run(sampled_frames, *args, timeout_s=cfg.timeout_s)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stickers", default=str(REPO.parent / "shared" / "data" / "stickers" / "gifs"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    inputs = [p.read_bytes() for p in sorted(Path(args.stickers).glob("*.gif"))]
    cfg = DecodeConfig()

    start = time.perf_counter()
    child = DecoderProcess(cfg.max_memory_mb)
    child.start()
    startup = time.perf_counter() - start

    one_sticker = np.zeros((cfg.max_frames, cfg.frame_size, cfg.frame_size, 3), np.uint8)
    trips = []
    for _ in range(20):
        start = time.perf_counter()
        child.run(np.ascontiguousarray, one_sticker, timeout_s=cfg.timeout_s)
        trips.append(time.perf_counter() - start)

    # Seconds per repeat each way; the two ways alternate input by input (which goes first, too), so that the load
    # of a shared machine falls on both alike.
    ways = {"worker": lambda data: decode_in_worker(data, cfg), "child": lambda data: decode_in_child(data, cfg, child)}
    seconds = {way: [0.0] * args.repeats for way in ways}
    slowest = 0.0
    for repeat in range(args.repeats):
        for n, data in enumerate(inputs):
            frames = {}
            for way in sorted(ways, reverse=(n + repeat) % 2 == 1):
                start = time.perf_counter()
                frames[way] = ways[way](data)
                took = time.perf_counter() - start
                seconds[way][repeat] += took
                if way == "worker":
                    slowest = max(slowest, took)
            assert np.array_equal(frames["worker"], frames["child"])  # the same frames either way
    with open(f"/proc/{child.pid}/status") as status:
        peak = next(line.split(":")[1].strip() for line in status if line.startswith("VmHWM"))
    child.close()

    n = len(inputs)
    in_worker, in_child = (statistics.median(seconds[way]) / n * 1e3 for way in ("worker", "child"))
    print(f"{n} stickers, {args.repeats} repeats, medians")
    print(f"decoder process start-up: {startup:.2f} s; its peak RSS over the run: {peak}")
    print(f"one sticker's frames there and back: {statistics.median(trips) * 1e3:.2f} ms ({one_sticker.nbytes} bytes)")
    print(f"per input, probe + decode: {in_worker:.2f} ms in the worker, {in_child:.2f} ms in the decoder process")
    print(f"overhead: {in_child - in_worker:+.2f} ms per input ({(in_child / in_worker - 1) * 100:+.1f} %)")
    print(f"slowest input in the worker: {slowest * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
