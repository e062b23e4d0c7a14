"""`rdtf export` end to end on the tiny preset (CPU, fp32): a short run exported as a diffusers pipeline folder, loaded
by `DiffusionPipeline.from_pretrained` in a fresh Python that never imports rdtf, and compared with rdtf's own model,
text tower and sampler; and the export's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from dataset_factory import clip_frames, make_dataset, tiny_vae_folder
from PIL import Image
from safetensors.torch import load_file

from rdtf.trainer import checkpoint, run_folder
from rdtf.trainer.config import TrainConfig
from rdtf.trainer.dfgn import DFGN
from rdtf.trainer.diffusion import generate, sample_scheduler
from rdtf.trainer.export import export_pipeline, standalone_dfgn_source
from rdtf.trainer.latents import load_codec
from rdtf.trainer.media import clip_to_frames, frames_to_clip, write_gif
from rdtf.trainer.sample import GIVEN, SampleRequest, given_frames, load_run_config
from rdtf.trainer.text import TextEncoder

TINY = str(REPO / "configs" / "tiny.yaml")
PROMPT = "a square of colour 1"
STEPS = 3  # DDIM steps of the compared samples

# Runs in a fresh Python without rdtf on its path: loads the folder as any diffusers user would, and writes what it
# computed for the test to compare.
LOAD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import export_to_gif

    folder, work, prompt, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    inputs = torch.load(f"{work}/inputs.pt")
    with torch.no_grad():
        np.save(f"{work}/unet.npy", pipe.unet(**inputs).numpy())
    np.save(f"{work}/text.npy", pipe.text_encoder(pipe.text_encoder.tokenize([prompt])).numpy())
    seed = lambda: torch.Generator().manual_seed(0)
    t2v = pipe(prompt, num_inference_steps=steps, generator=seed(), output_type="np").frames
    clip = pipe(prompt, task="interpolate", video=f"{work}/given.gif", num_inference_steps=steps, generator=seed())
    export_to_gif(clip.frames[0], f"{work}/interpolate.gif", fps=8)
    interpolate = np.stack([np.asarray(image) for image in clip.frames[0]])[None]
    np.savez(f"{work}/clips.npz", t2v=t2v, interpolate=interpolate)
    loaded = sorted(name for name in sys.modules if name == "rdtf" or name.startswith("rdtf."))
    json.dump({"pipeline": type(pipe).__name__, "rdtf_modules": loaded}, open(f"{work}/report.json", "w"))
    """
)


def rdtf(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rdtf.jobs.cli", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Two steps of the tiny preset with EMA, a checkpoint after each, each also exported by the trainer."""
    data = make_dataset(str(tmp_path_factory.mktemp("data") / "ds"), files=2, rows_per_file=4)
    run = tmp_path_factory.mktemp("runs") / "run"
    fast = ["--micro-batch", "2", "--set", "data.shuffle_buffer=4", "--set", "optim.ema_decay=0.9"]
    fast += ["--set", "run.checkpoint_every=1", "--set", "run.export_every_checkpoint=true"]
    done = rdtf("train", "--config", TINY, "--data", data, "--out", str(run), "--steps", "2", *fast)
    assert done.returncode == 0, done.stdout + done.stderr
    return run


def test_the_exported_pipeline_loads_without_rdtf_and_matches_the_run(run, tmp_path):
    out = tmp_path / "pipeline"
    done = rdtf("export", str(run), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "model_index.json",
        "pipeline_rdtf.py",
        "rdtf_run.json",
        "scheduler",
        "text_encoder",
        "unet",
    ]  # pixel space: no vae/
    assert json.loads((out / "model_index.json").read_text())["vae"] == [None, None]
    assert "rdtf" not in (out / "unet" / "modeling_dfgn.py").read_text().split('"""', 2)[2]  # past the docstring

    # the same input for both models; a GIF whose even frames the interpolation is given
    cfg = load_run_config(str(run))
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "sample": torch.randn(1, 3, 8, 32, 32, generator=generator),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 77, 64, generator=generator),
        "condition": torch.randn(1, 3, 8, 32, 32, generator=generator) * (torch.arange(8) % 2 == 0)[:, None, None],
    }
    torch.save(inputs, tmp_path / "inputs.pt")
    write_gif(clip_frames(3, 8, 32), str(tmp_path / "given.gif"))

    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules"), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-c", LOAD, str(out), str(tmp_path), PROMPT, str(STEPS)]
    loaded = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"pipeline": "RDTFPipeline", "rdtf_modules": []}

    # 1. the denoiser: the run's EMA weights through rdtf's DFGN, and through the exported code
    model = DFGN.from_pretrained(checkpoint.weights_folder(str(run))).eval()
    with torch.no_grad():
        expected = model(**inputs).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "unet.npy"), expected, rtol=1e-4, atol=1e-5)
    # 2. the text tower
    tower = TextEncoder(cfg.text)
    text = tower(tower.tokenize([PROMPT]))
    np.testing.assert_allclose(np.load(tmp_path / "text.npy"), text.numpy(), rtol=1e-4, atol=1e-5)
    # 3. samples, draw for draw as `rdtf sample` makes them (pixel space draws nothing to encode): text-to-GIF, and
    # an interpolation of the given GIF's even frames
    clips = np.load(tmp_path / "clips.npz")
    for task, gif in (("t2v", None), ("interpolate", str(tmp_path / "given.gif"))):
        expected = rdtf_clip(model, cfg, text, SampleRequest(task, PROMPT, gif=gif, steps=STEPS))
        assert clips[task].shape == (1, 8, 32, 32, 3) and clips[task].dtype == np.uint8
        assert np.abs(clips[task][0].astype(int) - expected.astype(int)).max() <= 1, task  # a rounding step apart
    # 4. the GIF a user writes with diffusers' export_to_gif
    with Image.open(tmp_path / "interpolate.gif") as gif:
        assert gif.size == (32, 32) and gif.n_frames == 8


def rdtf_clip(model: DFGN, cfg: TrainConfig, text: torch.Tensor, request: SampleRequest) -> np.ndarray:
    """What trainer/sample.py's `sample` computes before it writes the GIF: (f, h, w, 3) uint8."""
    codec = load_codec(cfg.latent, torch.device("cpu"), torch.float32)
    frames = given_frames(request, cfg.latent.resolution)
    m_cond = torch.zeros(1, 8)
    m_cond[0, GIVEN[request.task]] = 1.0
    condition = codec.encode(frames_to_clip(frames)) * m_cond[:, None, :, None, None]
    generator = torch.Generator().manual_seed(request.seed)
    latents = generate(model, sample_scheduler(cfg.diffusion), text, condition, cfg.diffusion, True, generator, STEPS)
    result = clip_to_frames(codec.decode(latents))[0]
    result[GIVEN[request.task]] = frames[GIVEN[request.task]]
    return result


def test_a_run_in_vae_space_exports_its_vae_and_samples_from_an_image(tmp_path):
    data = make_dataset(str(tmp_path / "ds"), files=1, rows_per_file=4)
    vae = ["--set", "latent.mode=vae", "--set", f"latent.vae_path={tiny_vae_folder(tmp_path / 'vae')}"]
    args = ["--steps", "1", "--micro-batch", "2", "--set", "data.shuffle_buffer=4", *vae]
    done = rdtf("train", "--config", TINY, "--data", data, "--out", str(tmp_path / "run"), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    out = export_pipeline(str(tmp_path / "run"), str(tmp_path / "pipeline"))
    assert json.loads((Path(out) / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]
    Image.fromarray(clip_frames(5, 1, 32)[0]).save(tmp_path / "image.png")
    script = textwrap.dedent(
        """
        import sys
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        clip = pipe("a square", task="it2v", image=sys.argv[2] + "/image.png", num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="np").frames
        np.save(sys.argv[2] + "/it2v.npy", clip)
        print(type(pipe.vae).__name__, pipe.unet.config.in_channels)
        """
    )
    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules"), "CUDA_VISIBLE_DEVICES": ""}
    loaded = subprocess.run(
        [sys.executable, "-c", script, out, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["AutoencoderKL", "4"]  # 4 latent channels: diffusion ran in the VAE's space
    clip = np.load(tmp_path / "it2v.npy")
    assert clip.shape == (1, 8, 32, 32, 3)
    assert np.array_equal(clip[0, 0], clip_frames(5, 1, 32)[0])  # the given frame, kept as given


def test_an_older_checkpoint_and_its_raw_weights_can_be_exported(run, tmp_path):
    out = export_pipeline(str(run), str(tmp_path / "step1"), step="1", use_ema=False)
    exported = load_file(Path(out) / "unet" / "diffusion_pytorch_model.safetensors")
    raw = load_file(
        Path(checkpoint.weights_folder(str(run), False, "step-00000001")) / "diffusion_pytorch_model.safetensors"
    )
    assert exported.keys() == raw.keys() and all(torch.equal(exported[k], raw[k]) for k in raw)
    assert json.loads((Path(out) / "rdtf_run.json").read_text())["weights"] == "checkpoints/step-00000001/model"


def test_the_trainer_exports_every_checkpoint_when_asked(run):
    for step in (1, 2):
        folder = run / "checkpoints" / run_folder.tag(step)
        exported = load_file(folder / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
        ema = load_file(folder / "ema" / "diffusion_pytorch_model.safetensors")
        assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)
        assert (folder / "pipeline" / "model_index.json").is_file()


def test_the_generated_dfgn_module_imports_no_rdtf():
    source = standalone_dfgn_source()
    compile(source, "modeling_dfgn.py", "exec")
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports and not any("rdtf" in line for line in imports)
    assert "class DFGN(ModelMixin, ConfigMixin)" in source and "class STILayer(nn.Module)" in source
    assert "def read_model_config" not in source  # preset helpers are left out


def test_a_run_without_checkpoints_is_refused_and_nothing_is_written(run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((run / "config.json").read_text())
    done = rdtf("export", str(bare), "--out", str(tmp_path / "pipeline"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "has no checkpoint yet" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]


def test_an_out_folder_that_is_not_empty_is_refused_and_left_as_it_was(run, tmp_path):
    out = tmp_path / "pipeline"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = rdtf("export", str(run), "--out", str(out))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "is not empty" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
