"""Argument types for the command line: a number out of range is an argparse error naming the flag, at once."""

from __future__ import annotations

import argparse


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
