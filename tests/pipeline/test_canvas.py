"""The training canvas (pipeline.canvas) and decode.resample: the filter that shrinks frames larger than the canvas,
recorded in the card, and the rule for datasets made before the setting existed (they read as lanczos)."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from PIL import Image

from rdtf.pipeline.canvas import DOWNSCALE, to_canvas
from rdtf.pipeline.card import make_card
from rdtf.pipeline.config import DecodeConfig, PreprocessConfig, Resample
from rdtf.pipeline.runner import _check_config
from rdtf.schemas.config import ConfigError, from_dict, to_dict
from rdtf.schemas.layout import DatasetLayout


def sticker(size: int) -> Image.Image:
    """An RGBA picture like a sticker's: smooth colours and stripes in a disc on transparency (alpha 0 or 255)."""
    y, x = np.mgrid[:size, :size] / size
    pixels = np.zeros((size, size, 4), dtype=np.uint8)
    pixels[..., 0] = 255 * x
    pixels[..., 1] = 255 * y
    pixels[..., 2] = np.where(np.sin(40 * x) > 0, 230, 20)
    pixels[..., 3] = np.where((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.2, 255, 0)
    return Image.fromarray(pixels, "RGBA")


def over_white(frame: Image.Image) -> Image.Image:
    flat = Image.new("RGB", frame.size, (255, 255, 255))
    flat.paste(frame, mask=frame)
    return flat


def test_every_config_choice_has_a_filter():
    assert set(DOWNSCALE) == set(get_args(Resample))


def test_an_unknown_filter_is_refused_by_name():
    with pytest.raises(ConfigError, match="decode.resample.*lanczos, reduce_lanczos.*'bicubic'"):
        DecodeConfig(resample="bicubic")
    with pytest.raises(ConfigError, match="decode.resample"):
        from_dict(PreprocessConfig, {"decode": {"resample": "nearest"}})


def test_the_card_records_the_filter():
    card = make_card(to_dict(PreprocessConfig()), "complete", None, None)
    assert card["config"]["decode"]["resample"] == DecodeConfig().resample


def test_reduce_lanczos_halves_512_by_a_2x2_mean():
    frame = sticker(512)
    expected = np.asarray(over_white(frame).reduce(2))
    assert np.array_equal(to_canvas(frame, 256, "reduce_lanczos"), expected)


def test_lanczos_is_the_filter_of_earlier_datasets():
    frame = sticker(512)
    expected = over_white(frame).resize((256, 256), Image.Resampling.LANCZOS)
    assert np.array_equal(to_canvas(frame, 256, "lanczos"), np.asarray(expected))


@pytest.mark.parametrize("size", [512, 700, 1030])
def test_from_2x_down_the_filters_differ_little(size):
    frame = sticker(size)
    fast, lanczos = (to_canvas(frame, 256, name).astype(np.int16) for name in ("reduce_lanczos", "lanczos"))
    assert fast.shape == lanczos.shape == (256, 256, 3)
    assert 0 < np.abs(fast - lanczos).mean() < 2  # the shared stickers: 0.3 levels (docs/preprocess.md)


def test_below_2x_down_both_filters_are_lanczos():
    frame = sticker(300)
    assert np.array_equal(to_canvas(frame, 256, "reduce_lanczos"), to_canvas(frame, 256, "lanczos"))


@pytest.mark.parametrize("size", [64, 128, 256])
def test_frames_not_larger_than_the_canvas_are_the_same_with_every_filter(size):
    frame = sticker(size)
    canvases = [to_canvas(frame, 256, name) for name in DOWNSCALE]
    assert all(np.array_equal(canvases[0], c) for c in canvases[1:])


def card_config(**decode) -> dict:
    config = to_dict(PreprocessConfig())
    config["decode"] = {k: v for k, v in config["decode"].items() if k != "resample"} | decode
    return config


def test_a_dataset_from_before_the_setting_reads_as_lanczos(tmp_path):
    layout = DatasetLayout.at(str(tmp_path / "old"))
    layout.write_card(make_card(card_config(), "complete", None, None))  # no decode.resample: made with lanczos
    _check_config(layout, to_dict(PreprocessConfig(decode=DecodeConfig(resample="lanczos"))), None)
    with pytest.raises(ConfigError, match=r"different 'decode' settings \(\{'resample': 'lanczos'\} there"):
        _check_config(layout, to_dict(PreprocessConfig(decode=DecodeConfig(resample="reduce_lanczos"))), None)


def test_a_dataset_resumes_only_with_its_own_filter(tmp_path):
    layout = DatasetLayout.at(str(tmp_path / "new"))
    layout.write_card(make_card(card_config(resample="reduce_lanczos"), "complete", None, None))
    _check_config(layout, to_dict(PreprocessConfig(decode=DecodeConfig(resample="reduce_lanczos"))), None)
    with pytest.raises(ConfigError, match="resample.*Run with the settings it was made with"):
        _check_config(layout, to_dict(PreprocessConfig(decode=DecodeConfig(resample="lanczos"))), None)
