"""Checks the hand-written GIFs decode, and measures PyAV and Pillow against the browser reference.

Pixels are compared as a viewer sees them: alpha must match everywhere and RGB must match
wherever alpha > 0; the RGB under fully transparent pixels is ignored (it is invisible).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import pytest
from gif_factory import GifFrame, browser_delays_ms, build_gif, reference_composite
from PIL import Image, ImageSequence

from rdtf.pipeline.gif import composite, parse_gif
from rdtf.pipeline.probe import probe

# Index 0 is brown, not black, so a fill with index 0 cannot pass for transparent-as-black.
PALETTE = np.array(
    [[90, 60, 30], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]]
    + [[128, 128, 128]],
    dtype=np.uint8,
)
LOCAL_PALETTE = np.array([[10, 20, 30], [200, 100, 50], [60, 160, 250], [250, 250, 250]], dtype=np.uint8)
W, H = 20, 16  # 320 pixels per full frame: the LZW data needs more than one clear code


@dataclass
class GifCase:
    """One test GIF on the W x H logical screen."""

    frames: list[GifFrame]
    background_index: int = 0


def _noise(seed: int, h: int, w: int, low: int = 1, high: int = 8) -> np.ndarray:
    """Random indices in [low, high), so a misplaced or misordered row or column shows up."""
    return np.random.default_rng(seed).integers(low, high, size=(h, w), dtype=np.uint8)


def _holey(seed: int, h: int, w: int) -> np.ndarray:
    """Random indices 0-7; index 0 is used as the transparent index."""
    return _noise(seed, h, w, low=0)


CASES: dict[str, GifCase] = {
    "disposal0_partial": GifCase(
        [
            GifFrame(_noise(1, H, W)),
            GifFrame(_noise(2, 4, 5), left=3, top=2),
            GifFrame(_holey(3, 3, 6), left=10, top=9, transparent_index=0),
        ]
    ),
    "disposal1_transparency": GifCase(
        [
            GifFrame(_noise(4, H, W), disposal=1),
            GifFrame(_holey(5, H, W), disposal=1, transparent_index=0),
            GifFrame(_holey(6, 5, 4), left=7, top=6, disposal=1, transparent_index=0),
        ]
    ),
    "disposal2_transparent_index": GifCase(
        [
            GifFrame(_noise(7, H, W)),
            GifFrame(_holey(8, 5, 6), left=4, top=3, disposal=2, transparent_index=0),
            GifFrame(_holey(9, 4, 4), left=8, top=6, transparent_index=0),
        ]
    ),
    "disposal2_no_transparency_bg3": GifCase(
        [
            GifFrame(_noise(10, H, W)),
            GifFrame(_noise(11, 5, 6), left=4, top=3, disposal=2),
            GifFrame(_noise(12, 4, 4), left=8, top=6),
        ],
        background_index=3,
    ),
    "disposal3_restore": GifCase(
        [
            GifFrame(_noise(13, H, W)),
            GifFrame(_noise(14, 5, 6), left=2, top=2, disposal=3),
            GifFrame(_holey(15, 6, 6), left=5, top=4, disposal=3, transparent_index=0),
            GifFrame(_holey(16, 3, 3), left=6, top=5, transparent_index=0),
        ]
    ),
    "overhang_non_first_frame": GifCase(
        [
            GifFrame(_noise(17, H, W)),
            GifFrame(_holey(18, 7, 8), left=15, top=12, disposal=2, transparent_index=0),
            GifFrame(_noise(19, H + 4, 6), left=4, top=3),  # taller than the logical screen
        ]
    ),
    "wider_than_screen": GifCase(
        [
            GifFrame(_noise(34, H, W)),
            GifFrame(_noise(35, 6, W + 5), left=3, top=5),
        ]
    ),
    "outside_screen": GifCase(
        [
            GifFrame(_noise(36, H, W)),
            GifFrame(_noise(37, 4, 4), left=W + 2, top=3, disposal=2),  # draws nothing, clears nothing
            GifFrame(_holey(38, 5, 5), left=6, top=H, transparent_index=0),
        ]
    ),
    "interlaced": GifCase(
        [
            GifFrame(_noise(20, H, W), interlace=True),
            GifFrame(_holey(21, 7, 5), left=2, top=3, interlace=True, transparent_index=0),
        ]
    ),
    "local_palette": GifCase(
        [
            GifFrame(_noise(22, H, W)),
            GifFrame(_noise(23, 5, 7, low=0, high=4), left=3, top=3, local_palette=LOCAL_PALETTE),
            GifFrame(_holey(24, 6, 6) % 4, left=9, top=7, local_palette=LOCAL_PALETTE, transparent_index=0),
            GifFrame(_holey(25, 4, 4), left=1, top=10, transparent_index=0),
        ]
    ),
    "zero_delay": GifCase(
        [
            GifFrame(_noise(26, H, W), delay_cs=0),
            GifFrame(_noise(27, 4, 4), left=2, top=2, delay_cs=1),
            GifFrame(_holey(28, 5, 5), left=8, top=8, delay_cs=0, transparent_index=0),
            GifFrame(_noise(29, 3, 3), left=15, top=1, delay_cs=7),
        ]
    ),
    "first_frame_transparent": GifCase(
        [
            GifFrame(_holey(30, H, W), transparent_index=0),
            GifFrame(_noise(31, 4, 6), left=5, top=5),
        ],
        background_index=2,
    ),
    "first_frame_partial_opaque_bg3": GifCase(
        [
            GifFrame(_noise(32, 6, 8), left=4, top=4),
            GifFrame(_holey(33, 4, 4), left=14, top=10, transparent_index=0),
        ],
        background_index=3,
    ),
}

# Measured differences from the browser reference (PyAV 18.1 / libavcodec 62.28, Pillow 13.0).
_PYAV_OPAQUE_START = "PyAV: a first frame with no transparent index starts the canvas as opaque background"
_PILLOW_OPAQUE_START = "Pillow: a first frame with no transparent index starts the canvas as opaque index 0"
_PILLOW_GROWS = "Pillow: a frame past the logical screen enlarges the image instead of being clipped"
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    ("pyav", "disposal2_no_transparency_bg3"): (
        "PyAV: disposal 2 of a frame without a transparent index fills its rectangle with the opaque "
        "background colour instead of clearing it to transparent"
    ),
    ("pyav", "wider_than_screen"): (
        "PyAV: a frame wider than the logical screen is decoded with the screen width as row stride, "
        "so its rows are garbled (a frame that only overhangs is clipped correctly)"
    ),
    ("pyav", "first_frame_partial_opaque_bg3"): _PYAV_OPAQUE_START,
    ("pyav", "outside_screen"): "PyAV: a frame that lies outside the logical screen is invalid data to libavcodec",
    ("pillow", "disposal2_transparent_index"): (
        "Pillow: on an opaque (RGB) canvas, disposal 2 fills the rectangle with the opaque colour of the "
        "transparent index instead of clearing it to transparent"
    ),
    ("pillow", "disposal2_no_transparency_bg3"): (
        "Pillow: disposal 2 of a frame without a transparent index fills its rectangle with the opaque "
        "background colour instead of clearing it to transparent"
    ),
    ("pillow", "overhang_non_first_frame"): _PILLOW_GROWS + " (cropped back, it shows the disposal 2 fill)",
    ("pillow", "wider_than_screen"): _PILLOW_GROWS,
    ("pillow", "outside_screen"): _PILLOW_GROWS,
    ("pillow", "first_frame_partial_opaque_bg3"): _PILLOW_OPAQUE_START,
}


def _gif(case: GifCase) -> bytes:
    return build_gif(case.frames, W, H, PALETTE, background_index=case.background_index)


def _decode_pyav(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgba") for frame in container.decode(video=0)]


def _decode_pillow(data: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        return [np.asarray(frame.convert("RGBA")) for frame in ImageSequence.Iterator(image)]


def _decode_rdtf(data: bytes) -> list[np.ndarray]:
    gif = parse_gif(data)
    shown = composite(data, gif, set(range(len(gif.frames))))
    return [np.asarray(shown[i]) for i in range(len(gif.frames))]


DECODERS = {"rdtf": _decode_rdtf, "pyav": _decode_pyav, "pillow": _decode_pillow}


def _as_seen(rgba: np.ndarray) -> np.ndarray:
    """Zero the invisible RGB of fully transparent pixels."""
    seen = rgba.copy()
    seen[seen[..., 3] == 0] = 0
    return seen


def _decoder_cases() -> list:
    params = []
    for decoder in DECODERS:
        for name in CASES:
            reason = KNOWN_DIFFERENCES.get((decoder, name))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(decoder, name, marks=marks, id=f"{decoder}-{name}"))
    return params


@pytest.mark.parametrize("name", CASES)
def test_pillow_reads_frame_count_size_and_durations(name: str) -> None:
    case = CASES[name]
    with Image.open(io.BytesIO(_gif(case))) as image:
        assert image.size == (W, H)
        assert image.n_frames == len(case.frames)
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(image)]
    assert durations == [frame.delay_cs * 10 for frame in case.frames]


@pytest.mark.parametrize(("decoder", "name"), _decoder_cases())
def test_decoder_matches_browser_reference(decoder: str, name: str) -> None:
    case = CASES[name]
    expected = reference_composite(case.frames, W, H, PALETTE)
    got = DECODERS[decoder](_gif(case))
    assert len(got) == len(expected)
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert have.shape == want.shape, f"frame {i}: shape {have.shape} != {want.shape}"
        diff = np.argwhere((_as_seen(have) != _as_seen(want)).any(axis=-1))
        if len(diff):
            y, x = diff[0]
            pytest.fail(
                f"frame {i}: {len(diff)} pixels differ, first at (y={y}, x={x}): "
                f"got {have[y, x].tolist()}, reference {want[y, x].tolist()}"
            )


def test_pyav_durations_play_as_browser_delays() -> None:
    """PyAV's demuxer rewrites a 0 cs delay to 10 cs but keeps 1 cs; browser_delays_ms evens this out."""
    case = CASES["zero_delay"]
    with av.open(io.BytesIO(_gif(case))) as container:
        stream = container.streams.video[0]
        durations_cs = [round(frame.duration * stream.time_base * 100) for frame in container.decode(stream)]
    assert durations_cs == [10, 1, 10, 7]
    assert browser_delays_ms(durations_cs) == browser_delays_ms([frame.delay_cs for frame in case.frames])


@pytest.mark.parametrize("name", CASES)
def test_rdtf_probe_reads_browser_durations(name: str) -> None:
    case = CASES[name]
    facts = probe(_gif(case))
    assert (facts.format, facts.width, facts.height, facts.truncated) == ("gif", W, H, False)
    assert facts.durations_ms == browser_delays_ms([frame.delay_cs for frame in case.frames])


def test_reference_disposal2_clears_to_transparent_not_background() -> None:
    frames = [
        GifFrame(np.full((2, 2), 1, np.uint8)),
        GifFrame(np.full((1, 1), 2, np.uint8), disposal=2),
        GifFrame(np.full((1, 1), 4, np.uint8), left=1, top=1, transparent_index=4),
    ]
    shown = reference_composite(frames, 2, 2, PALETTE)
    assert shown[1][0, 0].tolist() == [0, 255, 0, 255]
    assert shown[2][0, 0].tolist() == [0, 0, 0, 0]
    assert shown[2][1, 1].tolist() == [255, 0, 0, 255]


def test_browser_delays_stretch_zero_and_one_centisecond() -> None:
    assert browser_delays_ms([0, 1, 2, 7, 100]) == [100, 100, 20, 70, 1000]
