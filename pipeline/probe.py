"""What a file is -- format, size, frame count, per-frame delays -- read from its headers, without decoding pixels.

Knowing width x height x frames before decoding is what lets the pipeline refuse decompression bombs cheaply, and
knowing every frame's delay up front is what lets the decoder keep only the frames it samples.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image

from pipeline.gif import parse_gif
from pipeline.stage import Reject

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Browsers play a GIF delay of 0 or 10 ms at 100 ms; the same rule is applied to animated WebP and APNG here
# (their delays are a file's intent too), never to videos, whose short frames are real (120 fps is 8 ms).
BROWSER_MIN_DELAY_MS = 10
BROWSER_DEFAULT_DELAY_MS = 100
# A still image is one frame shown for this long.
STILL_DURATION_MS = 100
ANIMATED_IMAGE_FORMATS = ("gif", "webp", "apng")
# ISO-BMFF brands of still images (AVIF, HEIF): an `ftyp` box that is not a video.
IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")


@dataclass(frozen=True)
class Probe:
    """A file's header facts. `delays_ms` are raw delays as stored (one per frame)."""

    format: str  # gif | webp | apng | png | jpeg | mp4 | webm
    width: int
    height: int
    delays_ms: tuple[int, ...]
    truncated: bool = False  # frames after the last complete one are missing
    # Pixels a decoder touches: more than width x height x frames when GIF frames are larger than the screen.
    frame_pixels: int | None = None

    @property
    def num_frames(self) -> int:
        return len(self.delays_ms)

    @property
    def decoded_pixels(self) -> int:
        """What the decompression-bomb limit is checked against."""
        return self.frame_pixels if self.frame_pixels is not None else self.width * self.height * self.num_frames

    @property
    def durations_ms(self) -> list[int]:
        """Display time of each frame as a browser plays it (videos: as stored)."""
        if self.format not in ANIMATED_IMAGE_FORMATS:
            return list(self.delays_ms)
        return [BROWSER_DEFAULT_DELAY_MS if d <= BROWSER_MIN_DELAY_MS else d for d in self.delays_ms]


def sniff(data: bytes) -> str | None:
    """The format named by the file's magic bytes (never its extension), or None."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:8] == PNG_SIGNATURE:
        return "apng" if _png_chunks(data).get(b"acTL") else "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[4:8] == b"ftyp" and data[8:12] not in IMAGE_BRANDS:
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


def _gif(data: bytes) -> Probe:
    try:
        gif = parse_gif(data)
    except ValueError as error:
        raise Reject("corrupt", str(error)) from error
    if not gif.frames:
        raise Reject("corrupt", "GIF has no complete frame (truncated or malformed)")
    screen = gif.width * gif.height
    pixels = sum(max(f.width * f.height, screen) for f in gif.frames)  # each frame decoded, then composited
    return Probe("gif", gif.width, gif.height, tuple(f.delay_ms for f in gif.frames), gif.truncated, pixels)


def _png_chunks(data: bytes) -> dict[bytes, list[bytes]]:
    """PNG chunks by type, in order (payloads only)."""
    chunks: dict[bytes, list[bytes]] = {}
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.setdefault(kind, []).append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _png(data: bytes, fmt: str) -> Probe:
    chunks = _png_chunks(data)
    if not chunks.get(b"IHDR"):
        raise Reject("corrupt", "PNG has no IHDR chunk")
    width, height = struct.unpack_from(">II", chunks[b"IHDR"][0])
    if fmt == "png":
        return Probe(fmt, width, height, (STILL_DURATION_MS,))
    delays = []
    for fctl in chunks.get(b"fcTL", []):  # frame control: delay = num / den seconds (den 0 means 100)
        num, den = struct.unpack_from(">HH", fctl, 20)
        delays.append(round(1000 * num / (den or 100)))
    if not delays:
        raise Reject("corrupt", "APNG has no frame control chunks")
    return Probe(fmt, width, height, tuple(delays))


def _webp(data: bytes) -> Probe:
    pos, width, height, delays = 12, 0, 0, []
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from("<4sI", data, pos)
        payload = data[pos + 8 : pos + 8 + size]
        if kind == b"VP8X" and len(payload) >= 10:
            width = 1 + int.from_bytes(payload[4:7], "little")
            height = 1 + int.from_bytes(payload[7:10], "little")
        elif kind == b"ANMF" and len(payload) >= 16:
            delays.append(int.from_bytes(payload[12:15], "little"))
        pos += 8 + size + (size & 1)
    if not delays:  # a still WebP: let Pillow read its size from the VP8/VP8L header
        width, height = _pillow_size(data)
        return Probe("webp", width, height, (STILL_DURATION_MS,))
    return Probe("webp", width, height, tuple(delays))


def _pillow_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception as error:
        raise Reject("corrupt", f"cannot read image header: {error}") from error


def _video(data: bytes, fmt: str) -> Probe:
    import decord  # imported here: it starts FFmpeg's threads, which stills and GIFs never need

    try:
        reader = decord.VideoReader(io.BytesIO(data))
        stamps = reader.get_frame_timestamp(range(len(reader)))
        height, width = reader[0].shape[:2]
    except Exception as error:
        raise Reject("corrupt", f"decord cannot read this {fmt}: {error}") from error
    delays = tuple(max(1, round(1000 * (end - start))) for start, end in stamps)
    return Probe(fmt, int(width), int(height), delays)


def probe(data: bytes) -> Probe:
    """Read the facts of `data`, or raise Reject (unsupported_format, corrupt)."""
    fmt = sniff(data)
    if fmt is None:
        raise Reject("unsupported_format", f"not a GIF, WebP, PNG/APNG, JPEG, MP4 or WebM (starts with {data[:8]!r})")
    if fmt == "gif":
        return _gif(data)
    if fmt in ("png", "apng"):
        return _png(data, fmt)
    if fmt == "webp":
        return _webp(data)
    if fmt == "jpeg":
        width, height = _pillow_size(data)
        return Probe(fmt, width, height, (STILL_DURATION_MS,))
    return _video(data, fmt)
