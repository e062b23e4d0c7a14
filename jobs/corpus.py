"""A small synthetic sticker corpus for the demo and the tests: made here, so no data has to be downloaded.

Animated GIFs of moving shapes (some with transparency, partial frames and zero delays), an animated WebP, an
APNG, a still PNG and JPEG, a manifest with captions, and -- so that the rejects table has something to show -- a
few broken inputs: a text file named .gif, an empty file, a truncated GIF, a tiny GIF and an exact duplicate.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "orange": (250, 150, 20)}
SHAPES = ("circle", "square")
MOTIONS = ("bouncing", "sliding", "growing")


@dataclass(frozen=True)
class Sticker:
    file: str
    caption: str | None


def animation(shape: str, colour: str, motion: str, size: int, frames: int, transparent: bool) -> list[Image.Image]:
    """`frames` RGBA frames of one shape moving over a clear (or light grey) background."""
    images = []
    for t in range(frames):
        phase = t / frames
        image = Image.new("RGBA", (size, size), (0, 0, 0, 0) if transparent else (235, 235, 235, 255))
        draw = ImageDraw.Draw(image)
        r = size // 6 if motion != "growing" else int(size / 10 + size / 4 * abs(np.sin(np.pi * phase)))
        cx = size // 2 if motion != "sliding" else int(r + (size - 2 * r) * phase)
        cy = size // 2 if motion != "bouncing" else int(size - r - (size - 2 * r) * abs(np.sin(np.pi * phase)))
        box = (cx - r, cy - r, cx + r, cy + r)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour] + (255,))
        images.append(image)
    return images


def _save_gif(path: str, frames: list[Image.Image], delays_ms: list[int]) -> None:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=delays_ms, loop=0, disposal=2)


def make_corpus(folder: str, count: int = 24, seed: int = 0, broken: bool = True) -> list[Sticker]:
    """Write `count` good stickers (and the broken ones) plus manifest.csv into `folder`; return what was made."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    made: list[Sticker] = []
    for i in range(count):
        shape, colour, motion = SHAPES[i % 2], list(COLOURS)[i % 4], MOTIONS[i % 3]
        size = int(rng.choice([96, 128, 160]))
        frames = animation(shape, colour, motion, size, int(rng.integers(6, 20)), transparent=bool(i % 2))
        caption = f"a {colour} {shape} {motion}"
        kind = ("gif", "gif", "gif", "webp", "apng")[i % 5]
        name = f"sticker_{i:03d}.{'png' if kind == 'apng' else kind}"
        delays = [0 if (i % 7 == 0 and t == 0) else int(rng.choice([40, 60, 100])) for t in range(len(frames))]
        path = os.path.join(folder, name)
        if kind == "gif":
            _save_gif(path, frames, delays)
        else:
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=delays, loop=0)
        made.append(Sticker(name, caption if i % 6 else None))  # some without captions, as in real crawls
    still = animation("square", "blue", "sliding", 128, 1, transparent=False)[0].convert("RGB")
    still.save(os.path.join(folder, "still.png"))
    still.save(os.path.join(folder, "still.jpg"), quality=95)
    made += [Sticker("still.png", "a blue square"), Sticker("still.jpg", "a blue square, as a JPEG")]
    if broken:
        made += _broken(folder, made[0].file)
    with open(os.path.join(folder, "manifest.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        writer.writerows([s.file, s.caption or ""] for s in made)
    return made


def _broken(folder: str, first: str) -> list[Sticker]:
    with open(os.path.join(folder, first), "rb") as f:
        good = f.read()
    files = {
        "not_a_gif.gif": b"this is a text file that pretends to be a GIF\n",
        "empty.gif": b"",
        "truncated.gif": good[: len(good) // 3],
        "sticker_000_copy.gif": good,  # sorts after the original, so the original is kept
    }
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    tiny = animation("circle", "red", "bouncing", 16, 4, transparent=False)
    _save_gif(os.path.join(folder, "tiny.gif"), tiny, [100] * 4)
    return [Sticker(name, None) for name in [*files, "tiny.gif"]]
