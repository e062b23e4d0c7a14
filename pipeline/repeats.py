"""Repeated frames of a sampled clip: a frame held on screen is sampled more than once and loops show a pose again,
so the per-frame work after decoding (entropy, keyframe features) is done once per distinct frame and shared."""

from __future__ import annotations

import numpy as np

# Frames are first told apart by every STRIDE-th pixel of every STRIDE-th row (32 x 32 of a 256 x 256 canvas), then
# compared in full with the earlier frames that share that sample: a fifth of the cost of hashing whole frames
# (measured on the 60 stickers of bench/preprocess.py), and small beside the entropy and thumbnail work saved on a
# repeat (about 0.5 ms).
STRIDE = 8


def distinct_frames(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(firsts, inverse) for (f, h, w, 3) frames: `firsts` the index of each distinct frame's first copy, in order;
    `inverse[i]` the position in `firsts` of frame i, so that frames[firsts][inverse] equals frames exactly."""
    seen: dict[bytes, list[int]] = {}  # a frame's pixel sample -> positions in `firsts` of the frames with it
    firsts: list[int] = []
    inverse = np.empty(len(frames), dtype=np.intp)
    for i, frame in enumerate(frames):
        same_sample = seen.setdefault(frame[::STRIDE, ::STRIDE].tobytes(), [])
        position = next((p for p in same_sample if np.array_equal(frames[firsts[p]], frame)), None)
        if position is None:
            position = len(firsts)
            firsts.append(i)
            same_sample.append(position)
        inverse[i] = position
    return np.asarray(firsts, dtype=np.intp), inverse
