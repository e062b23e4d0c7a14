"""The tasks one model learns, and what each is given: names and constants only, without torch, so that the
command line can offer them without loading the trainer (docs/masks.md)."""

from __future__ import annotations

NUM_FRAMES = 8  # every clip is padded to 8 frames (paper: "all on 8 frames")
TASKS = ("t2v", "i2v", "it2v", "interpolate", "predict-pre", "predict-post")
# The input gate: text is switched off for image-to-GIF only (paper notes, task table).
TEXT_ON = {"t2v": True, "i2v": False, "it2v": True, "interpolate": True, "predict-pre": True, "predict-post": True}
NEEDS_IMAGE = ("i2v", "it2v")  # given a still image (the first frame)
NEEDS_GIF = ("interpolate", "predict-pre", "predict-post")  # given frames of a clip
# With fewer than 5 keyframes, predict-post (given frames 0..3) would be given every valid frame and predict-pre
# (given 4..7) none: 5 is the fewest for which every task both gives and predicts a frame.
MIN_KEYFRAMES = 5
