"""Argument types for the command line: a number out of range is an argparse error naming the flag, at once."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import rdtf

PRESETS = Path(rdtf.__file__).parent / "configs"  # the checkout's configs/, which the wheel ships as rdtf/configs


def positive_int(value: str) -> int:
    """An integer >= 1 (processes, workers, GPUs)."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def positive_float(value: str) -> float:
    """A number > 0 (CPUs per worker)."""
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number


def port(value: str) -> int:
    """A TCP port, 1-65535."""
    number = int(value)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 1-65535, got {number}")
    return number


def config_file(value: str) -> str:
    """A YAML file, or the name of a training preset in rdtf's configs/ (tiny, small, paper), as a path."""
    if os.path.isfile(value):
        return value
    preset = PRESETS / f"{value}.yaml"
    if os.sep not in value and preset.is_file():
        return str(preset)
    names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml") if p.stem != "preprocess"))
    raise argparse.ArgumentTypeError(f"{value!r} is neither a file nor a preset ({names})")
