"""Static difficulty (pipeline.entropy): spatial and temporal entropy in bits, difficulty in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import shannon_entropy

from rdtf.pipeline.config import DifficultyConfig
from rdtf.pipeline.entropy import (
    EntropyStage,
    grey_frames,
    histogram_entropy,
    spatial_entropy,
    static_difficulty,
    temporal_entropy,
)


def scores(frames: np.ndarray, cfg: DifficultyConfig | None = None) -> dict:
    out = EntropyStage(cfg or DifficultyConfig())({"source_uri": ["x"], "frames": [frames]})
    assert out["reject_reason"] == [None], out["reject_message"]
    return {k: out[k][0] for k in ("spatial_entropy", "temporal_entropy", "static_difficulty")}


def moving_square(count: int, step: int, size: int = 64) -> np.ndarray:
    """A black 16x16 square on white moving `step` pixels per frame."""
    frames = np.full((count, size, size, 3), 255, dtype=np.uint8)
    for t in range(count):
        x = (t * step) % (size - 16)
        frames[t, 24:40, x : x + 16] = 0
    return frames


@pytest.mark.parametrize("value", [0, 255, 128])
def test_blank_frames_have_no_entropy(value):
    s = scores(np.full((4, 32, 32, 3), value, dtype=np.uint8))
    assert s["spatial_entropy"] == 0.0
    assert s["temporal_entropy"] == 0.0
    assert s["static_difficulty"] == 0.0


def test_uniform_noise_has_nearly_8_bits():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 256, 256), dtype=np.uint8)
    frames = np.repeat(grey[..., None], 3, axis=-1)  # grey RGB: luma is the same value
    s = scores(frames)
    assert 7.95 < s["spatial_entropy"] <= 8.0
    assert s["temporal_entropy"] > 7.0


def test_a_still_has_no_temporal_entropy():
    rng = np.random.default_rng(1)
    still = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    s = scores(still)
    assert s["spatial_entropy"] > 5
    assert s["temporal_entropy"] == 0.0
    # Repeating the same picture is still no motion.
    assert scores(np.repeat(still, 5, axis=0))["temporal_entropy"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_histogram_entropy_equals_skimage(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, rng.integers(2, 257), (rng.integers(1, 80), rng.integers(1, 80)), dtype=np.uint8)
    assert histogram_entropy(image) == pytest.approx(shannon_entropy(image), abs=1e-9)


def test_histogram_entropy_of_known_histograms():
    assert histogram_entropy(np.zeros((8, 8), np.uint8)) == 0.0
    assert histogram_entropy(np.array([[0, 255]], np.uint8)) == pytest.approx(1.0)
    assert histogram_entropy(np.arange(256, dtype=np.uint8).reshape(16, 16)) == pytest.approx(8.0)


def test_spatial_entropy_is_the_mean_over_frames_and_temporal_uses_consecutive_differences():
    grey = np.stack([np.zeros((4, 4), np.uint8), np.array([[0, 255] * 8], np.uint8).reshape(4, 4)])
    assert spatial_entropy(grey) == pytest.approx(0.5)  # frames of 0 and 1 bit
    assert temporal_entropy(grey) == pytest.approx(1.0)  # |diff| is half 0, half 255


def test_grey_frames_uses_luma():
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    frames[0, 0, 0] = (255, 0, 0)
    frames[0, 1, 1] = (0, 255, 0)
    grey = grey_frames(frames)
    assert grey.shape == (1, 2, 2) and grey.dtype == np.uint8
    assert grey[0, 0, 0] == 76 and grey[0, 1, 1] == 150  # ITU-R 601-2: 0.299 R, 0.587 G


@pytest.mark.parametrize("weights", [(0.4, 0.6), (1.0, 0.0), (0.0, 1.0), (3.0, 1.0)])
def test_static_difficulty_is_in_0_1(weights):
    cfg = DifficultyConfig(*weights)
    for h_s in (0.0, 3.0, 8.0):
        for h_t in (0.0, 5.0, 8.0):
            assert 0.0 <= static_difficulty(h_s, h_t, cfg) <= 1.0
    assert static_difficulty(0.0, 0.0, cfg) == 0.0
    assert static_difficulty(8.0, 8.0, cfg) == pytest.approx(1.0)


def test_static_difficulty_weights_spatial_and_temporal():
    cfg = DifficultyConfig(spatial_weight=0.4, temporal_weight=0.6)
    assert static_difficulty(8.0, 0.0, cfg) == pytest.approx(0.4)
    assert static_difficulty(0.0, 8.0, cfg) == pytest.approx(0.6)


def test_difficulty_increases_with_motion():
    still = scores(moving_square(8, step=0))
    slow = scores(moving_square(8, step=2))
    fast = scores(moving_square(8, step=8))
    noisy = np.random.default_rng(2).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    wild = scores(noisy)
    assert still["temporal_entropy"] == 0.0
    runs = [still, slow, fast, wild]
    for key in ("temporal_entropy", "static_difficulty"):
        values = [s[key] for s in runs]
        assert values == sorted(values) and len(set(values)) == len(values), (key, values)
    for s in runs:
        assert 0.0 <= s["static_difficulty"] <= 1.0
