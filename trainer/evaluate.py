"""Scores a trained run on held-out clips: the denoising loss of every task on fixed noise, and PSNR / SSIM of
generated frames against the real ones for interpolation and prediction. See ../docs/evaluate.md.

>>> report = evaluate("runs/x", "data/heldout", clips=64, steps=10, seed=0)
>>> print("\\n".join(report.lines()))

Every random draw comes from generators seeded by (seed, task, clip) or (seed, task, batch), never by the run, so
two runs evaluated with the same arguments on the same clips are scored on exactly the same noise and timesteps.
Tested by tests/trainer/test_evaluate.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rdtf.schemas.dataset import KEYFRAME_COUNTS
from rdtf.schemas.reader import open_dataset
from rdtf.trainer import checkpoint
from rdtf.trainer.config import TrainConfig
from rdtf.trainer.data import READ_COLUMNS, Batch, collate, decode_clip
from rdtf.trainer.dfgn import DFGN
from rdtf.trainer.diffusion import generate, sample_scheduler, train_scheduler, training_target
from rdtf.trainer.latents import load_codec
from rdtf.trainer.masks import NUM_FRAMES, TASKS, TEXT_ON, frame_mask, masked_mse
from rdtf.trainer.media import clip_to_frames
from rdtf.trainer.sample import GIVEN, load_run_config
from rdtf.trainer.text import TextEncoder

# Tasks whose generated frames have real counterparts to compare with: the frames around the given ones exist in
# the held-out clip. (t2v / i2v / it2v have no single right answer, so only their loss is reported.)
FRAME_TASKS = ("interpolate", "predict-pre", "predict-post")
DATA_RANGE = 255  # PSNR and SSIM on uint8 frames
# With fewer than 5 frames, GIVEN's predict-post (frames 0..3) would give every valid frame and predict-pre (4..7)
# none: 5 is the fewest keyframes for which every task both gives and predicts a frame.
MIN_KEYFRAMES = 5
# Clips per forward pass. CPU: measured on the tiny preset (2 cores, 1 thread), a clip costs the same alone as in a
# batch of 4 (about 0.4 s per forward), so batches buy nothing and 1 keeps every clip's generation noise its own.
CPU_BATCH = 1
GPU_BATCH = 16  # a GPU needs batches to keep busy (not measured: no GPU was lent when this was written)


@dataclass
class EvalReport:
    """What `evaluate` measured; every mean is over clips, each clip over the frames it was scored on."""

    run_dir: str
    checkpoint: str  # the checkpoint tag whose weights were scored
    data: str
    sample_ids: list[str]  # the held-out clips, in the order scored
    keyframes: int  # k frames decoded per clip (its stored keyframe set for k)
    steps: int  # DDIM steps of generation
    text_scale: float  # classifier-free guidance of generation (the run's diffusion.text_scale unless overridden)
    image_scale: float
    seed: int
    draws: int  # (noise, timestep) draws per clip and task for the loss
    loss: dict[str, float]  # task -> mean denoising loss on the frames the task must produce
    psnr: dict[str, float]  # FRAME_TASKS -> mean PSNR (dB) of generated vs real frames that were not given
    ssim: dict[str, float]  # FRAME_TASKS -> mean SSIM of the same frames
    frames_scored: dict[str, int]  # task -> frames that counted, over all clips
    seconds: float
    # No-model baselines on the same frames: BASELINES name -> {"psnr" | "ssim": FRAME_TASKS -> mean}
    baselines: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        lines = [
            f"{self.run_dir} ({self.checkpoint}) on {len(self.sample_ids)} held-out clips of {self.data}, "
            f"k={self.keyframes}, {self.draws} noise draws, {self.steps} DDIM steps, guidance {self.text_scale:g} "
            f"(text) {self.image_scale:g} (image), seed {self.seed}, "
            f"{self.seconds:.1f} s",
            "denoising loss: " + ", ".join(f"{task} {loss:.4f}" for task, loss in self.loss.items()),
        ]
        for task in self.psnr:
            line = f"{task}: PSNR {self.psnr[task]:.2f} dB, SSIM {self.ssim[task]:.4f}"
            for name, scores in self.baselines.items():
                line += f"; {name} {scores['psnr'][task]:.2f} dB, {scores['ssim'][task]:.4f}"
            lines.append(line)
        return lines


def _word(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _seed(*keys: int | str) -> int:
    """A 63-bit seed from keys; strings (sample ids, task names) are hashed, so any id format works."""
    words = [_word(k) if isinstance(k, str) else k for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator_for(*keys: int | str) -> torch.Generator:
    """A CPU generator seeded from keys: the draws of one clip do not depend on which other clips are scored."""
    return torch.Generator().manual_seed(_seed(*keys))


def given_mask(task: str, num_valid: torch.Tensor) -> torch.Tensor:
    """m_cond * m_frame, (b, f): `rdtf sample`'s fixed given frames of `task` (trainer.sample.GIVEN), cut to the
    valid frames of each clip."""
    mask = torch.zeros(len(num_valid), NUM_FRAMES)
    mask[:, GIVEN[task]] = 1.0
    return mask * frame_mask(num_valid.cpu())


def scored_mask(task: str, num_valid: torch.Tensor) -> torch.Tensor:
    """(b, f): the frames a task must produce and that exist, valid and not given; the only frames that count."""
    return frame_mask(num_valid.cpu()) * (1.0 - given_mask(task, num_valid))


def copy_nearest(real: np.ndarray, given: np.ndarray) -> np.ndarray:
    """The copy baseline: every frame replaced by the nearest given frame (the earlier one on a tie).

    real (b, f, h, w, 3) uint8, given (b, f) mask; clips without a given frame are returned unchanged.
    """
    out = real.copy()
    for clip, mask in zip(out, given, strict=True):
        sources = np.flatnonzero(mask)
        if len(sources):
            for f in range(len(clip)):
                clip[f] = clip[sources[np.argmin(np.abs(sources - f))]]
    return out


def noise_frames(real: np.ndarray, seed: int) -> np.ndarray:
    """The noise baseline: uniform random uint8 frames shaped like `real`."""
    return np.random.default_rng(seed).integers(0, 256, real.shape, dtype=np.uint8)


# Baselines that need no model, scored on the same frames as the model (EvalReport.baselines).
BASELINES = ("copy_nearest", "noise")


Clip = tuple[dict[str, Any], np.ndarray]  # a dataset row and its decoded keyframes (k, r, r, 3) uint8


def read_clips(data: str, count: int | None, keyframes: int, resolution: int) -> list[Clip]:
    """The first `count` rows of the dataset in file order (all when None), each with its k keyframes decoded as the
    trainer decodes them: (k, r, r, 3) uint8."""
    rows: list[dict[str, Any]] = []
    for batch in open_dataset(data).iter_batches(columns=READ_COLUMNS, batch_size=16):
        rows += batch.to_pylist()
        if count is not None and len(rows) >= count:
            break
    rows = rows[:count]
    if not rows:
        raise ValueError(f"{data} has no rows to evaluate on")
    return [(row, decode_clip(row, keyframes, resolution)) for row in rows]


def frame_scores(generated: np.ndarray, real: np.ndarray, scored: np.ndarray) -> tuple[list[float], list[float]]:
    """Per clip, the mean PSNR and SSIM over its scored frames; (b, f, h, w, 3) uint8 and a (b, f) mask.

    Identical frames have an infinite PSNR; they get the PSNR of the smallest possible error instead (one level in
    one value), the largest finite PSNR the frame size allows, so that means stay finite and order is kept.
    """
    psnrs, ssims = [], []
    for gen_clip, real_clip, mask in zip(generated, real, scored, strict=True):
        frames = np.flatnonzero(mask)
        if len(frames) == 0:
            raise ValueError("a clip has no scored frame: every valid frame is given")
        clip_psnr, clip_ssim = [], []
        for f in frames:
            if np.array_equal(gen_clip[f], real_clip[f]):
                clip_psnr.append(float(10 * np.log10(DATA_RANGE**2 * real_clip[f].size)))
            else:
                clip_psnr.append(float(peak_signal_noise_ratio(real_clip[f], gen_clip[f], data_range=DATA_RANGE)))
            clip_ssim.append(
                float(structural_similarity(real_clip[f], gen_clip[f], data_range=DATA_RANGE, channel_axis=-1))
            )
        psnrs.append(float(np.mean(clip_psnr)))
        ssims.append(float(np.mean(clip_ssim)))
    return psnrs, ssims


class _Scorer:
    """The run's frozen parts on one device: weights, text tower, codec, noise schedule."""

    def __init__(self, run_dir: str, cfg: TrainConfig, device: torch.device, use_ema: bool, tag: str):
        self.cfg = cfg
        self.device = device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        weights = checkpoint.weights_folder(run_dir, use_ema, tag)
        self.model = DFGN.from_pretrained(weights, torch_dtype=self.dtype).to(device).eval()
        self.text_encoder = TextEncoder(cfg.text).to(device, self.dtype)  # random weights: from text.random_seed
        self.codec = load_codec(cfg.latent, device, self.dtype)
        self.noise_scheduler = train_scheduler(cfg.diffusion)

    def encode(self, batch: Batch, seed: int) -> torch.Tensor:
        """z (b, c, f, h, w) float, padded frames zeroed; each clip encoded with its own generator."""
        latents = [
            self.codec.encode(batch.frames[i : i + 1].to(self.device, self.dtype), generator_for(seed, "encode", sid))
            for i, sid in enumerate(batch.sample_ids)
        ]
        m_frame = frame_mask(batch.num_valid).to(self.device)
        return torch.cat(latents).float() * m_frame[:, None, :, None, None]

    def text(self, captions: list[str]) -> torch.Tensor:
        return self.text_encoder(self.text_encoder.tokenize(captions))

    @torch.no_grad()
    def loss(self, task: str, batch: Batch, z: torch.Tensor, seed: int, draws: int) -> list[float]:
        """Per clip, the masked MSE of the prediction (noise, or v) on its scored frames, averaged over `draws`
        (eps, t).

        The timesteps are stratified: draw r of a clip lies in the r-th of `draws` equal ranges of [0, T), so every
        clip is scored over the whole noise range with few draws.
        """
        num_timesteps = self.noise_scheduler.config.num_train_timesteps
        eps, timesteps = [], []
        for sid in batch.sample_ids:
            generator = generator_for(seed, task, sid)
            eps.append(torch.randn((draws, *z.shape[1:]), generator=generator))
            strata = (torch.arange(draws) + torch.rand(draws, generator=generator)) * num_timesteps / draws
            timesteps.append(strata.long().clamp(max=num_timesteps - 1))
        eps_all, t_all = torch.stack(eps).to(self.device), torch.stack(timesteps).to(self.device)
        m_cond = given_mask(task, batch.num_valid).to(self.device)
        scored = scored_mask(task, batch.num_valid).to(self.device)
        c = z * m_cond[:, None, :, None, None]
        text = self.text(batch.captions) * float(TEXT_ON[task])
        losses = torch.zeros(len(batch), device=self.device)
        for r in range(draws):
            noisy = self.noise_scheduler.add_noise(z, eps_all[:, r], t_all[:, r])
            y = training_target(self.noise_scheduler, z, eps_all[:, r], t_all[:, r])
            y_hat = self.model(noisy.to(self.dtype), t_all[:, r], text.to(self.dtype), c.to(self.dtype)).float()
            for i in range(len(batch)):
                losses[i] += masked_mse(y_hat[i : i + 1], y[i : i + 1], scored[i : i + 1]) / draws
        return losses.tolist()

    def generate(
        self,
        task: str,
        batch: Batch,
        z: torch.Tensor,
        generator: torch.Generator,
        steps: int,
        scales: tuple[float, float],
    ) -> np.ndarray:
        """Frames (b, f, h, w, 3) uint8 generated from the task's given frames and the captions, as `rdtf sample`
        does: guided DDIM with (text, image) guidance `scales`."""
        condition = z * given_mask(task, batch.num_valid).to(self.device)[:, None, :, None, None]
        latents = generate(
            self.model,
            sample_scheduler(self.cfg.diffusion),
            self.text(batch.captions),
            condition,
            self.cfg.diffusion,
            TEXT_ON[task],
            generator,
            steps=steps,
            text_scale=scales[0],
            image_scale=scales[1],
        )
        return clip_to_frames(self.codec.decode(latents.to(self.device)))


@torch.no_grad()
def evaluate(
    run_dir: str,
    data: str,
    clips: int | None = None,
    steps: int = 10,
    seed: int = 0,
    keyframes: int = NUM_FRAMES,
    draws: int = 4,
    batch_size: int | None = None,
    text_scale: float | None = None,
    image_scale: float | None = None,
    use_ema: bool = True,
    device: str | None = None,
    step_tag: str | None = None,
) -> EvalReport:
    """Score the last checkpoint of `run_dir` (or the one tagged `step_tag`) on the first `clips` rows of the
    dataset at `data` (all when None).

    1. read and decode k keyframes per clip (the trainer's decoding and padding);
    2. per task: the denoising loss on fixed noise and stratified timesteps, on the frames the task must produce
       (valid, not given); given frames are `rdtf sample`'s (trainer.sample.GIVEN);
    3. for FRAME_TASKS: generate with `steps` DDIM steps and compare with the real frames (PSNR, SSIM) on the same
       frames. Generation noise is seeded by (seed, task, the batch's clips): the same clips and batch_size give the
       same noise, and with batch_size 1 every clip's noise is its own.
    Guidance scales default to the run's (diffusion.text_scale / image_scale); 1 and 1 is the plain conditional
    prediction. The device is CUDA when there is one (bf16 weights), else the CPU (fp32). batch_size (clips per
    forward pass) defaults to CPU_BATCH on the CPU and GPU_BATCH on a GPU.
    """
    if keyframes not in KEYFRAME_COUNTS or keyframes < MIN_KEYFRAMES:
        raise ValueError(f"keyframes must be in {MIN_KEYFRAMES}..{KEYFRAME_COUNTS[-1]}, got {keyframes}")
    if any(value is not None and value < 1 for value in (clips, steps, draws, batch_size)):
        raise ValueError("clips, steps, draws and batch_size must be at least 1")
    started = time.perf_counter()
    cfg = load_run_config(run_dir)
    tag = step_tag or checkpoint.latest_tag(run_dir)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_size = batch_size or (GPU_BATCH if target.type == "cuda" else CPU_BATCH)
    scorer = _Scorer(run_dir, cfg, target, use_ema, tag)
    scales = (
        cfg.diffusion.text_scale if text_scale is None else text_scale,
        cfg.diffusion.image_scale if image_scale is None else image_scale,
    )

    # 1. the held-out clips
    decoded = read_clips(data, clips, keyframes, cfg.latent.resolution)
    losses: dict[str, list[float]] = {task: [] for task in TASKS}
    psnrs: dict[str, list[float]] = {task: [] for task in FRAME_TASKS}
    ssims: dict[str, list[float]] = {task: [] for task in FRAME_TASKS}
    base = {name: {"psnr": {t: [] for t in FRAME_TASKS}, "ssim": {t: [] for t in FRAME_TASKS}} for name in BASELINES}
    scored_frames = dict.fromkeys(TASKS, 0)
    for first in range(0, len(decoded), batch_size):
        batch = collate(decoded[first : first + batch_size])
        real = clip_to_frames(batch.frames)  # back to uint8 exactly: collate only scales
        z = scorer.encode(batch, seed)
        # 2. the denoising loss of every task
        for task in TASKS:
            losses[task] += scorer.loss(task, batch, z, seed, draws)
            scored_frames[task] += int(scored_mask(task, batch.num_valid).sum())
        # 3. generated frames against the real ones, on the frames that were not given
        for task in FRAME_TASKS:
            generated = scorer.generate(task, batch, z, generator_for(seed, task, *batch.sample_ids), steps, scales)
            scored = scored_mask(task, batch.num_valid).numpy()
            psnr, ssim = frame_scores(generated, real, scored)
            psnrs[task] += psnr
            ssims[task] += ssim
            given = given_mask(task, batch.num_valid).numpy()
            made = {"copy_nearest": copy_nearest(real, given), "noise": noise_frames(real, _seed(seed, task, first))}
            for name, frames in made.items():
                psnr, ssim = frame_scores(frames, real, scored)
                base[name]["psnr"][task] += psnr
                base[name]["ssim"][task] += ssim

    return EvalReport(
        run_dir=run_dir,
        checkpoint=tag,
        data=data,
        sample_ids=[row["sample_id"] for row, _ in decoded],
        keyframes=keyframes,
        steps=steps,
        text_scale=scales[0],
        image_scale=scales[1],
        seed=seed,
        draws=draws,
        loss={task: float(np.mean(values)) for task, values in losses.items()},
        psnr={task: float(np.mean(values)) for task, values in psnrs.items()},
        ssim={task: float(np.mean(values)) for task, values in ssims.items()},
        frames_scored=scored_frames,
        seconds=time.perf_counter() - started,
        baselines={
            name: {metric: {t: float(np.mean(v)) for t, v in per_task.items()} for metric, per_task in scores.items()}
            for name, scores in base.items()
        },
    )
