"""Shared fixtures: the real sticker corpus (../shared, never copied here), a private Ray temp dir per test, and a
local S3 server; and the split of the suite between two pytest-xdist workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3Server

REPO = Path(__file__).resolve().parent.parent
STICKERS = REPO.parent / "shared" / "data" / "stickers"

# `make test` runs the suite on two pytest-xdist workers (`-n 2`): the tests under these paths, which never start
# Ray, on one; every other test on the other, one after another, so that no two Rays run at once (two local Rays can
# take the same default port, and then one does not start). A module joins this list only if no test in it starts
# Ray, directly or through `rdtf preprocess`, `rdtf demo` or a cluster.
WITHOUT_RAY = (
    "tests/trainer/",
    "tests/schemas/",
    "tests/jobs/test_eval.py",
    "tests/jobs/test_train_lock.py",
    "tests/test_object_store_train.py",
)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it (or without -n) the suite runs in one process
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's scope scheduling (each scope runs whole on one worker) with two scopes: with and without Ray.

    Not `--dist loadgroup` with xdist_group marks: with pytest 9.2 it silently stops grouping (pytest-xdist #1386)."""
    from xdist.scheduler import LoadScopeScheduling

    class RayApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "without_ray" if nodeid.startswith(WITHOUT_RAY) else "ray"

    return RayApart(config, log)


@pytest.fixture(scope="session")
def stickers() -> Path:
    """The 299 real GIFs beside the checkout. Skipped in a user's clone; a failure under CI, so a wrong path shows."""
    if not (STICKERS / "manifest.csv").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared sticker corpus is missing at {STICKERS}")
        pytest.skip(f"the shared sticker corpus is not beside this checkout ({STICKERS})")
    return STICKERS


@pytest.fixture(autouse=True)
def private_ray_tmp(monkeypatch: pytest.MonkeyPatch):
    """Each test's Ray (if it starts one) keeps its sockets and logs apart from every other Ray on the machine.

    Short path on purpose: Ray's unix socket paths must stay under 107 characters.
    """
    with tempfile.TemporaryDirectory(prefix="rdtf-ray-", dir="/tmp") as folder:
        monkeypatch.setenv("RAY_TMPDIR", folder)
        monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield folder


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free local port, with one empty bucket; stopped by the process id it started."""
    moto = pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", moto.__name__, "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto's S3 server did not start on port {port} (exit code {process.poll()})")
                time.sleep(0.2)
        server = S3Server(f"http://127.0.0.1:{port}", "rdtf-test")
        server.filesystem(allow_bucket_creation=True).create_dir(server.bucket)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, private_ray_tmp: str) -> dict[str, str]:
    """The environment of this test's processes (and of this one: rdtf.open_dataset reads through it too)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)
