"""Shared fixtures: the real sticker corpus (../shared, never copied here) and a private Ray temp dir per test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STICKERS = REPO.parent / "shared" / "data" / "stickers"


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
