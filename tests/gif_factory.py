"""Hand-written GIF89a files and a plain reference compositor, for tests.

Real-world GIFs exercise decoder corners (partial frames, disposal methods, transparency,
interlacing, local palettes, zero delays) that encoders such as Pillow never write on
request. ``build_gif`` writes exactly the bytes asked for, and ``reference_composite``
states what a browser shows for them, so decoders can be checked against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LZW_MIN_CODE_SIZE = 8
CLEAR_CODE = 1 << LZW_MIN_CODE_SIZE  # 256
END_CODE = CLEAR_CODE + 1  # 257
# After a clear, each literal but the first adds a table entry (258, 259, ...). Clearing
# every 254 literals keeps the next entry below 511, so the code width stays at 9 bits
# even for decoders that widen one code early.
LITERALS_PER_CLEAR = CLEAR_CODE - 2


@dataclass
class GifFrame:
    """One GIF image block with its Graphic Control Extension."""

    indices: np.ndarray  # (h, w) uint8 palette indices
    left: int = 0
    top: int = 0
    delay_cs: int = 10  # GIF delay, centiseconds
    disposal: int = 0  # 0-3
    transparent_index: int | None = None
    interlace: bool = False
    local_palette: np.ndarray | None = None  # (n, 3) uint8


def _u16(value: int) -> bytes:
    return int(value).to_bytes(2, "little")


def _colour_table(palette: np.ndarray) -> tuple[bytes, int]:
    """Pad ``palette`` to a power of two (>= 2 entries); return (bytes, GIF size field)."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    size_field = max(0, int(np.ceil(np.log2(max(len(palette), 2)))) - 1)
    padded = np.zeros((2 << size_field, 3), dtype=np.uint8)
    padded[: len(palette)] = palette
    return padded.tobytes(), size_field


def _lzw_encode(indices: np.ndarray) -> bytes:
    """Valid but uncompressed LZW: 9-bit literal codes with periodic clear codes."""
    flat = np.asarray(indices, dtype=np.uint8).ravel().tolist()
    codes: list[int] = []
    for start in range(0, len(flat), LITERALS_PER_CLEAR):
        codes.append(CLEAR_CODE)
        codes.extend(flat[start : start + LITERALS_PER_CLEAR])
    codes.append(END_CODE)
    bits, nbits, out = 0, 0, bytearray()
    for code in codes:  # codes are packed least-significant bit first
        bits |= code << nbits
        nbits += LZW_MIN_CODE_SIZE + 1
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits:
        out.append(bits & 0xFF)
    blocks = bytearray([LZW_MIN_CODE_SIZE])
    for start in range(0, len(out), 255):
        chunk = out[start : start + 255]
        blocks += bytes([len(chunk)]) + chunk
    return bytes(blocks + b"\x00")


def _interlace_order(height: int) -> list[int]:
    """Row order of an interlaced GIF image: 0,8,16..; 4,12..; 2,6..; 1,3.."""
    return [row for start, step in ((0, 8), (4, 8), (2, 4), (1, 2)) for row in range(start, height, step)]


def build_gif(
    frames: Sequence[GifFrame],
    width: int,
    height: int,
    palette: np.ndarray,
    background_index: int = 0,
    loop: int = 0,
) -> bytes:
    """Write a GIF89a byte for byte. Frames are not clipped to the logical screen."""
    table, size_field = _colour_table(palette)
    out = bytearray(b"GIF89a")
    out += _u16(width) + _u16(height) + bytes([0x80 | 0x70 | size_field, background_index, 0]) + table
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01" + _u16(loop) + b"\x00"
    for frame in frames:
        indices = np.asarray(frame.indices, dtype=np.uint8)
        h, w = indices.shape
        has_transparency = frame.transparent_index is not None
        gce_flags = (frame.disposal & 0x07) << 2 | int(has_transparency)
        out += b"\x21\xf9\x04" + bytes([gce_flags]) + _u16(frame.delay_cs)
        out += bytes([frame.transparent_index or 0, 0])
        image_flags, local_table = 0, b""
        if frame.local_palette is not None:
            local_table, local_size = _colour_table(frame.local_palette)
            image_flags |= 0x80 | local_size
        if frame.interlace:
            image_flags |= 0x40
            indices = indices[_interlace_order(h)]
        out += b"\x2c" + _u16(frame.left) + _u16(frame.top) + _u16(w) + _u16(h) + bytes([image_flags])
        out += local_table + _lzw_encode(indices)
    return bytes(out + b"\x3b")


def reference_composite(frames: Sequence[GifFrame], width: int, height: int, palette: np.ndarray) -> list[np.ndarray]:
    """What a browser shows: one (height, width, 4) uint8 RGBA canvas per frame.

    The canvas starts fully transparent. Disposal 2 clears the frame's rectangle to
    transparent (never to the background colour); disposal 3 restores the canvas as it
    was before the frame was drawn.
    """
    canvas = np.zeros((height, width, 4), dtype=np.uint8)
    shown: list[np.ndarray] = []
    for frame in frames:
        saved = canvas.copy() if frame.disposal == 3 else None
        colours = np.zeros((256, 3), dtype=np.uint8)
        frame_palette = palette if frame.local_palette is None else frame.local_palette
        frame_palette = np.asarray(frame_palette, dtype=np.uint8).reshape(-1, 3)
        colours[: len(frame_palette)] = frame_palette
        indices = np.asarray(frame.indices, dtype=np.uint8)
        h, w = indices.shape
        # The frame's rectangle clipped to the logical screen, in canvas coordinates.
        y0, y1 = min(frame.top, height), min(frame.top + h, height)
        x0, x1 = min(frame.left, width), min(frame.left + w, width)
        visible = indices[: y1 - y0, : x1 - x0]
        opaque = np.ones(visible.shape, dtype=bool)
        if frame.transparent_index is not None:
            opaque = visible != frame.transparent_index
        region = canvas[y0:y1, x0:x1]
        region[opaque, :3] = colours[visible[opaque]]
        region[opaque, 3] = 255
        shown.append(canvas.copy())
        if frame.disposal == 2:
            canvas[y0:y1, x0:x1] = 0
        elif frame.disposal == 3:
            canvas = saved
    return shown


def browser_delays_ms(delays_cs: Sequence[int]) -> list[int]:
    """Delays as browsers play them: 0 or 1 cs (0 or 10 ms) is stretched to 100 ms."""
    return [100 if delay <= 1 else delay * 10 for delay in delays_cs]
