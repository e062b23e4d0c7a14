"""Frame sampling by display time (pipeline.sampling.schedule)."""

from __future__ import annotations

import numpy as np

from rdtf.pipeline.probe import Probe
from rdtf.pipeline.sampling import schedule


def test_frames_are_picked_by_display_time():
    # Frames shown for 100, 200 and 100 ms, sampled at 10 fps: one look every 100 ms.
    indices, times = schedule([100, 200, 100], fps=10, max_frames=16)
    assert indices.tolist() == [0, 1, 1, 2]
    assert times.tolist() == [0, 100, 200, 300]


def test_zero_delay_frames_play_at_100_ms_after_the_browser_rule():
    # Raw GIF delays of 0 and 10 ms are shown for 100 ms each; 20 ms is kept as is.
    durations = Probe("gif", 64, 64, (0, 10, 0, 20)).durations_ms
    assert durations == [100, 100, 100, 20]
    indices, times = schedule(durations, fps=10, max_frames=16)
    # 320 ms at 10 fps: looks at 0, 100, 200 and 300 ms; the 20 ms frame starts at 300 ms.
    assert indices.tolist() == [0, 1, 2, 3]
    assert times.tolist() == [0, 100, 200, 300]


def test_a_frame_held_longer_than_one_sample_period_is_picked_more_than_once():
    # 8 fps samples every 125 ms; frame 1 is on screen for 500 ms.
    indices, times = schedule([125, 500, 125], fps=8, max_frames=16)
    assert indices.tolist() == [0, 1, 1, 1, 1, 2]
    assert times.tolist() == [0, 125, 250, 375, 500, 625]


def test_a_long_clip_is_spread_over_its_whole_length():
    durations = [100] * 300  # 30 s: 240 looks at 8 fps, far more than max_frames
    indices, times = schedule(durations, fps=8, max_frames=16)
    assert len(indices) == len(times) == 16
    assert times[0] == 0 and indices[0] == 0
    assert np.all(np.diff(times) > 0)
    assert np.all(np.diff(indices) > 0)
    assert indices.min() >= 0 and indices.max() < 300
    # Spread evenly over the whole 30 s, not cut after 16 / 8 fps = 2 s: one look every 30000 / 16 ms.
    assert times.tolist() == [round(i * 30000 / 16) for i in range(16)]
    assert indices[-1] == 281  # the frame on screen at 28125 ms, in the clip's last sixteenth


def test_a_clip_exactly_max_frames_long_is_not_spread():
    indices, times = schedule([125] * 16, fps=8, max_frames=16)
    assert indices.tolist() == list(range(16))
    assert times.tolist() == [125 * i for i in range(16)]


def test_a_still_is_one_frame():
    durations = Probe("png", 64, 64, (100,)).durations_ms
    indices, times = schedule(durations, fps=8, max_frames=16)
    assert indices.tolist() == [0]
    assert times.tolist() == [0]


def test_timestamps_are_int32_milliseconds():
    indices, times = schedule([100] * 10, fps=3, max_frames=16)
    assert times.dtype == np.int32
    assert times.tolist() == [0, 333, 667]
    assert indices.tolist() == [0, 3, 6]
