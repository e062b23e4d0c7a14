"""Keyframe index sets for k = 3..8 (pipeline.keyframes)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from rdtf.pipeline.keyframes import KeyframeStage, kmeans_labels, ping_pong, select_keyframes, thumbnails
from rdtf.schemas.dataset import KEYFRAME_COUNTS

POSES = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (240, 200, 20), (120, 0, 160), (0, 160, 160)]


def clip(pattern: str, size: int = 32) -> np.ndarray:
    """One flat frame per letter: A is POSES[0], B is POSES[1], ..."""
    return np.stack([np.full((size, size, 3), POSES[ord(c) - ord("A")], dtype=np.uint8) for c in pattern])


def moving_clip(count: int, size: int = 64) -> np.ndarray:
    """A square sliding across white: every frame differs."""
    frames = np.full((count, size, size, 3), 255, dtype=np.uint8)
    for t in range(count):
        x = round(t * (size - 16) / max(1, count - 1))
        frames[t, 24:40, x : x + 16] = (200, 40, 40)
    return frames


def keyframe_sets(frames: np.ndarray, sample_id: str | None = None) -> list[list[int]]:
    sample_id = sample_id or hashlib.sha256(frames.tobytes()).hexdigest()
    out = KeyframeStage()({"source_uri": ["x"], "frames": [frames], "sample_id": [sample_id]})
    assert out["reject_reason"] == [None], out["reject_message"]
    return out["keyframe_sets"][0]


@pytest.mark.parametrize("count", [8, 12, 16])
def test_every_k_gets_k_sorted_indices_in_range(count):
    sets = keyframe_sets(moving_clip(count))
    assert len(sets) == len(KEYFRAME_COUNTS)
    for k, indices in zip(KEYFRAME_COUNTS, sets, strict=True):
        assert len(indices) == k
        assert indices == sorted(indices)
        assert len(set(indices)) == k  # distinct frames are available, so no repeats
        assert all(0 <= i < count for i in indices)
        assert all(isinstance(i, int) for i in indices)


def test_ping_pong():
    assert ping_pong(3, 8) == [0, 1, 2, 1, 0, 1, 2, 1]
    assert ping_pong(2, 5) == [0, 1, 0, 1, 0]
    assert ping_pong(1, 4) == [0, 0, 0, 0]
    assert ping_pong(5, 3) == [0, 1, 2]


def test_a_clip_shorter_than_k_is_extended_ping_pong():
    sets = keyframe_sets(moving_clip(3))
    for k, indices in zip(KEYFRAME_COUNTS, sets, strict=True):
        assert indices == ping_pong(3, k)
    assert sets[KEYFRAME_COUNTS.index(8)] == [0, 1, 2, 1, 0, 1, 2, 1]


def test_a_single_frame_repeats():
    sets = keyframe_sets(clip("A"))
    assert sets == [[0] * k for k in KEYFRAME_COUNTS]


def test_one_index_per_distinct_pose():
    features = thumbnails(clip("AAAABBBBCCCC"))
    for seed in range(5):
        assert select_keyframes(features, 3, seed) == [0, 4, 8]
    sets = keyframe_sets(clip("AAAABBBBCCCC"))
    assert sets[0] == [0, 4, 8]
    # With more k than poses, the first frame of each pose is always in the set.
    for indices in sets[1:]:
        assert {0, 4, 8} <= set(indices)


def test_poses_in_any_order_are_found_by_their_first_frame():
    sets = keyframe_sets(clip("CCCAAAAADDBB"))
    assert sets[KEYFRAME_COUNTS.index(4)] == [0, 3, 8, 10]


def test_same_seed_same_sets():
    frames = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    features = thumbnails(frames)
    sets = {seed: [select_keyframes(features, k, seed=seed) for k in KEYFRAME_COUNTS] for seed in (7, 8)}
    assert [select_keyframes(features, k, seed=7) for k in KEYFRAME_COUNTS] == sets[7]
    assert sets[7] != sets[8]  # 16 random frames have no clear clusters: the seed decides, so it must be fixed
    assert keyframe_sets(frames, "ab" * 32) == keyframe_sets(frames, "ab" * 32)


def test_thumbnails_are_small_features_in_0_1():
    features = thumbnails(clip("AB", size=40))
    assert features.shape == (2, 192)
    assert features.min() >= 0.0 and features.max() <= 1.0
    assert np.allclose(features[0].reshape(8, 8, 3)[3, 3], np.array(POSES[0]) / 255)


def blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """24 points in 6 well-separated groups of 192 numbers (a thumbnail's size), in shuffled order, and their group."""
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.repeat(np.arange(6), 4))
    return rng.uniform(0, 1, (6, 192))[groups] + rng.normal(0, 0.01, (24, 192)), groups


def test_kmeans_separates_clear_groups_whatever_the_seed():
    points, groups = blobs(0)
    for seed in range(10):
        labels = kmeans_labels(points, 6, np.random.default_rng(seed))
        pairs = set(zip(labels.tolist(), groups.tolist(), strict=True))
        assert len(pairs) == 6 and len({label for label, _ in pairs}) == 6  # one label per group, and back


def test_kmeans_is_scipys_kmeans2_with_plus_plus_seeding_away_from_ties():
    """The same algorithm as scipy's kmeans2(minit="++"), whose per-call overhead it avoids: the same labels for the
    same generator, also where k is smaller than the number of groups and the seeding decides (noisy points: no row
    is exactly as far from two centres, where the two break the tie differently)."""
    import warnings

    from scipy.cluster.vq import kmeans2

    for data_seed in range(3):
        points, _ = blobs(data_seed)
        for k in KEYFRAME_COUNTS:
            for seed in range(3):
                with warnings.catch_warnings():  # scipy warns about an empty cluster
                    warnings.simplefilter("ignore")
                    _, expected = kmeans2(points, k, minit="++", rng=np.random.default_rng(seed))
                assert kmeans_labels(points, k, np.random.default_rng(seed)).tolist() == expected.tolist()


def test_a_frame_embedding_that_is_not_finite_rejects_the_row_with_the_reason():
    embeddings = np.random.default_rng(0).normal(size=(6, 16))
    embeddings[2, 5] = np.nan
    row = {"source_uri": ["x"], "frame_embeddings": [embeddings], "sample_id": ["ab" * 32]}
    out = KeyframeStage(features="clip")(row)
    assert out["reject_reason"] == ["internal_error"]
    assert "must be finite" in out["reject_message"][0]


def test_rows_as_far_from_two_centres_go_to_the_lower_one():
    """Flat-colour thumbnails tie exactly; the rule must not depend on rounding (scipy's BLAS distances let it).
    Five rows at A, five at B, and M1, M2 exactly between them: seeded on A and B, both M rows tie, join centre 0,
    and stay there as it moves towards them."""
    a, b, m1, m2 = [0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.0, -1.0]
    points = np.array([a] * 5 + [b] * 5 + [m1, m2])
    checked = 0
    for seed in range(20):
        labels = kmeans_labels(points, 2, np.random.default_rng(seed))
        if labels[0] != labels[5] and labels[10] == labels[11]:  # seeded on A and B (else nothing ties)
            assert labels[10] == 0
            checked += 1
    assert checked >= 10
