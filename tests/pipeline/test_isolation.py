"""Crash isolation (pipeline.isolation): an input whose decoder crashes, hangs or runs out of memory becomes a reject
with its own reason, and the other inputs of its batch -- of its task, end to end -- are decoded and written.

The failures are real, made in the decoder process by decode.fault_injection: os.abort(), a read of address 0, a
sleep 30 times the time limit, an allocation of twice the memory limit. No test depends on timing: the inputs
here decode in milliseconds, 1000 times under the limit, and the sleep is 30 times over it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media_factory import grey_ramp_video_frames, image_bytes, noise_frames, video_bytes

from rdtf.jobs.corpus import make_corpus
from rdtf.pipeline.config import DecodeConfig, InjectedFault, PreprocessConfig, RayConfig
from rdtf.pipeline.decode import DecodeStage, ProbeStage
from rdtf.pipeline.frame_readers import LIBRARIES, sampled_frames
from rdtf.pipeline.isolation import EXIT_OUT_OF_MEMORY, DecoderProcess
from rdtf.pipeline.probe import probe
from rdtf.pipeline.runner import run_preprocess
from rdtf.pipeline.stage import Reject
from rdtf.schemas import open_dataset
from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR

TIMEOUT_S = 2.0
MEMORY_MB = 128  # what the "allocate" fault fills before it fails; an input here needs a few MB
FAULTS = {"abort": "decoder_crash", "segfault": "decoder_crash", "sleep": "timeout", "allocate": "too_large"}
MESSAGES = {
    "abort": "signal 6",
    "segfault": "signal 11",
    "sleep": f"decode.timeout_s={TIMEOUT_S:g}",
    "allocate": f"decode.max_memory_mb={MEMORY_MB}",
}


def decode_config(*faults: InjectedFault) -> DecodeConfig:
    return DecodeConfig(timeout_s=TIMEOUT_S, max_memory_mb=MEMORY_MB, fault_injection=faults)


def stickers(folder: Path, count: int) -> list[str]:
    """`count` distinct small animated GIFs."""
    paths = []
    for i in range(count):
        path = folder / f"sticker_{i}.gif"
        path.write_bytes(image_bytes(noise_frames(4, 48, 48, seed=i), "GIF", [100] * 4))
        paths.append(str(path))
    return paths


def probe_and_decode(paths: list[str], cfg: DecodeConfig) -> dict[str, list]:
    """ProbeStage then DecodeStage on one batch, set up as a task sets them up."""
    stages = [ProbeStage(cfg), DecodeStage(cfg)]
    batch: dict[str, list] = {"source_uri": paths}
    for stage in stages:
        stage.setup()
        batch = stage(batch)
    return batch


@pytest.fixture(scope="module")
def batch_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return stickers(tmp_path_factory.mktemp("stickers"), 3)


@pytest.fixture(scope="module")
def clean(batch_paths: list[str]) -> dict[str, list]:
    """The batch decoded without any fault."""
    batch = probe_and_decode(batch_paths, decode_config())
    assert batch["reject_reason"] == [None] * 3, batch["reject_message"]
    return batch


@pytest.mark.parametrize("action", list(FAULTS))
def test_a_failing_decoder_is_a_reject_and_the_rest_of_the_batch_decodes(action, batch_paths, clean):
    batch = probe_and_decode(batch_paths, decode_config(InjectedFault(match="sticker_1", action=action)))
    assert batch["reject_reason"] == [None, FAULTS[action], None]
    assert batch["reject_stage"][1] == "decode"
    assert MESSAGES[action] in batch["reject_message"][1]
    assert batch["frames"][1] is None
    for i in (0, 2):  # before and after the failure (the second one by a new decoder process): as if alone
        assert np.array_equal(batch["frames"][i], clean["frames"][i])
        assert batch["frame_timestamps_ms"][i] == clean["frame_timestamps_ms"][i]


def test_every_fault_in_one_batch(tmp_path):
    paths = stickers(tmp_path, 7)
    faults = [InjectedFault(f"sticker_{i}.", action) for i, action in zip((1, 2, 4, 5), FAULTS, strict=True)]
    batch = probe_and_decode(paths, decode_config(*faults))
    assert batch["reject_reason"] == [None, "decoder_crash", "decoder_crash", None, "timeout", "too_large", None]
    assert all(batch["frames"][i].shape == (4, 256, 256, 3) for i in (0, 3, 6))


@pytest.fixture
def child():
    process = DecoderProcess(MEMORY_MB)
    process.start()
    yield process
    process.close()


def test_results_come_back_equal_and_writable(child):
    data = image_bytes(noise_frames(5, 40, 30), "GIF", [100] * 5)
    facts = probe(data)
    assert child.run(probe, data, timeout_s=TIMEOUT_S) == facts
    args = (data, facts.format, facts.durations_ms, 8.0, 16, 256, "reduce_lanczos")
    frames, times = child.run(sampled_frames, *args, timeout_s=TIMEOUT_S)
    expected, expected_times = sampled_frames(*args)
    assert np.array_equal(frames, expected) and frames.dtype == np.uint8 and times == expected_times
    assert frames.flags.writeable  # later stages may write into them


def test_a_reject_made_in_the_child_keeps_its_reason(child):
    with pytest.raises(Reject) as reject:
        child.run(probe, b"this is a text file", timeout_s=TIMEOUT_S)
    assert reject.value.reason == "unsupported_format"


def test_a_bug_in_the_child_is_an_error_not_a_reject(child):
    with pytest.raises(RuntimeError, match="ValueError"):  # the stage makes it internal_error
        child.run(int, "not a number", timeout_s=TIMEOUT_S)
    assert child.run(int, "12", timeout_s=TIMEOUT_S) == 12  # and the child goes on


@pytest.mark.parametrize(
    "ending, reason, message",
    [
        ("sigkill", "too_large", "killed for memory"),  # the kernel's out-of-memory killer
        ("exit_out_of_memory", "too_large", "killed for memory"),  # a MemoryError outside a decoder
        ("exit_1", "decoder_crash", "exit status 1"),
        ("sigbus", "decoder_crash", "signal 7"),
    ],
)
def test_how_the_child_ended_names_the_reason(child, ending, reason, message):
    pid = child.pid
    fn, args = {
        "sigkill": (os.kill, (pid, signal.SIGKILL)),
        "exit_out_of_memory": (os._exit, (EXIT_OUT_OF_MEMORY,)),
        "exit_1": (os._exit, (1,)),
        "sigbus": (os.kill, (pid, signal.SIGBUS)),
    }[ending]
    with pytest.raises(Reject) as reject:
        child.run(fn, *args, timeout_s=TIMEOUT_S)
    assert reject.value.reason == reason and message in reject.value.message
    assert child.run(int, "7", timeout_s=TIMEOUT_S) == 7 and child.pid != pid  # a new child for the next input


def _exited(pid: int) -> bool:
    """The whole process has exited: a zombie whose other threads are gone too. (Its main thread turns zombie
    first; until the others have exited, waitpid does not report it and its sockets are still open, so a test that
    went on at that moment would blame the next input for the kill.)"""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            zombie = stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        return zombie and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True


def _wait_until_exited(pid: int, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _exited(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _exited(pid)


def test_a_child_that_died_between_inputs_is_replaced_without_a_reject(child):
    pid = child.pid
    os.kill(pid, signal.SIGKILL)
    assert _wait_until_exited(pid)
    assert child.run(int, "3", timeout_s=TIMEOUT_S) == 3 and child.pid != pid


def test_the_child_exits_with_its_parent_even_in_the_middle_of_a_decode():
    """A killed Ray worker leaves no decoder behind, even one stuck on an input."""
    code = (
        "import time; from rdtf.pipeline.isolation import DecoderProcess; d = DecoderProcess(64); d.start(); "
        "print(d.pid, flush=True); d.run(time.sleep, 3600, timeout_s=3600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    time.sleep(0.5)  # usually inside the sleep by now; before it, the child exits just the same
    parent.kill()
    parent.wait()
    assert _wait_until_exited(pid)


def test_libraries_are_imported_outside_the_memory_limit():
    """decord's import holds 830 MB: a 64 MiB limit still decodes a video, because the import is not charged."""
    data = video_bytes(grey_ramp_video_frames(6, 64, 64), "mp4", "mpeg4", fps=10)
    process = DecoderProcess(64)
    try:
        facts = process.run(probe, data, timeout_s=TIMEOUT_S, imports=LIBRARIES["mp4"])
        args = (data, facts.format, facts.durations_ms, 10.0, 16, 64, "reduce_lanczos")
        frames, _ = process.run(sampled_frames, *args, timeout_s=TIMEOUT_S, imports=LIBRARIES["mp4"])
    finally:
        process.close()
    assert frames.shape == (6, 64, 64, 3)


def test_stages_declare_the_memory_they_reserve():
    cfg = DecodeConfig(max_memory_mb=300, max_frames=8, frame_size=128)
    assert ProbeStage(cfg).resources.memory == DecodeStage(cfg).resources.memory == 300 * 2**20
    assert DecodeStage(cfg).resources.memory_per_row == 8 * 128 * 128 * 3


@pytest.mark.slow
def test_a_job_with_crashing_hanging_and_oversized_inputs_finishes(tmp_path):
    """One input aborts, one sleeps past the limit, one allocates past it; every other input of the same tasks
    is a row, and a re-run has nothing left to do."""
    folder = tmp_path / "corpus"
    make_corpus(str(folder), count=9, broken=False)  # sticker_000 .. sticker_008, still.jpg, still.png
    actions = {"sticker_001": "abort", "sticker_004": "sleep", "sticker_007": "allocate"}
    faults = tuple(InjectedFault(match, action) for match, action in actions.items())
    cfg = PreprocessConfig(decode=decode_config(*faults), ray=RayConfig(num_cpus=1, object_store_mb=256))
    out = tmp_path / "dataset"

    summary = run_preprocess([str(folder / "manifest.csv")], str(out), cfg, show_progress=False)

    reader = open_dataset(str(out))
    rows, rejects = reader.read(columns=["source_uri"]).to_pylist(), reader.rejects().to_pylist()
    assert len(rows) + len(rejects) == summary.inputs == 11
    by_name = {Path(r["source_uri"]).stem: r for r in rejects}
    assert {name: by_name[name]["reason"] for name in by_name} == {
        "sticker_001": "decoder_crash",
        "sticker_004": "timeout",
        "sticker_007": "too_large",
    }
    assert all(r["stage"] == "decode" for r in rejects)
    assert "signal 6 (Aborted)" in by_name["sticker_001"]["message"]
    assert summary.rejected == {"decoder_crash": 1, "timeout": 1, "too_large": 1}
    assert reader.card["status"] == "complete"
    # The rest of each failing input's task was written: its rejects shard has a data shard of the same name.
    data_shards = {p.name for p in (out / DATA_DIR).glob("part-*.parquet")}
    for shard in (out / REJECTS_DIR).glob("part-*.parquet"):
        assert shard.name in data_shards

    again = run_preprocess([str(folder / "manifest.csv")], str(out), cfg, show_progress=False)
    assert again.already_done == 11 and again.processed == 0
