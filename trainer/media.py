"""Between clips and files: generated clips -> GIFs, and the image or GIF that a user gives `rdtf sample`.

Clips are (b, 3, f, h, w) floats in [-1, 1], as the trainer's data loader makes them. Transparent pixels are put
over white, as the pipeline does for training frames.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageSequence

GIF_FPS = 8  # the pipeline samples frames at 8 per second (decode.fps)


def clip_to_frames(clips: torch.Tensor) -> np.ndarray:
    """(b, 3, f, h, w) in [-1, 1] -> (b, f, h, w, 3) uint8."""
    pixels = ((clips.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).cpu().numpy()


def frames_to_clip(frames: np.ndarray) -> torch.Tensor:
    """(f, h, w, 3) uint8 -> (1, 3, f, h, w) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def write_gif(frames: np.ndarray, path: str, fps: int = GIF_FPS) -> str:
    """Write (f, h, w, 3) uint8 frames as a looping GIF (written to a temp name, then renamed).

    Pillow stores identical neighbouring frames once, with their display times summed: the GIF still plays f
    frames' worth of time, as the pipeline reads GIFs (by display time).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    # GIF delays are in 10 ms units: round the frame start times, so 8 fps plays 130, 120, 130, ... = 1000 ms.
    starts = [int(i * 100 / fps + 0.5) * 10 for i in range(len(images) + 1)]
    durations = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    temp = path + ".tmp"
    images[0].save(temp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0, disposal=1)
    os.replace(temp, path)
    return path


def _on_white(image: Image.Image, size: int) -> np.ndarray:
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return np.asarray(canvas.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def read_image(path: str, size: int) -> np.ndarray:
    """A still image (the first frame of an animation) as (1, size, size, 3) uint8."""
    with Image.open(path) as image:
        return _on_white(image, size)[None]


def read_frames(path: str, size: int, count: int) -> np.ndarray:
    """`count` frames spread evenly over an animation (repeated when it has fewer): (count, size, size, 3) uint8."""
    with Image.open(path) as image:
        frames = [_on_white(frame, size) for frame in ImageSequence.Iterator(image)]
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.stack([frames[i] for i in picks])


GIVEN_BORDER = (255, 0, 160)  # the border of a given (not generated) frame in a grid


def frame_grid(rows: list[np.ndarray], given: list[list[int]], scale: int = 2) -> Image.Image:
    """A picture of clips, one clip (f, h, w, 3) uint8 per row, each frame scaled up `scale` times; the frames
    listed in `given[row]` get a coloured border, so a reader sees which frames a task was given."""
    height, width = rows[0].shape[1:3]
    cell_h, cell_w = scale * height + 4, scale * width + 4
    grid = Image.new("RGB", (max(len(r) for r in rows) * cell_w, len(rows) * cell_h), (255, 255, 255))
    for r, clip in enumerate(rows):
        for c, frame in enumerate(clip):
            if c in given[r]:
                grid.paste(GIVEN_BORDER, (c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h))
            image = Image.fromarray(frame).resize((scale * width, scale * height), Image.Resampling.NEAREST)
            grid.paste(image, (c * cell_w + 2, r * cell_h + 2))
    return grid
