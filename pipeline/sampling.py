"""Which frames to keep: sample a clip at a low frame rate by display time, as a viewer would see it."""

from __future__ import annotations

import math

import numpy as np


def sample_times(durations_ms: list[int], fps: float, max_frames: int) -> np.ndarray:
    """Times (ms) at which to look at the clip: every 1/fps from 0, or `max_frames` spread over the whole clip.

    A clip longer than max_frames / fps is sampled evenly over its whole length rather than cut short: a sticker
    is a loop, and its end matters as much as its start.
    """
    total = float(sum(durations_ms))
    count = max(1, math.ceil(total * fps / 1000.0 - 1e-9))
    if count <= max_frames:
        return np.arange(count) * (1000.0 / fps)
    return np.arange(max_frames) * (total / max_frames)


def frames_at(durations_ms: list[int], times_ms: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time. A frame held longer than 1/fps is picked more than once."""
    starts = np.concatenate([[0.0], np.cumsum(durations_ms, dtype=np.float64)[:-1]])
    return np.searchsorted(starts, times_ms, side="right") - 1


def schedule(durations_ms: list[int], fps: float, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices, timestamps in ms) of the sampled frames, in display order."""
    times = sample_times(durations_ms, fps, max_frames)
    return frames_at(durations_ms, times), np.round(times).astype(np.int32)
