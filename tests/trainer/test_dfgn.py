"""DFGN: preset sizes (on the meta device), shapes of the tiny model, save/load, checkpointing, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO

from rdtf.schemas.config import ConfigError
from rdtf.trainer.dfgn import DFGN, count_parameters, read_model_config
from rdtf.trainer.sti import STILayer

PAPER_PARAMETERS = 0.96e9  # paper: "0.96 B parameters"


def preset(name: str, **overrides: object) -> dict:
    return {**read_model_config(REPO / "configs" / f"{name}.yaml"), **overrides}


def inputs(config: dict, batch: int = 1, frames: int = 4, size: int = 16) -> tuple[torch.Tensor, ...]:
    """sample, timestep (b,), encoder_hidden_states, condition; short clips by default, to keep the tests fast."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch, config["in_channels"], frames, size, size)
    sample = torch.randn(shape, generator=generator)
    condition = torch.randn(shape, generator=generator)
    condition[:, :, 1:] = 0  # only the first frame given, as the caller masks it
    text = torch.randn(batch, 7, config.get("encoder_hid_dim") or config["cross_attention_dim"], generator=generator)
    return sample, torch.randint(1000, (batch,), generator=generator), text, condition


@pytest.fixture(scope="module")
def tiny() -> dict:
    return preset("tiny")


def test_preset_sizes() -> None:
    paper, small, tiny = (count_parameters(preset(name)) for name in ("paper", "small", "tiny"))
    assert abs(paper - PAPER_PARAMETERS) <= 0.05 * PAPER_PARAMETERS
    assert 1e8 <= small <= 6e8
    assert tiny <= 5e6


def test_paper_has_22_sti_layers_on_meta() -> None:
    with torch.device("meta"):
        model = DFGN(**preset("paper"))
    assert sum(isinstance(m, STILayer) for m in model.modules()) == 22  # 4x2 down + 2 mid + 4x3 up


@pytest.mark.parametrize(
    "overrides, batch, frames, size",
    [
        ({"in_channels": 3}, 1, 8, 32),  # pixel mode at the demo's size
        ({"in_channels": 4}, 2, 3, 16),
        ({"in_channels": 4, "sti_fusion": "scalars"}, 1, 2, 16),
        ({"in_channels": 3, "temporal_layer": "conv3d"}, 2, 3, 16),
        ({"in_channels": 4, "encoder_hid_dim": 40}, 1, 3, 16),
    ],
    ids=["pixels", "latents", "scalars", "conv3d", "text_proj"],
)
def test_forward_shape(tiny: dict, overrides: dict, batch: int, frames: int, size: int) -> None:
    config = {**tiny, **overrides}
    model = DFGN(**config).eval()
    sample, timestep, text, condition = inputs(config, batch, frames, size)
    with torch.no_grad():
        noise = model(sample, timestep, text, condition)
    assert isinstance(noise, torch.Tensor) and noise.shape == sample.shape
    assert torch.isfinite(noise).all()


def test_scalar_timestep_and_odd_size(tiny: dict) -> None:
    model = DFGN(**tiny).eval()
    sample, _, text, condition = inputs(tiny, frames=2, size=17)  # odd: 17 -> 9 -> upsampled back to 17
    with torch.no_grad():
        assert model(sample, 500, text, condition).shape == sample.shape
        assert model(sample, torch.tensor(500), text, condition).shape == sample.shape


def test_bfloat16(tiny: dict) -> None:
    model = DFGN(**tiny).to(torch.bfloat16)  # as DeepSpeed bf16 holds it; the timestep features are cast inside
    sample, timestep, text, condition = (x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs(tiny))
    noise = model(sample, timestep, text, condition)
    noise.float().pow(2).mean().backward()
    assert noise.dtype == torch.bfloat16 and noise.shape == sample.shape


def test_fresh_sti_layer_is_identity() -> None:
    for fusion in ("mlp_gate", "scalars"):
        layer = STILayer(32, num_heads=2, head_dim=16, fusion=fusion, norm_num_groups=8)
        hidden = torch.randn(2 * 4, 32, 6, 5)  # b=2 clips of f=4 frames, odd width
        assert torch.equal(layer(hidden, num_frames=4), hidden)


def test_save_and_load_round_trip(tiny: dict, tmp_path: Path) -> None:
    model = DFGN(**{**tiny, "sti_fusion": "scalars", "encoder_hid_dim": 40}).eval()
    with torch.no_grad():  # move the zero-initialised parts away from zero, so that loading them is tested
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    loaded = DFGN.from_pretrained(tmp_path).eval()
    assert {k: v for k, v in loaded.config.items() if k != "_name_or_path"} == dict(model.config)
    loaded_state = loaded.state_dict()
    assert all(torch.equal(value, loaded_state[key]) for key, value in model.state_dict().items())
    batch = inputs(dict(model.config))
    with torch.no_grad():  # equal weights; loaded tensors may be laid out differently, so kernels may round apart
        torch.testing.assert_close(loaded(*batch), model(*batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temporal_layer", ["sti", "conv3d"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny: dict, temporal_layer: str) -> None:
    torch.manual_seed(0)
    model = DFGN(**{**tiny, "temporal_layer": temporal_layer}).train()  # conv3d has dropout: RNG is replayed
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    batch = inputs(tiny, batch=2)

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(*batch).pow(2).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    calls = []
    model.down_blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    loss, grads = loss_and_grads()
    model.enable_gradient_checkpointing()
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    assert len(calls) == 1 + 2  # checkpointed: the block ran again in the backward pass
    assert torch.equal(checkpointed_loss, loss)
    for grad, checkpointed in zip(grads, checkpointed_grads, strict=True):
        torch.testing.assert_close(checkpointed, grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "key, value",
    [
        ("temporal_layer", "conv2d"),
        ("sti_fusion", "gate"),
        ("norm_num_groups", 7),
        ("attention_head_dim", 24),
        ("in_channels", 0),
        ("block_out_channels", []),
        ("encoder_hid_dim", 0),
    ],
)
def test_bad_config_names_the_key(tiny: dict, key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"'{key}'") as error:
        DFGN(**{**tiny, key: value})
    assert isinstance(error.value, ConfigError)


def test_a_fresh_condition_encoder_hands_on_the_given_frames_unchanged(tiny: dict) -> None:
    """The copy path is open from the first step: conv_in sees each given frame's clean latent, pixel for pixel,
    beside its noisy one. (Before the fix the encoder shrank c 20-fold and added attention noise: issue 15.)"""
    torch.manual_seed(0)
    model = DFGN(**tiny)
    condition = inputs(tiny, batch=2)[3]
    encoded = model.condition_encoder(condition)
    torch.testing.assert_close(encoded, condition.transpose(1, 2).flatten(0, 1))


def test_the_generated_frames_depend_on_the_given_one(tiny: dict) -> None:
    """Changing the given frame 0 changes the prediction for frames 1..3, through the temporal layers."""
    torch.manual_seed(0)
    model = DFGN(**tiny).eval()
    sample, t, text, condition = inputs(tiny)
    with torch.no_grad():
        before = model(sample, t, text, condition)
        after = model(sample, t, text, condition * -1)
    change = (after - before)[:, :, 1:].abs().mean() / before[:, :, 1:].abs().mean()
    assert change > 1e-3


def test_the_torch_free_settings_are_dfgns_own() -> None:
    """trainer/model_settings.py lists DFGN's arguments and defaults for the early checks: the same, in order."""
    import inspect

    from rdtf.trainer.model_settings import DEFAULTS

    parameters = list(inspect.signature(DFGN.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == list(DEFAULTS.items())
