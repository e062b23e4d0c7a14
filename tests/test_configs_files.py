"""The shipped config files load, validate and say what the code's defaults say."""

from __future__ import annotations

from conftest import REPO

from pipeline.config import PreprocessConfig
from schemas.config import load


def test_preprocess_yaml_is_the_defaults() -> None:
    assert load(PreprocessConfig, str(REPO / "configs" / "preprocess.yaml")) == PreprocessConfig()
