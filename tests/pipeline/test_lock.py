"""The output lock: one writer per dataset, a dead writer's lock taken over."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rdtf.pipeline.config import PreprocessConfig
from rdtf.pipeline.lock import LOCK_FILE, OutputLock, OutputLockedError
from rdtf.pipeline.runner import run_preprocess
from rdtf.schemas.layout import DatasetLayout


def test_a_second_writer_is_refused_while_the_first_is_alive(tmp_path: Path) -> None:
    layout = DatasetLayout.at(str(tmp_path / "out"))
    with OutputLock(layout, "first"):
        with pytest.raises(OutputLockedError, match="being written by another rdtf preprocess .*run first"):
            OutputLock(layout, "second").acquire()
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # released
    with OutputLock(layout, "second"):  # free again
        pass


def test_a_lock_held_by_a_ray_job_names_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = DatasetLayout.at(str(tmp_path / "out"))
    monkeypatch.setenv("RDTF_JOB_ID", "rdtf-preprocess-0123456789ab")  # as `rdtf submit` sets it in the job
    with OutputLock(layout, "first"):
        assert OutputLock(layout, "reader").live_holder()["job"] == "rdtf-preprocess-0123456789ab"
        with pytest.raises(OutputLockedError, match="Ray job rdtf-preprocess-0123456789ab, run first"):
            OutputLock(layout, "second").acquire()
    assert OutputLock(layout, "reader").live_holder() is None


def test_the_heartbeat_renews_the_lock(tmp_path: Path) -> None:
    layout = DatasetLayout.at(str(tmp_path))
    with OutputLock(layout, "run", heartbeat_s=0.05) as lock:
        first = lock.read()["heartbeat"]
        deadline = time.monotonic() + 10
        while lock.read()["heartbeat"] == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.read()["heartbeat"] > first


def _write_lock(root: Path, **record: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK_FILE).write_text(json.dumps({"owner": "old", "host": "elsewhere", "pid": 1} | record))


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_lock(tmp_path, heartbeat=time.time() - 1000)
    with caplog.at_level(logging.WARNING, logger="rdtf.preprocess"):
        with OutputLock(DatasetLayout.at(str(tmp_path)), "new") as lock:
            assert lock.read()["owner"] == "new"
    assert "taking over the lock" in caplog.text and "heartbeat was" in caplog.text


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, host=socket.gethostname(), pid=dead.pid, heartbeat=time.time())
    with OutputLock(DatasetLayout.at(str(tmp_path)), "new") as lock:
        assert lock.read()["owner"] == "new"


def test_preprocess_refuses_an_output_another_job_is_writing(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.gif").write_bytes(b"GIF89a")
    layout = DatasetLayout.at(str(tmp_path / "out"))
    with OutputLock(layout, "live"):
        with pytest.raises(OutputLockedError, match="Wait for it to finish, or write to another --out"):
            run_preprocess([str(tmp_path / "in")], str(tmp_path / "out"), PreprocessConfig(), show_progress=False)
