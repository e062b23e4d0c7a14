"""`rdtf sample`: one animated sticker from a run's last checkpoint, for any of the paper's six tasks.

The given frames of each task at sampling time (training draws them at random; here they are fixed so a user
knows what is kept): i2v / it2v: the image as frame 0; interpolate: the GIF's frames at even positions
(`10101010`); predict-pre: the last half given, the first half predicted; predict-post: the first half given.
Given frames are kept as given in the output GIF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from rdtf.schemas.config import from_dict
from rdtf.trainer import checkpoint, run_folder
from rdtf.trainer.config import TrainConfig, upgrade_saved
from rdtf.trainer.dfgn import DFGN
from rdtf.trainer.diffusion import generate, sample_scheduler
from rdtf.trainer.latents import load_codec
from rdtf.trainer.media import clip_to_frames, frames_to_clip, read_frames, read_image, write_gif
from rdtf.trainer.tasks import NEEDS_GIF, NEEDS_IMAGE, NUM_FRAMES, TEXT_ON
from rdtf.trainer.text import TextEncoder

HALF = NUM_FRAMES // 2
GIVEN = {  # task -> the frames given at sampling time
    "t2v": [],
    "i2v": [0],
    "it2v": [0],
    "interpolate": list(range(0, NUM_FRAMES, 2)),
    "predict-pre": list(range(HALF, NUM_FRAMES)),
    "predict-post": list(range(HALF)),
}


@dataclass
class SampleRequest:
    """What to generate; `image` for i2v/it2v, `gif` for interpolation and prediction."""

    task: str
    text: str = ""
    image: str | None = None
    gif: str | None = None
    steps: int | None = None  # DDIM steps (the run's diffusion.sample_steps when None)
    seed: int = 0
    text_scale: float | None = None
    image_scale: float | None = None
    use_ema: bool = True


def load_run_config(run_dir: str) -> TrainConfig:
    with open(run_folder.config_path(run_dir)) as f:
        return from_dict(TrainConfig, upgrade_saved(json.load(f)["config"]))  # runs saved before issue 12 too


def given_frames(request: SampleRequest, size: int) -> np.ndarray:
    """(NUM_FRAMES, size, size, 3) uint8: the user's frames at the task's given positions, white elsewhere."""
    frames = np.full((NUM_FRAMES, size, size, 3), 255, dtype=np.uint8)
    if request.task in NEEDS_IMAGE:
        frames[GIVEN[request.task]] = read_image(request.image, size)
    elif request.task in NEEDS_GIF:
        clip = read_frames(request.gif, size, NUM_FRAMES)
        frames[GIVEN[request.task]] = clip[GIVEN[request.task]]
    return frames


@torch.no_grad()
def sample(run_dir: str, request: SampleRequest, out: str) -> str:
    """Generate one clip for `request` with the run's last weights and write it to `out` as an 8-frame GIF."""
    cfg = load_run_config(run_dir)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = DFGN.from_pretrained(checkpoint.weights_folder(run_dir, request.use_ema), torch_dtype=dtype).to(device)
    model.eval()
    text_encoder = TextEncoder(cfg.text).to(device, dtype)
    codec = load_codec(cfg.latent, device, dtype)

    # 1. the given frames and the condition latent c = z * m_cond
    size = cfg.latent.resolution
    frames = given_frames(request, size)
    m_cond = torch.zeros(1, NUM_FRAMES, device=device)
    m_cond[0, GIVEN[request.task]] = 1.0
    z = codec.encode(frames_to_clip(frames).to(device, dtype), torch.Generator().manual_seed(request.seed)).float()
    condition = z * m_cond[:, None, :, None, None]
    # 2. the text, switched off by the task's input gate
    text = text_encoder(text_encoder.tokenize([request.text]))
    use_text = TEXT_ON[request.task] and bool(request.text)
    # 3. guided DDIM from noise, then decode; given frames are kept as given
    generator = torch.Generator().manual_seed(request.seed)
    latents = generate(
        model,
        sample_scheduler(cfg.diffusion),
        text if use_text else torch.zeros_like(text),
        condition,
        cfg.diffusion,
        use_text,
        generator,
        steps=request.steps,
        text_scale=request.text_scale,
        image_scale=request.image_scale,
    )
    result = clip_to_frames(codec.decode(latents.to(device)))[0]
    result[GIVEN[request.task]] = frames[GIVEN[request.task]]
    return write_gif(result, out)
