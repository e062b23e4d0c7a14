"""The names inside a run folder (RUN_DIR/config.json, RUN_DIR/checkpoints/step-NNNNNNNN/, ...), without torch or
DeepSpeed, so that the command line can check a run folder before loading the trainer (trainer/checkpoint.py
writes and reads what they name)."""

from __future__ import annotations

import os
import re

CONFIG_FILE = "config.json"  # RUN_DIR/config.json: the resolved config of the run
CHECKPOINTS = "checkpoints"
LATEST = "latest"  # RUN_DIR/checkpoints/latest: the tag of the last complete checkpoint
TAG = re.compile(r"step-\d{8}")


def config_path(run_dir: str) -> str:
    """RUN_DIR/config.json; FileNotFoundError naming the folder when it is not a run folder (a local one)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not an rdtf run folder: {CONFIG_FILE} is missing")
    return path


def tag(step: int) -> str:
    """A checkpoint's folder name: step 500 -> "step-00000500"."""
    return f"step-{step:08d}"
