"""Keyframe index sets for k = 3..8: cluster the frames into k groups and keep each group's first frame.

This is the paper's method (its code clusters VGG16 fc6 features with k-means; here k-means++ seeding and Lloyd's
steps, `kmeans_labels`). The per-frame features are the frames' CLIP embeddings when the CLIP stage runs, and small
colour thumbnails otherwise. A clip with fewer than k distinct frames is extended ping-pong style (the paper's rule),
so every set has exactly k indices in temporal order.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from PIL import Image

from rdtf.pipeline.repeats import distinct_frames
from rdtf.pipeline.stage import Stage
from rdtf.schemas.dataset import KEYFRAME_COUNTS

THUMBNAIL = 8  # 8x8x3 = 192 numbers per frame: enough to tell poses apart, cheap to cluster
KMEANS_ITERATIONS = 10  # at most (scipy kmeans2's `iter`); Lloyd's steps stop once the labels repeat (2-3 on a sticker)


def thumbnails(frames: np.ndarray) -> np.ndarray:
    """(f, h, w, 3) uint8 -> (f, 192) float features in [0, 1]; one thumbnail per distinct frame (pipeline.repeats),
    copied to its repeats."""
    firsts, inverse = distinct_frames(frames)
    box = Image.Resampling.BOX
    small = [np.asarray(Image.fromarray(frames[i]).resize((THUMBNAIL, THUMBNAIL), box)) for i in firsts]
    return np.stack(small).reshape(len(firsts), -1)[inverse].astype(np.float64) / 255.0


def ping_pong(count: int, k: int) -> list[int]:
    """0, 1, ..., count-1, count-2, ..., 1, 0, 1, ... cut to k indices (a single frame repeats)."""
    if count == 1:
        return [0] * k
    cycle = list(range(count)) + list(range(count - 2, 0, -1))
    return [cycle[i % len(cycle)] for i in range(k)]


def select_keyframes(features: np.ndarray, k: int, seed: int, distinct: np.ndarray | None = None) -> list[int]:
    """k frame indices in temporal order: the first frame of each of k clusters (k-means, seeded). `distinct`:
    np.unique(features, axis=0) when the caller has it (computed once for every k: it was a third of this stage)."""
    count = len(features)
    distinct = np.unique(features, axis=0) if distinct is None else distinct
    if len(distinct) < k:
        return ping_pong(count, k) if count < k else sorted(_first_of_each(features, distinct, k))
    labels = kmeans_labels(features, k, np.random.default_rng(seed))
    chosen = sorted({int(np.argmax(labels == label)) for label in np.unique(labels)})
    return _fill(chosen, count, k)


def kmeans_labels(features: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Each row's cluster among k: k-means++ seeding, then Lloyd's steps until the labels repeat.

    scipy's kmeans2(minit="++") (the same draws from `rng`; an empty cluster keeps its centre) in a few numpy calls:
    on a sticker's dozen frames scipy's per-call checks cost 10x the arithmetic, and its fixed 10 steps repeat the
    labels of the second or third. One difference: a row exactly as far from two centres (flat-colour thumbnails
    tie) goes to the lower one here, where scipy's BLAS distances (|x|^2 - 2 x.c + |c|^2) let rounding decide."""
    if not np.isfinite(features).all():  # as scipy refuses them: a NaN CLIP embedding must not pass silently
        raise ValueError("k-means features must be finite (a NaN or infinite frame embedding)")
    centres = np.empty((k, features.shape[1]))
    centres[0] = features[rng.integers(len(features))]
    nearest = ((features - centres[0]) ** 2).sum(axis=1)  # squared distance to the closest centre so far
    for i in range(1, k):  # each next centre drawn with probability proportional to that distance
        centres[i] = features[int(np.searchsorted(np.cumsum(nearest / nearest.sum()), rng.uniform()))]
        nearest = np.minimum(nearest, ((features - centres[i]) ** 2).sum(axis=1))
    labels = np.full(len(features), -1)
    for _ in range(KMEANS_ITERATIONS):
        new = ((features[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        members = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, features)
        kept = members > 0
        centres[kept] = sums[kept] / members[kept, None]
    return labels


def _first_of_each(features: np.ndarray, distinct: np.ndarray, k: int) -> list[int]:
    """With fewer distinct frames than k: the first occurrence of each distinct frame, then evenly spaced others."""
    firsts = sorted(int(np.argmax((features == d).all(axis=1))) for d in distinct)
    return _fill(firsts, len(features), k)


def _fill(chosen: list[int], count: int, k: int) -> list[int]:
    """Top up to k indices with unchosen frames spread evenly over the clip."""
    if len(chosen) >= k:
        return chosen[:k]
    rest = [i for i in range(count) if i not in chosen]
    picks = np.linspace(0, len(rest) - 1, k - len(chosen)).round().astype(int) if rest else []
    return sorted(chosen + [rest[p] for p in picks])


class KeyframeStage(Stage):
    """Writes keyframe_sets[k - 3] for every k in KEYFRAME_COUNTS, clustering thumbnails or CLIP frame embeddings."""

    name = "keyframes"
    reads = ("frames", "sample_id")
    writes = ("keyframe_sets",)

    def __init__(self, features: Literal["thumbnails", "clip"] = "thumbnails"):
        self.features = features
        self.reads = ("frame_embeddings" if features == "clip" else "frames", "sample_id")

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.features == "clip":  # a frame held on screen has the very same embedding at every sampled time
            features = np.asarray(row["frame_embeddings"], dtype=np.float64)
        else:
            features = thumbnails(row["frames"])
        seed = int(row["sample_id"][:8], 16)  # from the content: the same sticker always gets the same sets
        distinct = np.unique(features, axis=0)
        return {"keyframe_sets": [select_keyframes(features, k, seed, distinct) for k in KEYFRAME_COUNTS]}
