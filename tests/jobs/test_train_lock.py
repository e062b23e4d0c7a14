"""One `rdtf train` per run folder: while a run holds --out, a second one is refused (exit 2) naming the first; once
the first is gone, its lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rdtf.pipeline.lock import LOCK_FILE, OutputLock
from rdtf.schemas.layout import DatasetLayout

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "trainer"))
from dataset_factory import make_dataset  # noqa: E402

TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused_naming_the_first(tmp_path: Path) -> None:
    data = make_dataset(str(tmp_path / "ds"), files=1, rows_per_file=4)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "rdtf.jobs.cli", "train", "--config", TINY, "--data", data, "--out", str(run)]
    command += ["--set", "data.shuffle_buffer=4", "--micro-batch", "2"]
    env = os.environ | {"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    first = subprocess.Popen(
        [*command, "--steps", "1000"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 300
        while not (run / LOCK_FILE).is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert (run / LOCK_FILE).is_file(), "the first run never took the lock"
        second = subprocess.run([*command, "--steps", "1"], cwd=REPO, env=env, capture_output=True, text=True)
        assert second.returncode == 2
        assert "is being written by another rdtf train (run " in second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert OutputLock(DatasetLayout.at(str(run)), owner="").live_holder() is None  # a dead run's lock is free
