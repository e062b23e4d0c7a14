"""What a file is -- format, size, frame count, per-frame delays, whether it is complete -- read from its headers,
without decoding pixels.

Knowing how many pixels a decoder will allocate before decoding is what lets the pipeline refuse decompression
bombs cheaply, and knowing every frame's delay up front is what lets the decoder keep only the frames it samples.
Nothing here allocates from the sizes an image header claims: GIF, APNG and WebP headers are parsed here, JPEG's
by Pillow (which reads no pixels). Videos are the exception: decord decodes their first frame to learn its size.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

from rdtf.pipeline.gif import parse_gif
from rdtf.pipeline.stage import Reject

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the whole chunk: no payload, and its CRC
GIF_TRAILER = b"\x3b"
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
class Truncation:
    """How a file that ends before its end (GIF trailer, PNG IEND, WebP RIFF size) was cut."""

    complete_end: int  # one past the last complete frame's data: the part a decoder can be handed
    implied_frames: int | None  # frames the header or structure implies, at least; None: unknown
    where: str  # how the data ends, e.g. "the data ends inside frame 6"

    def message(self, complete_frames: int) -> str:
        implied = "an unknown number" if self.implied_frames is None else f"at least {self.implied_frames}"
        return f"{self.where}: {complete_frames} complete frames of {implied}"


@dataclass(frozen=True)
class Probe:
    """A file's header facts. `delays_ms` are raw delays as stored, one per complete frame."""

    format: str  # gif | webp | apng | png | jpeg | mp4 | webm
    width: int
    height: int
    delays_ms: tuple[int, ...]
    # Pixels a decoder allocates over the complete frames: the canvas it composites each frame into plus the
    # frame's own rectangle (which a GIF may make larger than the canvas). None: width x height x frames.
    pixels: int | None = None
    truncation: Truncation | None = None  # None: the file is complete

    @property
    def num_frames(self) -> int:
        return len(self.delays_ms)

    @property
    def truncated(self) -> bool:
        return self.truncation is not None

    @property
    def decoded_pixels(self) -> int:
        """What the decompression-bomb limit is checked against."""
        return self.pixels if self.pixels is not None else self.width * self.height * self.num_frames

    @property
    def durations_ms(self) -> list[int]:
        """Display time of each frame as a browser plays it (videos: as stored)."""
        if self.format not in ANIMATED_IMAGE_FORMATS:
            return list(self.delays_ms)
        return [BROWSER_DEFAULT_DELAY_MS if d <= BROWSER_MIN_DELAY_MS else d for d in self.delays_ms]


@dataclass(frozen=True)
class _Chunk:
    """One PNG chunk; `end` (one past its CRC) lies past the data when the file ends inside it."""

    kind: bytes
    start: int
    end: int
    payload: bytes


def sniff(data: bytes) -> str | None:
    """The format named by the file's magic bytes (never its extension), or None."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:8] == PNG_SIGNATURE:
        return "apng" if any(c.kind == b"acTL" for c in _png_chunks(data)) else "png"
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
    pixels = sum(screen + f.width * f.height for f in gif.frames)  # each frame decoded, then composited
    truncation = None
    if gif.truncated:
        complete = len(gif.frames)
        where = (
            f"the data ends inside frame {complete + 1}"
            if gif.frame_cut
            else f"the data ends after frame {complete} without the GIF trailer"
        )
        truncation = Truncation(gif.frames[-1].data_end, complete + 1 if gif.frame_cut else None, where)
    return Probe("gif", gif.width, gif.height, tuple(f.delay_ms for f in gif.frames), pixels, truncation)


def _png_chunks(data: bytes) -> list[_Chunk]:
    """PNG chunks in order, up to IEND or the end of the data (the last one may be cut)."""
    chunks: list[_Chunk] = []
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append(_Chunk(kind, pos, pos + 12 + length, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _png(data: bytes, fmt: str) -> Probe:
    chunks = _png_chunks(data)
    ihdr = next((c for c in chunks if c.kind == b"IHDR" and len(c.payload) >= 8), None)
    if ihdr is None:
        raise Reject("corrupt", "PNG has no IHDR chunk")
    width, height = struct.unpack_from(">II", ihdr.payload)
    if fmt == "png":
        return Probe(fmt, width, height, (STILL_DURATION_MS,))
    return _apng(data, chunks, width, height)


def _apng(data: bytes, chunks: list[_Chunk], width: int, height: int) -> Probe:
    """Frames are fcTL chunks each followed by its image data (IDAT or fdAT chunks); a frame is complete once a
    chunk of another kind starts after its data."""
    canvas = width * height
    (announced,) = struct.unpack_from(">I", next(c for c in chunks if c.kind == b"acTL").payload.ljust(4, b"\0"))
    delays: list[int] = []
    pixels = complete_end = 0
    frame: _Chunk | None = None  # the fcTL of the frame whose data is being read
    frame_data = False  # whether that frame's data has begun
    default_image = False  # image data before the first fcTL: shown by Pillow as an extra first frame
    for chunk in chunks:
        is_data = chunk.kind in (b"IDAT", b"fdAT")
        if frame is not None and frame_data and not is_data:
            num, den = struct.unpack_from(">HH", frame.payload, 20)  # delay = num / den seconds (den 0 means 100)
            delays.append(round(1000 * num / (den or 100)))
            frame_width, frame_height = struct.unpack_from(">II", frame.payload, 4)
            pixels += canvas + frame_width * frame_height
            complete_end, frame = chunk.start, None
        if chunk.end > len(data):
            break
        if chunk.kind == b"fcTL":
            if len(chunk.payload) < 26:
                raise Reject("corrupt", f"APNG frame control chunk of {len(chunk.payload)} bytes (26 expected)")
            frame, frame_data = chunk, False
        elif is_data and frame is not None:
            frame_data = True
        elif chunk.kind == b"IDAT" and not delays:
            default_image = True
    if not delays:
        raise Reject("corrupt", "APNG has no complete frame (truncated or malformed)")
    pixels += 2 * canvas if default_image else 0
    truncation = None
    if chunks[-1].kind != b"IEND":
        where = f"the data ends before the PNG's IEND chunk (its acTL chunk announces {announced} frames)"
        truncation = Truncation(complete_end, max(announced, len(delays)), where)
    return Probe("apng", width, height, tuple(delays), pixels, truncation)


def _webp(data: bytes) -> Probe:
    """Chunks after the 12-byte RIFF header, up to the size it announces; a chunk that runs past the data is cut."""
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    end = min(len(data), riff_end)
    pos, width, height, delays, pixels, still_size = 12, 0, 0, [], 0, None
    complete_end, cut = 12, None  # where the last complete frame ends; the kind of the chunk cut off, if any
    while pos < end:
        if pos + 8 > end:
            cut = b""
            break
        kind, size = struct.unpack_from("<4sI", data, pos)
        if pos + 8 + size > end:
            cut = kind
            break
        payload = data[pos + 8 : pos + 8 + size]
        if kind == b"VP8X" and len(payload) >= 10:
            width = 1 + int.from_bytes(payload[4:7], "little")
            height = 1 + int.from_bytes(payload[7:10], "little")
        elif kind == b"ANMF" and len(payload) >= 16:
            frame_width = 1 + int.from_bytes(payload[6:9], "little")
            frame_height = 1 + int.from_bytes(payload[9:12], "little")
            delays.append(int.from_bytes(payload[12:15], "little"))
            pixels += width * height + frame_width * frame_height  # libwebp composites each frame into the canvas
            complete_end = pos + 8 + size + (size & 1)
        elif kind in (b"VP8 ", b"VP8L") and still_size is None:
            still_size = _webp_bitstream_size(kind, payload)
        pos += 8 + size + (size & 1)
    truncated = len(data) < riff_end
    if not delays:  # a still WebP
        if truncated:
            raise Reject("corrupt", f"WebP ends at byte {len(data)} of the {riff_end} its RIFF header announces")
        size = (width, height) if width else still_size
        if size is None:
            raise Reject("corrupt", "WebP has no VP8X, VP8 or VP8L image header")
        return Probe("webp", *size, (STILL_DURATION_MS,))
    truncation = None
    if truncated:
        where = f"the data ends at byte {len(data)} of the {riff_end} its RIFF header announces"
        implied = len(delays) + 1 if cut == b"ANMF" else None
        truncation = Truncation(complete_end, implied, where + (f" (inside frame {implied})" if implied else ""))
    return Probe("webp", width, height, tuple(delays), pixels, truncation)


def _webp_bitstream_size(kind: bytes, payload: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 (lossy) or VP8L (lossless) bitstream header, as libwebp reads them."""
    if kind == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", payload, 6)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        bits = int.from_bytes(payload[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _pillow_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            return image.size
    except Image.DecompressionBombError as error:  # Pillow's own limit, twice Image.MAX_IMAGE_PIXELS
        raise Reject("decompression_bomb", str(error)) from error
    except MemoryError:  # over decode.max_memory_mb in the decoder process: too_large, not corrupt
        raise
    except Exception as error:
        raise Reject("corrupt", f"cannot read image header: {error}") from error


def _video(data: bytes, fmt: str) -> Probe:
    import decord  # imported here: it starts FFmpeg's threads, which stills and GIFs never need

    try:
        reader = decord.VideoReader(io.BytesIO(data))
        stamps = reader.get_frame_timestamp(range(len(reader)))
        height, width = reader[0].shape[:2]
    except MemoryError:  # over decode.max_memory_mb in the decoder process: too_large, not corrupt
        raise
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


def complete_part(data: bytes, facts: Probe) -> bytes:
    """A truncated file cut to its complete frames and closed as a valid file of its format, for decoders that
    refuse a cut file (Pillow's WebP and APNG readers do); a complete file as it is."""
    if facts.truncation is None:
        return data
    end = facts.truncation.complete_end
    if facts.format == "gif":
        return data[:end] + GIF_TRAILER
    if facts.format == "webp":
        return b"RIFF" + struct.pack("<I", end - 8) + data[8:end]
    # APNG: IEND after the last complete frame, and acTL's frame count corrected (Pillow plays what it says).
    actl = next(c for c in _png_chunks(data) if c.kind == b"acTL")
    payload = struct.pack(">I", facts.num_frames) + actl.payload[4:]
    chunk = struct.pack(">I", len(payload)) + b"acTL" + payload + struct.pack(">I", zlib.crc32(b"acTL" + payload))
    return data[: actl.start] + chunk + data[actl.end : end] + PNG_IEND
