"""Validated configs (schemas.config) on rdtf's preprocess config: YAML, dotted overrides, errors naming the key."""

from __future__ import annotations

import pytest

from rdtf.pipeline.config import DecodeConfig, PreprocessConfig
from rdtf.schemas.config import ConfigError, from_dict, load, to_dict


def yaml_file(tmp_path, text: str) -> str:
    path = tmp_path / "preprocess.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file():
    cfg = load(PreprocessConfig)
    assert cfg == PreprocessConfig()
    assert cfg.decode.fps == 8.0 and cfg.decode.max_frames == 16


def test_load_from_yaml(tmp_path):
    path = yaml_file(
        tmp_path,
        """
decode:
  fps: 4
  max_frames: 32
filters:
  min_side: 48
inputs:
  extensions: [gif, webp]
ray:
  address: auto
""",
    )
    cfg = load(PreprocessConfig, path)
    assert cfg.decode.fps == 4.0 and isinstance(cfg.decode.fps, float)
    assert cfg.decode.max_frames == 32
    assert cfg.decode.frame_size == 256  # untouched keys keep their defaults
    assert cfg.filters.min_side == 48
    assert cfg.inputs.extensions == ("gif", "webp")
    assert cfg.ray.address == "auto"


def test_an_empty_yaml_file_is_the_defaults(tmp_path):
    assert load(PreprocessConfig, yaml_file(tmp_path, "")) == PreprocessConfig()


def test_dotted_overrides_apply_on_top_of_the_file(tmp_path):
    path = yaml_file(tmp_path, "decode:\n  fps: 4\n  max_frames: 32\n")
    cfg = load(PreprocessConfig, path, {"decode.fps": 12, "filters.max_aspect_ratio": 2.5, "ray.num_cpus": 2})
    assert cfg.decode.fps == 12.0
    assert cfg.decode.max_frames == 32  # from the file, not overridden
    assert cfg.filters.max_aspect_ratio == 2.5
    assert cfg.ray.num_cpus == 2


def test_overrides_without_a_file():
    assert load(PreprocessConfig, None, {"difficulty.temporal_weight": 1}).difficulty.temporal_weight == 1.0


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus: 1\n", "bogus"),
        ("decode:\n  fsp: 4\n", "decode.fsp"),
        ("filters:\n  min_side: 40\n  max_ratio: 2\n", "filters.max_ratio"),
    ],
)
def test_an_unknown_key_is_named(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load(PreprocessConfig, yaml_file(tmp_path, text))


def test_an_unknown_override_is_named():
    with pytest.raises(ConfigError, match="'decode.speed'"):
        load(PreprocessConfig, None, {"decode.speed": 3})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"decode.fps": "fast"}, "decode.fps"),
        ({"decode.fps": True}, "decode.fps"),
        ({"decode.fps": [8]}, "decode.fps"),
        ({"filters.max_aspect_ratio": "3"}, "filters.max_aspect_ratio"),
        ({"difficulty.spatial_weight": None}, "difficulty.spatial_weight"),
        ({"decode.max_frames": "16"}, "decode.max_frames"),
        ({"decode.max_frames": 16.5}, "decode.max_frames"),
        ({"decode.max_frames": True}, "decode.max_frames"),
        ({"decode.keep_truncated": "yes"}, "decode.keep_truncated"),
        ({"decode.keep_truncated": 1}, "decode.keep_truncated"),
        ({"ray.address": 5}, "ray.address"),
        ({"inputs.extensions": "gif"}, "inputs.extensions"),
        ({"inputs.extensions": ["gif", 3]}, "inputs.extensions[1]"),
        ({"decode": 4}, "decode"),
    ],
)
def test_a_wrong_type_is_named(overrides, key):
    with pytest.raises(ConfigError) as error:
        load(PreprocessConfig, None, overrides)
    assert f"'{key}'" in str(error.value)


def test_a_wrong_type_in_yaml_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'decode.fps'"):
        load(PreprocessConfig, yaml_file(tmp_path, 'decode:\n  fps: "fast"\n'))


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"decode.max_frames": 0}, "decode.max_frames"),
        ({"decode.max_frames": 1000}, "decode.max_frames"),
        ({"decode.fps": 0}, "decode.fps"),
        ({"decode.frame_size": 8}, "decode.frame_size"),
        ({"filters.max_aspect_ratio": 0.5}, "filters.max_aspect_ratio"),
        ({"filters.min_spatial_entropy": 9}, "filters.min_spatial_entropy"),
        ({"ray.object_store_mb": 10}, "ray.object_store_mb"),
        ({"inputs.extensions": []}, "inputs.extensions"),
        ({"decode.timeout_s": 0}, "decode.timeout_s"),
        ({"decode.max_memory_mb": 0}, "decode.max_memory_mb"),
        ({"decode.fault_injection": [{"match": "x", "action": "explode"}]}, "decode.fault_injection[0].action"),
        ({"decode.fault_injection": [{"action": "abort"}]}, "decode.fault_injection.match"),
        ({"ray.max_retries": -1}, "ray.max_retries"),
    ],
)
def test_an_out_of_range_value_is_named(overrides, key):
    with pytest.raises(ConfigError) as error:
        load(PreprocessConfig, None, overrides)
    assert f"'{key}'" in str(error.value)


def test_max_frames_zero_from_yaml(tmp_path):
    with pytest.raises(ConfigError, match="'decode.max_frames'"):
        load(PreprocessConfig, yaml_file(tmp_path, "decode:\n  max_frames: 0\n"))


def test_keep_truncated_is_a_bool_even_when_built_in_code():
    assert load(PreprocessConfig, None, {"decode.keep_truncated": True}).decode.keep_truncated is True
    with pytest.raises(ConfigError, match="'decode.keep_truncated'"):
        DecodeConfig(keep_truncated="no")  # a non-empty string would read as true


def test_a_top_level_list_is_refused(tmp_path):
    with pytest.raises(ConfigError):
        load(PreprocessConfig, yaml_file(tmp_path, "- decode\n- fps\n"))


def test_to_dict_round_trips():
    cfg = load(PreprocessConfig, None, {"decode.fps": 5, "inputs.extensions": ["gif"]})
    assert from_dict(PreprocessConfig, to_dict(cfg)) == cfg
