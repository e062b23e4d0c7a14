"""GIF frames exactly as a browser shows them: the block structure parsed here, each frame's LZW data decoded by
Pillow, and the frames composited here.

Why not a library's compositor: FFmpeg (PyAV) and Pillow both fill disposal-2 areas and the initial canvas with
the background colour where browsers show transparency, and FFmpeg garbles frames wider than the logical screen
(tests/test_gif_factory.py pins each case). The browser rules, as in the GIF89a spec and WHATWG's image decoders:
    1. the canvas (logical screen) starts fully transparent;
    2. a frame draws its non-transparent pixels into the canvas, clipped to the logical screen;
    3. after display, disposal 2 clears the frame's rectangle to transparent, 3 restores the canvas from before
       the frame, 0 and 1 leave it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class GifFrameInfo:
    """Where one frame's pieces are in the file, and how to draw it."""

    left: int
    top: int
    width: int
    height: int
    delay_ms: int  # raw delay as stored (centiseconds x 10)
    disposal: int
    transparent_index: int | None
    interlaced: bool
    palette: bytes  # the colour table this frame uses (local, else global), RGB triples
    data_start: int  # the LZW minimum code size byte
    data_end: int  # one past the block terminator


@dataclass(frozen=True)
class GifFile:
    width: int
    height: int
    frames: tuple[GifFrameInfo, ...]  # complete frames only
    truncated: bool  # the file ends before its trailer
    frame_cut: bool = False  # it ends inside a frame (or the Graphic Control Extension announcing one)


def _table(data: bytes, pos: int, flags: int) -> tuple[bytes, int]:
    """The colour table at `pos` if `flags` says there is one, and the position after it."""
    if not flags & 0x80:
        return b"", pos
    size = 3 * 2 ** ((flags & 7) + 1)
    return data[pos : pos + size], pos + size


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """The position after a chain of data sub-blocks; IndexError if the data ends first."""
    while True:
        size = data[pos]
        if size == 0:
            return pos + 1
        pos += size + 1
        if pos >= len(data):
            raise IndexError("sub-block runs past the end of the data")


def parse_gif(data: bytes) -> GifFile:
    """Walk the blocks; frames whose image data is cut off by the end of the file are not counted.

    Only the headers are read: nothing here allocates from the sizes they claim (the probe checks those first).
    """
    if len(data) < 13:
        raise ValueError("GIF header is truncated")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    global_table, pos = _table(data, 13, flags)
    frames: list[GifFrameInfo] = []
    control = (0, 0, None)  # delay_cs, disposal, transparent index of the next frame
    truncated = True
    pending = False  # a frame was announced (a Graphic Control Extension or a descriptor) and is not complete yet
    try:
        while pos < len(data):
            block = data[pos]
            if block == 0x3B:  # trailer
                truncated = False
                break
            if block == 0x21:  # extension; a Graphic Control Extension describes the next frame
                if data[pos + 1] == 0xF9:
                    pending = True
                    packed, delay_cs, index = struct.unpack_from("<BHB", data, pos + 3)
                    control = (delay_cs, (packed >> 2) & 7, index if packed & 1 else None)
                pos = _skip_sub_blocks(data, pos + 2)
            elif block == 0x2C:  # image descriptor
                pending = True
                left, top, w, h, image_flags = struct.unpack_from("<HHHHB", data, pos + 1)
                local_table, start = _table(data, pos + 10, image_flags)
                pos = _skip_sub_blocks(data, start + 1)  # +1: the LZW minimum code size byte
                delay_cs, disposal, transparent = control
                frames.append(
                    GifFrameInfo(
                        left,
                        top,
                        w,
                        h,
                        delay_cs * 10,
                        disposal,
                        transparent,
                        bool(image_flags & 0x40),
                        local_table or global_table,
                        start,
                        pos,
                    )
                )
                control, pending = (0, 0, None), False
            else:
                break  # bytes that are no block: keep the frames before them
    except (IndexError, struct.error):
        pass  # the data ended inside a block: that frame is incomplete and not kept
    return GifFile(width, height, tuple(frames), truncated, truncated and pending)


def frame_image(data: bytes, frame: GifFrameInfo) -> Image.Image:
    """Decode one frame as RGBA (transparent index -> alpha 0) by handing Pillow a one-frame GIF of its bytes."""
    size_field = max(0, (max(len(frame.palette) // 3, 2) - 1).bit_length() - 1)
    table = frame.palette.ljust(3 * (2 << size_field), b"\0")  # indices past the table show black, as in browsers
    header = b"GIF89a" + struct.pack("<HHBBB", frame.width, frame.height, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack(
        "<HHHHB", 0, 0, frame.width, frame.height, 0x80 | (0x40 if frame.interlaced else 0) | size_field
    )
    single = header + descriptor + table + data[frame.data_start : frame.data_end] + b"\x3b"
    with Image.open(io.BytesIO(single)) as image:
        image.load()
        if frame.transparent_index is not None:
            image.info["transparency"] = frame.transparent_index
        return image.convert("RGBA")


def composite(data: bytes, gif: GifFile, wanted: set[int]) -> dict[int, Image.Image]:
    """RGBA canvases of the wanted frames, composited in order up to the last wanted one.

    Alpha is 0 or 255 in a GIF, so pasting a frame with its own alpha as the mask is exactly "draw the
    non-transparent pixels"; Pillow clips the paste to the canvas.
    """
    canvas = Image.new("RGBA", (gif.width, gif.height), (0, 0, 0, 0))
    shown: dict[int, Image.Image] = {}
    for index in range(max(wanted) + 1):
        frame = gif.frames[index]
        saved = canvas.copy() if frame.disposal == 3 else None
        pixels = frame_image(data, frame)
        canvas.paste(pixels, (frame.left, frame.top), mask=pixels if frame.transparent_index is not None else None)
        if index in wanted:
            shown[index] = canvas.copy()
        if frame.disposal == 2:
            rect = (frame.left, frame.top, frame.left + frame.width, frame.top + frame.height)
            canvas.paste((0, 0, 0, 0), rect)
        elif saved is not None:
            canvas = saved
    return shown
