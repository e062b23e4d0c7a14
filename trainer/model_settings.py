"""DFGN's settings (the `model:` section of a preset, trainer/dfgn.py's constructor arguments): their names, defaults
and checks, without torch or diffusers, so that `rdtf train` and `rdtf launch` refuse a wrong setting in a second
instead of after the imports (about 8 s), and DFGN itself refuses the same things the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from rdtf.schemas.config import require

TemporalLayer = Literal["sti", "conv3d"]
TEMPORAL_LAYERS: tuple[str, ...] = ("sti", "conv3d")
Fusion = Literal["mlp_gate", "scalars"]
FUSIONS: tuple[str, ...] = ("mlp_gate", "scalars")

# DFGN.__init__'s arguments and defaults, in its order (tests/trainer/test_dfgn.py holds the two together).
DEFAULTS: dict[str, Any] = {
    "in_channels": 4,
    "sample_size": 32,
    "num_frames": 8,
    "block_out_channels": (320, 640, 1024, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 64,
    "cross_attention_dim": 1024,
    "encoder_hid_dim": None,
    "norm_num_groups": 32,
    "temporal_layer": "sti",
    "sti_fusion": "mlp_gate",
    "sti_heads": 8,
    "sti_head_dim": 32,
}

# Keys that must be positive integers.
COUNTS = (
    "in_channels",
    "sample_size",
    "num_frames",
    "layers_per_block",
    "attention_head_dim",
    "cross_attention_dim",
    "norm_num_groups",
    "sti_heads",
    "sti_head_dim",
)


def check_model_settings(settings: Mapping[str, Any]) -> None:
    """Refuse a `model:` mapping with a key DFGN does not take, or a value that would fail deep inside diffusers."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    require(
        not unknown,
        f"model.{unknown[0] if unknown else ''}",
        f"is not a DFGN setting; they are {', '.join(DEFAULTS)} (docs/model.md)",
    )
    check_values(DEFAULTS | dict(settings), prefix="model.")


def check_values(config: Mapping[str, Any], prefix: str = "") -> None:
    """The checks of every setting's value, on a mapping that holds them all (DFGN's own config included); errors
    name the key after `prefix`."""
    for key in COUNTS:
        value = config[key]
        require(type(value) is int and value >= 1, prefix + key, f"must be an integer >= 1, got {value!r}")
    hid = config["encoder_hid_dim"]
    require(
        hid is None or (type(hid) is int and hid >= 1), f"{prefix}encoder_hid_dim", f"must be null or >= 1, got {hid!r}"
    )
    for key, allowed in (("temporal_layer", TEMPORAL_LAYERS), ("sti_fusion", FUSIONS)):
        require(config[key] in allowed, prefix + key, f"{config[key]!r} is not one of {', '.join(map(repr, allowed))}")
    channels = config["block_out_channels"]
    require(
        isinstance(channels, (list, tuple)) and len(channels) >= 1 and all(type(c) is int and c >= 1 for c in channels),
        f"{prefix}block_out_channels",
        f"must be a non-empty list of integers >= 1, got {channels!r}",
    )
    for key in ("attention_head_dim", "norm_num_groups"):
        require(
            all(c % config[key] == 0 for c in channels),
            prefix + key,
            f"{config[key]} must divide every entry of block_out_channels {list(channels)}",
        )
