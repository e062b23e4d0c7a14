"""`rdtf stats`: its figures against pyarrow, and its page opened in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pyarrow.compute as pc
import pytest

from rdtf.jobs.cli import main
from rdtf.jobs.stats import BINS, compute
from rdtf.schemas.reader import open_dataset

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"  # git-ignored: what a person looks at after the tests (the page's screenshot)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
)  # fmt: skip


def test_figures_match_pyarrow(sticker_dataset: Path) -> None:
    reader = open_dataset(str(sticker_dataset))
    stats = compute(reader, str(sticker_dataset))
    table = reader.read(columns=["num_frames", "static_difficulty", "caption_source"])
    assert stats.rows == table.num_rows and stats.rejects == reader.rejects().num_rows == 2
    assert stats.rejects_by_reason == {"empty_file": 1, "unsupported_format": 1}
    assert stats.caption_sources == {"given": table.num_rows}
    frames = next(h for h in stats.histograms if h.title.startswith("frames"))
    assert len(frames.counts) == BINS and sum(frames.counts) == table.num_rows
    assert frames.edges[0] == pc.min(table["num_frames"]).as_py()
    assert frames.edges[-1] == pytest.approx(pc.max(table["num_frames"]).as_py())
    assert frames.counts[-1] >= 1  # the largest value falls in the last bin
    for hist in stats.histograms:
        assert sum(hist.counts) == table.num_rows, hist.title


def test_terminal_output(sticker_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(sticker_dataset)]) == 0
    out = capsys.readouterr().out
    rows = open_dataset(str(sticker_dataset)).num_rows
    assert f"{rows} rows, 2 rejects, {rows + 2} inputs" in out
    assert "static difficulty:" in out and "unsupported_format" in out


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (`make test` installs it where it may). Skipped without it, except under CI=true."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is missing: `make browser` installs Debian's chromium")
        pytest.skip("chromium is not installed (`make browser` installs Debian's; it needs root and apt-get)")
    return found


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless chromium run in its own process group, stopped by its id if it hangs."""
    process = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_page_in_a_headless_browser(sticker_dataset: Path, tmp_path: Path, chromium: str) -> None:
    page = tmp_path / "stats.html"
    assert main(["stats", str(sticker_dataset), "--html", str(page)]) == 0
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body is not None, dom.stderr[-2000:]
    attributes = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(1)))
    # 10 deciles of 24 stickers (each decile has one) and the 2 rejects' named tiles
    assert attributes == {"thumbnails": "12", "broken": "0", "errors": "0"}, dom.stderr[-2000:]
    shot = tmp_path / "stats_page.png"  # this run's own picture, then kept in test-artifacts/ to look at
    taken = run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2600", page.as_uri()
    )
    assert taken.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "stats_page.png")
