"""The trainer's frozen parts and helpers: text tower, codecs, schedules and guidance, GIF files, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_factory import tiny_vae_folder
from PIL import Image

from rdtf.schemas.config import ConfigError, from_dict
from rdtf.trainer.config import DiffusionConfig, LatentConfig, TextConfig, TrainConfig
from rdtf.trainer.diffusion import generate, guided_noise, nearest_given, predict, sample_scheduler, train_scheduler
from rdtf.trainer.latents import PixelCodec, VaeCodec, load_codec
from rdtf.trainer.media import clip_to_frames, frames_to_clip, read_frames, read_image, write_gif
from rdtf.trainer.text import MASK_TOKEN_ID, TextEncoder

TINY_TEXT = TextConfig(model="rdtf-tiny-text", weights="random")


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(TINY_TEXT)


def test_text_features_per_token(text_encoder):
    tokens = text_encoder.tokenize(["a happy cat waves", ""])
    features = text_encoder(tokens)
    assert features.shape == (2, 77, text_encoder.width)
    assert not any(p.requires_grad for p in text_encoder.parameters())


def test_random_text_weights_come_from_the_seed_not_the_callers_rng(text_encoder):
    torch.manual_seed(123)
    again = TextEncoder(TINY_TEXT)
    assert torch.equal(again.token_embedding.weight, text_encoder.token_embedding.weight)
    other = TextEncoder(TextConfig(model="rdtf-tiny-text", weights="random", random_seed=1))
    assert not torch.equal(other.token_embedding.weight, text_encoder.token_embedding.weight)


def test_token_masking_spares_start_end_and_padding(text_encoder):
    tokens = text_encoder.tokenize(["one two three four five six seven eight nine ten"] * 50)
    masked = text_encoder.mask_tokens(tokens, 0.2, torch.Generator().manual_seed(0))
    changed = masked != tokens
    words = ~torch.isin(tokens, torch.tensor(text_encoder.special_ids))
    assert not (changed & ~words).any()
    assert (masked[changed] == MASK_TOKEN_ID).all()
    assert 0.15 < changed.sum() / words.sum() < 0.25


def test_text_weights_must_be_a_local_file(tmp_path):
    with pytest.raises(ConfigError, match="text.weights"):
        TextEncoder(TextConfig(model="rdtf-tiny-text", weights=str(tmp_path / "missing.pt")))
    broken = tmp_path / "broken.pt"
    torch.save({"nothing": torch.zeros(1)}, broken)
    with pytest.raises(ConfigError, match="does not fit"):
        TextEncoder(TextConfig(model="rdtf-tiny-text", weights=str(broken)))
    with pytest.raises(ConfigError, match="text.model"):
        TextEncoder(TextConfig(model="no-such-model"))


def test_text_weights_from_a_local_checkpoint_load(tmp_path, text_encoder):
    import open_clip

    clip = open_clip.create_model("rdtf-tiny-text")
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    loaded = TextEncoder(TextConfig(model="rdtf-tiny-text", weights=str(path)))
    tokens = loaded.tokenize(["hello"])
    expected = clip.ln_final(
        clip.transformer(clip.token_embedding(tokens) + clip.positional_embedding, attn_mask=clip.attn_mask)
    )
    torch.testing.assert_close(loaded(tokens), expected)


def test_vae_codec_round_trip_shapes(tmp_path):
    codec = load_codec(
        LatentConfig(mode="vae", vae_path=tiny_vae_folder(tmp_path / "vae"), resolution=32),
        torch.device("cpu"),
        torch.float32,
    )
    assert isinstance(codec, VaeCodec) and codec.channels == 4 and codec.factor == 2
    clips = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    latents = codec.encode(clips, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 16, 16)
    assert codec.decode(latents).shape == clips.shape


def test_vae_mode_needs_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="latent.vae_path"):
        LatentConfig(mode="vae")
    with pytest.raises(ConfigError, match="latent.vae_path"):
        load_codec(LatentConfig(mode="vae", vae_path=str(tmp_path)), torch.device("cpu"), torch.float32)


def test_pixel_codec_is_the_clip_itself():
    clips = torch.rand(1, 3, 8, 16, 16) * 2 - 1
    codec = PixelCodec()
    assert torch.equal(codec.decode(codec.encode(clips)), clips)


def test_schedules_are_the_papers():
    config = DiffusionConfig()
    train = train_scheduler(config)
    assert train.config.num_train_timesteps == 1000 and train.config.prediction_type == "epsilon"
    assert train.betas[0].item() == pytest.approx(0.00085) and train.betas[-1].item() == pytest.approx(0.012)
    ddim = sample_scheduler(config)
    ddim.set_timesteps(config.sample_steps)
    assert len(ddim.timesteps) == 50 and config.eta == 1.0
    assert (config.text_scale, config.image_scale) == (7.5, 7.5)


class _Linear(torch.nn.Module):
    """e(x, t, text, c) = x + mean(text) + 2 * c: guidance arithmetic can be checked by hand."""

    def forward(self, sample, timestep, text, condition):
        return sample + text.mean(dim=(1, 2))[:, None, None, None, None] + 2 * condition


def test_guidance_combines_text_and_image_terms():
    sample = torch.zeros(1, 3, 8, 4, 4)
    text = torch.ones(1, 5, 6)
    condition = torch.ones(1, 3, 8, 4, 4)
    t = torch.tensor([10])
    both = guided_noise(_Linear(), sample, t, text, condition, 3.0, 2.0, True, True)
    # e(-,-) = 0, e(-,img) = 2, e(txt,img) = 3: 0 + 2 * (2 - 0) + 3 * (3 - 2) = 7
    assert torch.allclose(both, torch.full_like(sample, 7.0))
    text_only = guided_noise(_Linear(), sample, t, text, torch.zeros_like(condition), 3.0, 2.0, True, False)
    assert torch.allclose(text_only, torch.full_like(sample, 3.0))
    image_only = guided_noise(_Linear(), sample, t, torch.zeros_like(text), condition, 3.0, 2.0, False, True)
    assert torch.allclose(image_only, torch.full_like(sample, 4.0))


def test_gif_round_trip(tmp_path):
    frames = clip_to_frames(torch.rand(1, 3, 8, 24, 24) * 2 - 1)[0]
    path = write_gif(frames, str(tmp_path / "out" / "clip.gif"))
    with Image.open(path) as gif:
        assert gif.n_frames == 8 and gif.size == (24, 24)
    assert read_frames(path, 24, 8).shape == (8, 24, 24, 3)
    assert read_image(path, 16).shape == (1, 16, 16, 3)
    assert frames_to_clip(frames).shape == (1, 3, 8, 24, 24)
    np.testing.assert_array_equal(clip_to_frames(frames_to_clip(frames))[0], frames)


def test_train_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="optim.lr"):
        from_dict(TrainConfig, {"model": {"sample_size": 32}, "optim": {"lr": -1.0}})
    with pytest.raises(ConfigError, match="unknown config key 'engine.zero'"):
        from_dict(TrainConfig, {"model": {"sample_size": 32}, "engine": {"zero": 2}})
    with pytest.raises(ConfigError, match="'model'"):
        TrainConfig()
    with pytest.raises(ConfigError, match="diffusion.anchor"):
        from_dict(TrainConfig, {"model": {"sample_size": 32}, "diffusion": {"anchor": "nearest"}})
    with pytest.raises(ConfigError, match="optim.ema_decay"):
        from_dict(
            TrainConfig, {"model": {"sample_size": 32}, "optim": {"ema_decay": 0.99}, "engine": {"zero_stage": 3}}
        )


class _CopyingModel(torch.nn.Module):
    """An ideal model of a clip whose frames all equal the given one: it predicts the noise that takes `sample` to
    the nearest given frame, eps = (x_t - sqrt(a_t) * z0) / sqrt(1 - a_t), with z0 copied from the condition."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.alphas_cumprod = alphas_cumprod
        self.register_buffer("anchor", torch.zeros(()))  # a parameter-like tensor: generate() reads the dtype

    def parameters(self, recurse: bool = True):
        yield self.anchor

    def forward(self, sample, timestep, text, condition):
        given = condition.abs().flatten(3).sum(dim=(1, 3)) > 0  # (b, f)
        z0 = torch.zeros_like(condition)
        for b in range(len(condition)):
            sources = torch.nonzero(given[b]).flatten()
            if len(sources):
                for f in range(condition.shape[2]):
                    z0[b, :, f] = condition[b, :, sources[(sources - f).abs().argmin()]]
        a = self.alphas_cumprod[timestep.long()].to(sample.dtype)[:, None, None, None, None]
        return (sample - a.sqrt() * z0) / (1 - a).sqrt()


def test_the_sampler_puts_a_copying_models_frames_in_the_generated_slots():
    """With a model that copies its condition, guided DDIM (scales 1) returns the given frames in every slot: the
    sampler, the schedule and the guidance carry the condition through."""
    config = DiffusionConfig(sample_steps=20)
    scheduler = sample_scheduler(config)
    model = _CopyingModel(scheduler.alphas_cumprod)
    frame = torch.rand(2, 3, 1, 6, 6) * 2 - 1
    condition = torch.zeros(2, 3, 8, 6, 6)
    condition[:, :, 0::2] = frame  # interpolation: frames 0, 2, 4, 6 given
    generator = torch.Generator().manual_seed(0)
    text = torch.zeros(2, 5, 4)
    latents = generate(model, scheduler, text, condition, config, False, generator, text_scale=1.0, image_scale=1.0)
    torch.testing.assert_close(latents, frame.expand(-1, -1, 8, -1, -1), atol=2e-2, rtol=0)


def test_guidance_of_scale_one_is_one_forward_pass():
    calls = []

    class Counting(_Linear):
        def forward(self, *args):
            calls.append(1)
            return super().forward(*args)

    sample, text, condition, t = (
        torch.zeros(1, 3, 8, 4, 4),
        torch.ones(1, 5, 6),
        torch.ones(1, 3, 8, 4, 4),
        torch.tensor([3]),
    )
    once = guided_noise(Counting(), sample, t, text, condition, 1.0, 1.0, True, True)
    assert len(calls) == 1
    # the same as the three-pass formula with both scales 1: e(txt, img) = 3
    assert torch.allclose(once, torch.full_like(sample, 3.0))


def test_each_frame_is_anchored_on_its_nearest_given_frame():
    values = torch.arange(1, 9, dtype=torch.float32)[None, None, :, None, None].expand(3, 2, 8, 2, 2)
    given = torch.zeros(3, 8)
    given[0, 0::2] = 1  # interpolation: a tie between two neighbours goes to the earlier
    given[1, 4:] = 1  # pre-frame prediction: the first four frames copy frame 4
    anchor = nearest_given(values * given[:, None, :, None, None])
    assert anchor[0, 0, :, 0, 0].tolist() == [1, 1, 3, 3, 5, 5, 7, 7]
    assert anchor[1, 0, :, 0, 0].tolist() == [5, 5, 5, 5, 5, 6, 7, 8]
    assert anchor[2].abs().max() == 0  # nothing given: no anchor


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_anchor_adds_its_share_to_the_clean_estimate(prediction_type):
    """The clean-clip estimate with the anchor is the model's own plus (1 - a) * anchor, for either prediction type
    (a random model; the anchor here is frame 0 for every frame)."""
    scheduler = train_scheduler(DiffusionConfig(prediction_type=prediction_type))
    condition = torch.zeros(2, 3, 8, 4, 4)
    condition[:, :, 0] = torch.rand(2, 3, 4, 4) * 2 - 1  # image-to-video: every frame's anchor is frame 0
    sample, t = torch.randn(2, 3, 8, 4, 4), torch.tensor([50, 900])
    text = torch.zeros(2, 5, 4)
    a = scheduler.alphas_cumprod[t][:, None, None, None, None]

    def clean(anchor: str) -> torch.Tensor:
        out = predict(_Linear(), scheduler, anchor, sample, t, text, condition)
        if prediction_type == "v_prediction":
            return a.sqrt() * sample - (1 - a).sqrt() * out
        return (sample - (1 - a).sqrt() * out) / a.sqrt()

    torch.testing.assert_close(
        predict(_Linear(), scheduler, "none", sample, t, text, condition), _Linear()(sample, t, text, condition)
    )
    torch.testing.assert_close(
        clean("nearest_given") - clean("none"), (1 - a) * condition[:, :, :1].expand_as(sample), atol=1e-5, rtol=1e-4
    )
