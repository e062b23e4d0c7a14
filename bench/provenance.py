"""Where and on what code a benchmark ran: the lines every result in docs/benchmarks.md starts with.

Imported by the scripts in bench/ (run as `python bench/NAME.py`, so this folder is on the import path).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine(accelerator: str | None = None) -> str:
    """CPU model, cores, RAM and OS, with the accelerator's name when one is given."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [model, f"{os.cpu_count()} cores", f"{ram:.0f} GiB RAM"]
    parts += [accelerator] if accelerator else []
    return ", ".join(parts + [f"{platform.system()} {platform.release()}"])


def code_version() -> str:
    """The checkout's commit, and whether files other than the benchmarks differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in status if not line[3:].startswith("bench/")]
    return commit + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")
