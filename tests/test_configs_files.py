"""The shipped config files load, validate and say what the code's defaults say."""

from __future__ import annotations

import pytest
from conftest import REPO

from rdtf.pipeline.config import PreprocessConfig
from rdtf.schemas.config import load
from rdtf.trainer.config import TrainConfig


def test_preprocess_yaml_is_the_defaults() -> None:
    assert load(PreprocessConfig, str(REPO / "configs" / "preprocess.yaml")) == PreprocessConfig()


@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_training_presets_load_and_validate(preset: str) -> None:
    cfg = load(TrainConfig, str(REPO / "configs" / f"{preset}.yaml"))
    assert cfg.model["block_out_channels"] and cfg.run.max_steps > 0
    assert cfg.latent.mode == ("pixel" if preset == "tiny" else "vae")
