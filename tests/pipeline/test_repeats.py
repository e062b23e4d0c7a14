"""Distinct frames of a sampled clip (pipeline.repeats): entropy and keyframes work once per distinct frame and
give exactly what the per-frame computation gives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rdtf.pipeline.config import DifficultyConfig
from rdtf.pipeline.entropy import EntropyStage, entropies, grey_frames, spatial_entropy, temporal_entropy
from rdtf.pipeline.frame_readers import sampled_frames
from rdtf.pipeline.keyframes import THUMBNAIL, KeyframeStage, select_keyframes, thumbnails
from rdtf.pipeline.probe import probe
from rdtf.pipeline.repeats import STRIDE, distinct_frames
from rdtf.schemas.dataset import KEYFRAME_COUNTS

# Shared stickers whose frames at 8 fps repeat: held frames (16 sampled, 8 and 10 distinct indices) and a loop.
WITH_REPEATS = ["gifs/noto__71_Diagonal-mouth.gif", "gifs/noto__21_Slightly-happy.gif"]


def looped(pattern: str, size: int = 48) -> np.ndarray:
    """One frame per letter, a different picture for each letter; the same letter is the same frame."""
    rng = np.random.default_rng(0)
    pictures = {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in sorted(set(pattern))}
    return np.stack([pictures[c] for c in pattern])


def per_frame_thumbnails(frames: np.ndarray) -> np.ndarray:
    """The thumbnails as computed before pipeline.repeats: every frame resized on its own."""
    small = [np.asarray(Image.fromarray(f).resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)) for f in frames]
    return np.stack(small).reshape(len(frames), -1).astype(np.float64) / 255.0


def test_distinct_frames_finds_held_and_looped_repeats():
    frames = looped("AABCCCABDA")
    firsts, inverse = distinct_frames(frames)
    assert firsts.tolist() == [0, 2, 3, 8]  # A, B, C, D at their first copies
    assert inverse.tolist() == [0, 0, 1, 2, 2, 2, 0, 1, 3, 0]
    assert np.array_equal(frames[firsts][inverse], frames)


def test_frames_with_the_same_pixel_sample_are_still_told_apart():
    frames = looped("AA")
    frames[1, 1, 1] += 1  # off the sampled grid: only the full comparison sees it
    assert 1 % STRIDE != 0
    firsts, inverse = distinct_frames(frames)
    assert firsts.tolist() == [0, 1] and inverse.tolist() == [0, 1]


@pytest.fixture(scope="module")
def sticker_clips(stickers) -> list[np.ndarray]:
    clips = []
    for name in WITH_REPEATS:
        data = (stickers / name).read_bytes()
        facts = probe(data)
        frames, _ = sampled_frames(data, facts.format, facts.durations_ms, 8.0, 16, 256, "lanczos")
        clips.append(frames)
    return clips + [looped("ABCABCABCAB", size=64)]


def test_the_stickers_do_repeat_frames(sticker_clips):
    for frames in sticker_clips:
        assert len(distinct_frames(frames)[0]) < len(frames)


def test_entropies_equal_the_per_frame_computation(sticker_clips):
    for frames in sticker_clips:
        grey = grey_frames(frames)
        expected = (spatial_entropy(grey), temporal_entropy(grey))
        # Exactly equal: the same histograms (counted by Pillow there, numpy here), averaged in the same order.
        assert entropies(frames) == expected
        row = EntropyStage(DifficultyConfig())({"source_uri": ["x"], "frames": [frames]})
        assert (row["spatial_entropy"][0], row["temporal_entropy"][0]) == expected


def test_keyframes_equal_the_per_frame_computation(sticker_clips):
    for number, frames in enumerate(sticker_clips):
        assert np.array_equal(thumbnails(frames), per_frame_thumbnails(frames))
        sample_id = f"{number:08x}" + "0" * 56
        row = KeyframeStage()({"source_uri": ["x"], "frames": [frames], "sample_id": [sample_id]})
        features = per_frame_thumbnails(frames)
        expected = [select_keyframes(features, k, int(sample_id[:8], 16)) for k in KEYFRAME_COUNTS]
        assert row["keyframe_sets"][0] == expected
