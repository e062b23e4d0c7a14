"""The CLIP stage called directly (no Ray): embeddings, scores, tags, captions, its rejects, and its weights checks.

Random weights and the project's tiny model (pipeline/clip_configs/rdtf-tiny-clip.json): nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from rdtf.jobs.cli import main
from rdtf.pipeline.clip import CAPTION_TAGS, VOCABULARY, ClipInputStage, ClipSetup, ClipStage, load_vocabulary, prepare
from rdtf.pipeline.clip_models import RANDOM_WARNING, check_weights, load_model, resolve
from rdtf.pipeline.config import ClipConfig
from rdtf.pipeline.keyframes import KeyframeStage
from rdtf.schemas.config import ConfigError
from rdtf.schemas.dataset import KEYFRAME_COUNTS

TINY = ClipConfig(model="rdtf-tiny-clip", weights="random", batch_size=8)


def setup_for(cfg: ClipConfig = TINY) -> ClipSetup:
    setup = prepare(cfg)
    assert setup is not None
    return setup.for_cluster(cpus=2, gpus=0)


def clip_stage(cfg: ClipConfig = TINY) -> ClipStage:
    setup = setup_for(cfg)
    stage = ClipStage(setup.cfg, setup.vocabulary)
    stage.setup()
    return stage


def moving(count: int, colour: tuple[int, int, int], size: int = 96, offset: int = 0) -> np.ndarray:
    """`count` frames of a square moving across white."""
    frames = np.full((count, size, size, 3), 255, dtype=np.uint8)
    for t in range(count):
        x = (offset + 7 * t) % (size - 24)
        frames[t, 30:54, x : x + 24] = colour
    return frames


def batch_of(clips: list[np.ndarray], captions: list[str | None]) -> dict[str, list[Any]]:
    """The columns the CLIP stage reads, as the CPU leg hands them on."""
    batch: dict[str, list[Any]] = {"source_uri": [f"clip_{i}.gif" for i in range(len(clips))], "frames": clips}
    batch = ClipInputStage()(batch)
    batch["caption"] = list(captions)
    return batch


@pytest.fixture(scope="module")
def stage() -> ClipStage:
    return clip_stage()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [moving(6, (200, 40, 40)), moving(4, (40, 160, 40), offset=20), moving(8, (40, 40, 220), offset=9)]


def test_clip_input_sends_each_distinct_frame_once():
    frames = moving(3, (200, 40, 40))
    held = np.stack([frames[0], frames[0], frames[1], frames[0], frames[2], frames[2]])
    row = ClipInputStage()({"source_uri": ["x"], "frames": [held]})
    assert row["reject_reason"] == [None]
    assert np.array_equal(row["clip_pixels"][0], frames)
    assert row["clip_frame_index"][0] == [0, 0, 1, 0, 2, 2]


def test_embeddings_scores_and_tags(stage: ClipStage, clips: list[np.ndarray]):
    out = stage(batch_of(clips, ["a red square", None, "a blue square"]))
    assert out["reject_reason"] == [None, None, None], out["reject_message"]
    for i, frames in enumerate(clips):
        embedding = out["clip_embedding"][i]
        assert embedding.dtype == np.float16 and embedding.shape == (64,)
        assert abs(np.linalg.norm(embedding.astype(np.float32)) - 1) < 2e-3
        assert out["frame_embeddings"][i].shape == (len(frames), 64)
        assert np.allclose(np.linalg.norm(out["frame_embeddings"][i], axis=1), 1, atol=1e-5)
        assert -1 <= out["clip_score"][i] <= 1
        tags = out["tags"][i]
        assert len(tags) == TINY.num_tags and {t["tag"] for t in tags} <= set(stage.vocabulary)
        assert [t["score"] for t in tags] == sorted((t["score"] for t in tags), reverse=True)
        assert all(0 < t["score"] <= 1 for t in tags)
    # clip_embedding is the renormalized mean of the frames' unit embeddings
    mean = out["frame_embeddings"][0].mean(axis=0)
    assert np.allclose(out["clip_embedding"][0], mean / np.linalg.norm(mean), atol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_weights_take_inputs_in_their_dtype(precision: str, clips: list[np.ndarray]):
    """What runs on a GPU by default (bf16 weights, inputs cast on the device), here on the CPU."""
    low = clip_stage(ClipConfig(model="rdtf-tiny-clip", weights="random", batch_size=8, precision=precision))
    out = low(batch_of(clips, ["a red square", None, None]))
    assert out["reject_reason"] == [None, None, None], out["reject_message"]
    reference = clip_stage()(batch_of(clips, ["a red square", None, None]))
    for low_embedding, embedding in zip(out["clip_embedding"], reference["clip_embedding"], strict=True):
        assert float(low_embedding.astype(np.float32) @ embedding.astype(np.float32)) > 0.99


def test_caption_sources(stage: ClipStage, clips: list[np.ndarray]):
    out = stage(batch_of(clips, ["a red square", None, ""]))
    assert out["caption_source"] == ["given", "tags", "tags"]
    assert out["caption"][0] == "a red square"
    for i in (1, 2):
        top = ", ".join(t["tag"] for t in out["tags"][i][:CAPTION_TAGS])
        assert out["caption"][i] == f"an animated sticker: {top}"


def test_same_seed_same_results_other_seed_other_model(clips: list[np.ndarray]):
    first = clip_stage()(batch_of(clips, [None, None, None]))
    again = clip_stage()(batch_of(clips, [None, None, None]))
    other = clip_stage(ClipConfig(model="rdtf-tiny-clip", weights="random", batch_size=8, seed=1))(
        batch_of(clips, [None, None, None])
    )
    for i in range(len(clips)):
        assert np.array_equal(first["clip_embedding"][i], again["clip_embedding"][i])
        assert first["tags"][i] == again["tags"][i] and first["caption"][i] == again["caption"][i]
        assert not np.array_equal(first["clip_embedding"][i], other["clip_embedding"][i])


def test_an_embedding_does_not_depend_on_its_batch(stage: ClipStage, clips: list[np.ndarray]):
    """Every forward pass holds exactly batch_size images, so a row alone gets the very same bits as in company."""
    together = stage(batch_of(clips, ["a", "b", "c"]))
    for i, frames in enumerate(clips):
        alone = stage(batch_of([frames], [["a", "b", "c"][i]]))
        assert np.array_equal(alone["clip_embedding"][0], together["clip_embedding"][i])
        assert np.array_equal(alone["frame_embeddings"][0], together["frame_embeddings"][i])
        assert alone["clip_score"][0] == together["clip_score"][i] and alone["tags"][0] == together["tags"][i]


def test_min_clip_score_rejects_only_given_captions(clips: list[np.ndarray]):
    picky = clip_stage(ClipConfig(model="rdtf-tiny-clip", weights="random", batch_size=8, min_clip_score=1.0))
    out = picky(batch_of(clips, ["a red square", None, "a blue square"]))
    assert out["reject_reason"] == ["clip_score", None, "clip_score"]
    assert out["reject_stage"][0] == "clip" and "clip.min_clip_score=1.0" in out["reject_message"][0]
    assert out["caption_source"][1] == "tags" and out["clip_embedding"][0] is None


def test_rejected_rows_pass_through_untouched(stage: ClipStage, clips: list[np.ndarray]):
    batch = batch_of(clips, [None, None, None])
    batch["reject_reason"] = [None, "too_small", None]
    batch["reject_stage"] = [None, "filter", None]
    batch["reject_message"] = [None, "16x16", None]
    batch["kept_sample_id"] = [None, None, None]
    out = stage(batch)
    assert out["reject_reason"] == [None, "too_small", None] and out["reject_message"][1] == "16x16"
    assert out["clip_embedding"][1] is None and out["clip_embedding"][0] is not None


def test_a_row_that_fails_becomes_a_reject_and_the_others_go_on(stage: ClipStage, clips: list[np.ndarray]):
    batch = batch_of(clips, [None, None, None])
    batch["clip_pixels"][1] = np.zeros((2, 96, 96, 4), dtype=np.uint8)  # four channels: no RGB model takes it
    out = stage(batch)
    assert out["reject_reason"] == [None, "internal_error", None]
    assert out["reject_stage"][1] == "clip" and "please report" in out["reject_message"][1]
    alone = stage(batch_of([clips[0]], [None]))
    assert np.array_equal(out["clip_embedding"][0], alone["clip_embedding"][0])


def test_keyframes_cluster_clip_frame_embeddings(stage: ClipStage):
    frames = moving(3, (200, 40, 40))
    held = np.stack([frames[0], frames[0], frames[1], frames[1], frames[2], frames[2], frames[0], frames[1]])
    out = stage(batch_of([held, moving(12, (40, 40, 220))], [None, None]))
    out["sample_id"] = [hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()]
    out = KeyframeStage(features="clip")(out)
    assert out["reject_reason"] == [None, None], out["reject_message"]
    for sets, count in zip(out["keyframe_sets"], (8, 12), strict=True):
        for k, indices in zip(KEYFRAME_COUNTS, sets, strict=True):
            assert len(indices) == k and indices == sorted(indices) and all(0 <= i < count for i in indices)
    assert out["keyframe_sets"][0][0] == [0, 2, 4]  # the first frame of each of the three poses


def test_coca_captions_inputs_without_one(tmp_path, clips: list[np.ndarray]):
    coca = resolve("clip.captioner", "clip.captioner_model", "rdtf-tiny-coca", "random")
    path = tmp_path / "coca.pt"
    torch.save(load_model(coca, seed=3).state_dict(), path)
    cfg = ClipConfig(
        model="rdtf-tiny-clip",
        weights="random",
        batch_size=8,
        captioner=str(path),
        captioner_model="rdtf-tiny-coca",
        caption_batch_size=2,
        caption_max_tokens=8,
    )
    setup = setup_for(cfg)
    assert setup.captioner is not None and setup.captioner.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    out = clip_stage(cfg)(batch_of(clips, ["a red square", None, None]))
    assert out["caption_source"][0] == "given" and out["caption"][0] == "a red square"
    for i in (1, 2):
        assert out["caption_source"][i] in ("coca", "tags")  # random CoCa weights may generate nothing readable
        assert isinstance(out["caption"][i], str) and out["caption"][i]
    assert "coca" in out["caption_source"]


def test_card_records_the_weights_and_their_hash(tmp_path):
    setup = setup_for()
    card = setup.card()
    assert card["model"] == "rdtf-tiny-clip" and card["weights"] == "random" and card["weights_sha256"] == "random"
    assert card["warning"] == RANDOM_WARNING and card["device"] == "cpu" and card["precision"] == "fp32"
    path = tmp_path / "tiny.pt"
    torch.save(load_model(setup.weights, seed=0).state_dict(), path)
    weights = check_weights("clip.weights", "clip.model", "rdtf-tiny-clip", str(path), seed=0)
    assert weights.kind == "file" and weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "warning" not in weights.card()


def test_a_saved_checkpoint_reloads_the_same_model(tmp_path, clips: list[np.ndarray]):
    path = tmp_path / "tiny.pt"
    torch.save(load_model(setup_for().weights, seed=0).state_dict(), path)
    from_file = clip_stage(ClipConfig(model="rdtf-tiny-clip", weights=str(path), batch_size=8))
    random = clip_stage()
    a, b = from_file(batch_of(clips, [None] * 3)), random(batch_of(clips, [None] * 3))
    assert all(np.array_equal(x, y) for x, y in zip(a["clip_embedding"], b["clip_embedding"], strict=True))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (ClipConfig(model="rdtf-tiny-clip", weights="/no/such/checkpoint.pt"), r"clip\.weights.*no such file"),
        (ClipConfig(model="no-such-model", weights="random"), r"clip\.model.*'no-such-model'"),
        (ClipConfig(model="rdtf-tiny-clip", weights="laion2b_s34b_b79k"), r"clip\.weights.*its tags: none"),
        (ClipConfig(model="rdtf-tiny-clip", weights="random", vocabulary="/no/vocabulary.txt"), r"clip\.vocabulary"),
        (
            ClipConfig(model="rdtf-tiny-clip", weights="random", captioner="random", captioner_model="rdtf-tiny-clip"),
            r"clip\.captioner_model.*not a CoCa model",
        ),
    ],
)
def test_bad_settings_fail_before_any_input(cfg: ClipConfig, message: str):
    with pytest.raises(ConfigError, match=message):
        prepare(cfg)


def test_an_unusable_checkpoint_is_named(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"clip\.weights.*cannot load .*broken\.pt"):
        prepare(ClipConfig(model="rdtf-tiny-clip", weights=str(path)))
    other = tmp_path / "other_model.pt"
    torch.save(load_model(resolve("w", "m", "rdtf-tiny-coca", "random"), seed=0).state_dict(), other)
    with pytest.raises(ConfigError, match=r"cannot load .* into the open_clip model rdtf-tiny-clip"):
        prepare(ClipConfig(model="rdtf-tiny-clip", weights=str(other)))


def test_cli_bad_checkpoint_exits_before_reading_inputs(tmp_path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.gif").write_bytes(b"GIF89a")
    out = tmp_path / "out"
    code = main(["preprocess", str(tmp_path / "in"), "--out", str(out), "--clip-weights", str(tmp_path / "nope.pt")])
    assert code == 2
    assert "clip.weights" in capsys.readouterr().err
    assert not out.exists()


def test_cli_unreachable_tag_fails_at_once(tmp_path):
    """A pretrained tag needs a model hub; offline (as on these machines) the job stops with a clear error."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.gif").write_bytes(b"GIF89a")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "rdtf.jobs.cli",
        "preprocess",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
    ]
    command += ["--clip-weights", "openai"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "cannot fetch the pretrained weights 'openai' of ViT-B-32" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [("batch_size", 0), ("num_cpus", 0), ("num_gpus", 0), ("num_tags", 0), ("min_clip_score", 2.0)]
    + [("near_duplicate_threshold", 0.0), ("caption_max_tokens", 5), ("pool_size", 0), ("weights", "")],
)
def test_config_ranges_name_the_key(key: str, value: Any):
    with pytest.raises(ConfigError, match=rf"clip\.{key}"):
        ClipConfig(**{key: value})


def test_no_clip_flag_and_default_skip_the_stage():
    from rdtf.jobs.cli import build_parser
    from rdtf.jobs.preprocess import FLAG_KEYS

    args = build_parser().parse_args(["preprocess", "x", "--out", "y", "--clip-weights", "random", "--no-clip"])
    assert args.no_clip and FLAG_KEYS["clip_weights"] == "clip.weights"
    assert prepare(ClipConfig()) is None  # no weights: the stage is skipped


def test_actors_must_leave_a_cpu_to_decode_on():
    setup = prepare(ClipConfig(model="rdtf-tiny-clip", weights="random", pool_size=2, num_cpus=0.5))
    assert setup.for_cluster(cpus=2, gpus=0).cfg.pool_size == 2
    with pytest.raises(ConfigError, match=r"clip\.pool_size.*less than one of the cluster's 1 CPUs"):
        setup.for_cluster(cpus=1, gpus=0)


def test_cuda_without_gpus_is_refused():
    setup = prepare(ClipConfig(model="rdtf-tiny-clip", weights="random", device="cuda"))
    with pytest.raises(ConfigError, match="clip.device"):
        setup.for_cluster(cpus=2, gpus=0)
    on_gpus = prepare(ClipConfig(model="rdtf-tiny-clip", weights="random", num_gpus=0.5)).for_cluster(16, 2)
    assert (on_gpus.cfg.device, on_gpus.cfg.precision, on_gpus.cfg.pool_size) == ("cuda", "bf16", 4)
    stage = ClipStage(on_gpus.cfg, on_gpus.vocabulary)
    assert (stage.resources.num_gpus, stage.resources.actors) == (0.5, 4)


def test_a_dataset_from_before_the_clip_section_resumes_only_without_clip(tmp_path):
    from rdtf.pipeline.card import make_card
    from rdtf.pipeline.config import PreprocessConfig
    from rdtf.pipeline.runner import _check_config
    from rdtf.schemas.config import to_dict
    from rdtf.schemas.layout import DatasetLayout

    layout = DatasetLayout.at(str(tmp_path / "old"))
    old = {k: v for k, v in to_dict(PreprocessConfig()).items() if k != "clip"}
    layout.write_card(make_card(old, "complete", None, None))
    _check_config(layout, to_dict(PreprocessConfig()), None)  # the stage off: the same settings as then
    cfg = PreprocessConfig(clip=TINY)
    with pytest.raises(ConfigError, match="different 'clip' settings"):
        _check_config(layout, to_dict(cfg), setup_for())
    resumed = PreprocessConfig(clip=dataclasses.replace(TINY, pool_size=3, num_cpus=0.25))
    layout.write_card(make_card(to_dict(cfg), "complete", None, None, setup_for().card()))
    _check_config(layout, to_dict(resumed), setup_for())  # execution settings may differ


def test_shipped_vocabulary():
    tags = load_vocabulary()
    header = VOCABULARY.read_text().split("\n\n")[0]
    assert "Source:" in header and "VSD2M" in header
    assert {"good night", "ok", "thanks", "love you", "angry"} <= set(tags)
    assert len(tags) == len(set(tags)) >= 50
