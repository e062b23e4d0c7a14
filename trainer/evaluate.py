"""Scores a trained run on held-out clips with the paper's measures: FVD (I3D features), CLIP similarity between the
caption and the generated frames, PSNR / SSIM of generated frames against the real ones for interpolation and
prediction, and the denoising loss of every task on fixed noise. See ../docs/evaluate.md; `rdtf eval` is the command.

>>> report = evaluate("runs/x", "data/heldout", clips=64, steps=10, seed=0, i3d_weights="i3d_pretrained_400.pt")
>>> print("\\n".join(report.lines()))

Every random draw comes from generators seeded by (seed, task, clip) or (seed, task, batch), never by the run, so
two runs evaluated with the same arguments on the same clips are scored on exactly the same noise and timesteps.
The held-out set is streamed: per-clip measures keep running sums (mean and a 95% t-interval), FVD keeps feature
sums (trainer/fvd.py), so memory does not grow with the clip count. Under torch.distributed every process scores
every world_size-th clip and the sums are all-reduced. Tested by tests/trainer/test_evaluate.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
import torch
import torch.distributed as dist
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rdtf.schemas.config import ConfigError
from rdtf.schemas.dataset import KEYFRAME_COUNTS
from rdtf.schemas.reader import open_dataset
from rdtf.trainer import checkpoint
from rdtf.trainer.clip_similarity import ClipSimilarity
from rdtf.trainer.clip_similarity import check_weights as check_clip_weights
from rdtf.trainer.config import TrainConfig
from rdtf.trainer.data import READ_COLUMNS, Batch, collate, decode_clip
from rdtf.trainer.dfgn import DFGN
from rdtf.trainer.diffusion import generate, predict, sample_scheduler, train_scheduler, training_target
from rdtf.trainer.fvd import FeatureStats, fvd
from rdtf.trainer.i3d import INPUT_SIZE, NUM_CLASSES, i3d_features, load_i3d
from rdtf.trainer.i3d import check_weights as check_i3d_weights
from rdtf.trainer.latents import load_codec
from rdtf.trainer.masks import frame_mask, masked_mse
from rdtf.trainer.media import clip_to_frames
from rdtf.trainer.sample import GIVEN, load_run_config
from rdtf.trainer.tasks import MIN_KEYFRAMES, NUM_FRAMES, TASKS, TEXT_ON
from rdtf.trainer.text import TextEncoder

# Tasks whose generated frames have real counterparts to compare with: the frames around the given ones exist in
# the held-out clip. (t2v / i2v / it2v have no single right answer: loss, FVD and CLIP similarity only.)
FRAME_TASKS = ("interpolate", "predict-pre", "predict-post")
DATA_RANGE = 255  # PSNR and SSIM on uint8 frames
# Clips per forward pass. CPU: measured on the tiny preset (2 cores, 1 thread), a clip costs the same alone as in a
# batch of 4 (about 0.4 s per forward), so batches buy nothing and 1 keeps every clip's generation noise its own.
CPU_BATCH = 1
GPU_BATCH = 16  # a GPU needs batches to keep busy (not measured: no GPU was lent when this was written)
CONFIDENCE = 0.95  # of the intervals over clips
READ_BATCH = 16  # rows per Arrow batch read from the held-out set


class HeldoutMismatch(ConfigError):
    """The held-out dataset cannot be scored by this checkpoint (frame size or frame count); the user's to fix (a
    ConfigError, so every command reports it in one line with exit 2)."""


class Mean:
    """A per-clip measure as running sums (count, sum, sum of squares): its mean and a t-interval over clips,
    without keeping the values; ranks add their sums."""

    def __init__(self) -> None:
        self.sums = np.zeros(3)

    def add(self, values: list[float | None]) -> None:
        for value in values:
            if value is not None:
                self.sums += (1.0, value, value * value)

    @property
    def count(self) -> int:
        return int(round(self.sums[0]))

    def mean(self) -> float:
        return float(self.sums[1] / self.sums[0]) if self.count else float("nan")

    def interval(self) -> list[float] | None:
        """The CONFIDENCE t-interval of the mean over clips; None with fewer than 2 clips."""
        n = self.count
        if n < 2:
            return None
        variance = max((self.sums[2] - self.sums[1] ** 2 / n) / (n - 1), 0.0)
        half = float(scipy.stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * np.sqrt(variance / n))
        return [self.mean() - half, self.mean() + half]


def _all_reduce(arrays: list[np.ndarray]) -> None:
    """Sum float64 arrays over every rank in place (one collective); nothing when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.from_numpy(np.concatenate([a.ravel() for a in arrays]))
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.all_reduce(flat)
    flat = flat.cpu().numpy()
    start = 0
    for array in arrays:
        array.ravel()[:] = flat[start : start + array.size]
        start += array.size


@dataclass
class EvalReport:
    """What `evaluate` measured; every per-clip mean is over clips, each clip over the frames it was scored on."""

    run_dir: str
    checkpoint: str  # the checkpoint tag whose weights were scored
    data: str
    clips: int  # held-out clips scored (the first `clips` rows of the dataset, in file order)
    tasks: list[str]
    keyframes: int  # k frames decoded per clip (its stored keyframe set for k)
    steps: int  # DDIM steps of generation
    text_scale: float  # classifier-free guidance of generation (the run's diffusion.text_scale unless overridden)
    image_scale: float
    seed: int
    draws: int  # (noise, timestep) draws per clip and task for the loss
    world_size: int  # processes that shared the clips
    loss: dict[str, float]  # task -> mean denoising loss on the frames the task must produce
    psnr: dict[str, float]  # FRAME_TASKS -> mean PSNR (dB) of generated vs real frames that were not given
    ssim: dict[str, float]  # FRAME_TASKS -> mean SSIM of the same frames
    frames_scored: dict[str, int]  # task -> frames that counted, over all clips
    seconds: float
    # No-model baselines on the same frames: BASELINES name -> {"psnr" | "ssim": FRAME_TASKS -> mean}
    baselines: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)
    # measure ("loss", "psnr", "ssim", "clip_similarity") -> task -> [low, high], the CONFIDENCE t-interval over clips
    intervals: dict[str, dict[str, list[float] | None]] = dataclasses.field(default_factory=dict)
    clip_similarity: dict[str, float] = dataclasses.field(default_factory=dict)  # task -> mean cosine; with CLIP
    fvd: dict[str, float] = dataclasses.field(default_factory=dict)  # task -> FVD vs the real clips; with I3D
    i3d_weights: str | None = None
    i3d_size: int = INPUT_SIZE
    clip_weights: str | None = None
    # The first clips' real and generated frames, for the report page; not in to_dict().
    examples: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "examples"}

    def lines(self) -> list[str]:
        lines = [
            f"{self.run_dir} ({self.checkpoint}) on {self.clips} held-out clips of {self.data}, "
            f"k={self.keyframes}, {self.draws} noise draws, {self.steps} DDIM steps, guidance {self.text_scale:g} "
            f"(text) {self.image_scale:g} (image), seed {self.seed}, "
            f"{self.seconds:.1f} s",
            "denoising loss: " + ", ".join(f"{task} {loss:.4f}" for task, loss in self.loss.items()),
        ]
        for task in self.fvd:
            lines.append(f"{task}: FVD {self.fvd[task]:.2f} (I3D {self.i3d_weights}, {self.i3d_size} px)")
        for task in self.clip_similarity:
            lines.append(f"{task}: CLIP similarity {self.clip_similarity[task]:.4f}")
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


Clip = tuple[dict[str, Any], np.ndarray]  # a dataset row (without its encoded frames) and its k keyframes (k, r, r, 3)


def check_fit(row: dict[str, Any], keyframes: int, resolution: int, data: str) -> None:
    """Refuse a held-out row that this checkpoint cannot be scored on: frames smaller than the run's resolution
    (the model never saw upscaled frames), or no keyframe set for k frames."""
    if row["frame_size"] < resolution:
        raise HeldoutMismatch(
            f"{data}: held-out frames are {row['frame_size']} px, the checkpoint's latent.resolution is {resolution} "
            f"px; preprocess the held-out set with decode.frame_size >= {resolution}"
        )
    most = KEYFRAME_COUNTS[0] + len(row["keyframe_sets"]) - 1
    if keyframes > most:
        raise HeldoutMismatch(
            f"{data}: held-out clips have keyframe sets for at most {most} frames, the checkpoint is scored on "
            f"{keyframes} of its {NUM_FRAMES}-frame clips; score fewer keyframes (--keyframes {most})"
        )


def check_data(data: str, keyframes: int, resolution: int) -> None:
    """check_fit on the first held-out row, before any model is loaded."""
    reader = open_dataset(data)
    for batch in reader.iter_batches(columns=["frame_size", "keyframe_sets"], batch_size=1):
        if batch.num_rows:
            return check_fit(batch.to_pylist()[0], keyframes, resolution, data)
    raise HeldoutMismatch(f"{data} has no rows to evaluate on")


def iter_clips(
    data: str, count: int | None, keyframes: int, resolution: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[int, Clip]]:
    """(index, clip) of the first `count` rows of the dataset in file order (all when None) whose index is rank mod
    world_size, its k keyframes decoded as the trainer decodes them; every row is checked (check_fit). Streamed: an
    Arrow batch of READ_BATCH rows at a time (every rank reads every row; it decodes only its own)."""
    index = 0
    for batch in open_dataset(data).iter_batches(columns=[*READ_COLUMNS, "frame_size"], batch_size=READ_BATCH):
        for row in batch.to_pylist():
            if count is not None and index >= count:
                return
            check_fit(row, keyframes, resolution, data)  # on every rank: all of them stop at the same row
            if index % world_size == rank:
                clip = decode_clip(row, keyframes, resolution)
                yield index, ({k: v for k, v in row.items() if k != "frames"}, clip)
            index += 1
    if index == 0:
        raise ValueError(f"{data} has no rows to evaluate on")


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
            y_hat = predict(
                self.model,
                self.noise_scheduler,
                self.cfg.diffusion.anchor,
                noisy.to(self.dtype),
                t_all[:, r],
                text.to(self.dtype),
                c.to(self.dtype),
            )
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


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# Random I3D weights come from this seed, not the evaluation's, so that FVDs of different seeds compare.
I3D_RANDOM_SEED = 0


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
    tasks: tuple[str, ...] | list[str] = TASKS,
    i3d_weights: str | None = None,
    i3d_size: int = INPUT_SIZE,
    clip_weights: str | None = None,
    examples: int = 0,
) -> EvalReport:
    """Score the last checkpoint of `run_dir` (or the one tagged `step_tag`) on the first `clips` rows of the
    dataset at `data` (all when None), for `tasks`.

    1. check everything the user gave (weights files, the held-out set's frame size and count) before any model runs;
    2. stream the held-out clips, k keyframes each (the trainer's decoding and padding), this rank's share;
    3. per task: the denoising loss on fixed noise and stratified timesteps, on the frames the task must produce
       (valid, not given); given frames are `rdtf sample`'s (trainer.sample.GIVEN);
    4. generate with `steps` DDIM steps (FRAME_TASKS always; every task when FVD or CLIP is asked for): PSNR / SSIM
       against the real frames on the same frames, CLIP similarity of the same frames with the caption, I3D
       features of the whole clip as `rdtf sample` writes it (given frames kept) for FVD against the real clips;
    5. sum over ranks, then means, t-intervals and FVD.
    Generation noise is seeded by (seed, task, the batch's clips): with batch_size 1 every clip's noise is its own,
    so any number of processes gives the same report. Guidance scales default to the run's; 1 and 1 is the plain
    conditional prediction. FVD needs `i3d_weights` (a state dict file or "random"), CLIP similarity
    `clip_weights` (an open_clip checkpoint or "random"); `examples` keeps the first clips' frames for a page.
    """
    if keyframes not in KEYFRAME_COUNTS or keyframes < MIN_KEYFRAMES:
        raise ValueError(f"keyframes must be in {MIN_KEYFRAMES}..{KEYFRAME_COUNTS[-1]}, got {keyframes}")
    if any(value is not None and value < 1 for value in (clips, steps, draws, batch_size)):
        raise ValueError("clips, steps, draws and batch_size must be at least 1")
    if unknown := [task for task in tasks if task not in TASKS]:
        raise ValueError(f"unknown tasks {unknown}: choose from {', '.join(TASKS)}")
    if i3d_weights and clips is not None and clips < 2:
        raise ValueError("FVD compares two sets of clips: give at least 2 clips")
    started = time.perf_counter()
    cfg = load_run_config(run_dir)
    # 1. the user's inputs, before any sampling
    if i3d_weights:
        check_i3d_weights(i3d_weights)
    if clip_weights:
        check_clip_weights(clip_weights, cfg.text.model)
    check_data(data, keyframes, cfg.latent.resolution)
    tag = step_tag or checkpoint.latest_tag(run_dir)
    rank, world_size = _rank()
    default = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    target = torch.device(device or default)
    batch_size = batch_size or (GPU_BATCH if target.type == "cuda" else CPU_BATCH)
    scorer = _Scorer(run_dir, cfg, target, use_ema, tag)
    i3d = load_i3d(i3d_weights, I3D_RANDOM_SEED).to(target) if i3d_weights else None
    clip = ClipSimilarity(cfg.text.model, clip_weights, cfg.text.random_seed, target) if clip_weights else None
    scales = (
        cfg.diffusion.text_scale if text_scale is None else text_scale,
        cfg.diffusion.image_scale if image_scale is None else image_scale,
    )
    tasks = [task for task in TASKS if task in tasks]  # in TASKS order
    frame_tasks = [task for task in tasks if task in FRAME_TASKS]
    generated_tasks = [task for task in tasks if task in FRAME_TASKS or i3d or clip]

    losses = {task: Mean() for task in tasks}
    psnrs = {task: Mean() for task in frame_tasks}
    ssims = {task: Mean() for task in frame_tasks}
    similarities = {task: Mean() for task in generated_tasks} if clip else {}
    base = {
        name: {"psnr": {t: Mean() for t in frame_tasks}, "ssim": {t: Mean() for t in frame_tasks}} for name in BASELINES
    }
    real_features = FeatureStats(NUM_CLASSES)
    generated_features = {task: FeatureStats(NUM_CLASSES) for task in generated_tasks} if i3d else {}
    scored_frames = np.zeros(len(tasks))
    kept: dict[int, dict[str, Any]] = {}

    # 2. the held-out clips, streamed
    stream = iter_clips(data, clips, keyframes, cfg.latent.resolution, rank, world_size)
    while chunk := list(itertools.islice(stream, batch_size)):
        indices = [index for index, _ in chunk]
        batch = collate([item for _, item in chunk])
        real = clip_to_frames(batch.frames)  # back to uint8 exactly: collate only scales
        z = scorer.encode(batch, seed)
        for j, index in enumerate(indices):
            if index < examples:
                kept[index] = {"index": index, "sample_id": batch.sample_ids[j], "caption": batch.captions[j]}
                kept[index] |= {"real": real[j, :keyframes], "generated": {}}
        if i3d:
            real_features.add(i3d_features(i3d, real[:, :keyframes], i3d_size))
        # 3. the denoising loss of every task
        for n, task in enumerate(tasks):
            losses[task].add(scorer.loss(task, batch, z, seed, draws))
            scored_frames[n] += float(scored_mask(task, batch.num_valid).sum())
        # 4. generated clips against the real ones
        for task in generated_tasks:
            generated = scorer.generate(task, batch, z, generator_for(seed, task, *batch.sample_ids), steps, scales)
            given = given_mask(task, batch.num_valid).numpy()
            scored = scored_mask(task, batch.num_valid).numpy()
            output = np.where(given[:, :, None, None, None] > 0, real, generated)  # as `rdtf sample` writes it
            if task in frame_tasks:
                psnr, ssim = frame_scores(generated, real, scored)
                psnrs[task].add(psnr)
                ssims[task].add(ssim)
                noise_seed = _seed(seed, task, "noise", *batch.sample_ids)
                made = {"copy_nearest": copy_nearest(real, given), "noise": noise_frames(real, noise_seed)}
                for name, frames in made.items():
                    psnr, ssim = frame_scores(frames, real, scored)
                    base[name]["psnr"][task].add(psnr)
                    base[name]["ssim"][task].add(ssim)
            if clip:
                similarities[task].add(clip(output, batch.captions, scored))
            if i3d:
                generated_features[task].add(i3d_features(i3d, output[:, :keyframes], i3d_size))
            for j, index in enumerate(indices):
                if index in kept:
                    kept[index]["generated"][task] = output[j, :keyframes]

    # 5. every rank's sums, then the report
    means = [*losses.values(), *psnrs.values(), *ssims.values(), *similarities.values()]
    means += [m for scores in base.values() for per_task in scores.values() for m in per_task.values()]
    _all_reduce([m.sums for m in means] + [scored_frames])
    for stats in [real_features, *generated_features.values()]:
        stats.all_reduce()
    if world_size > 1 and examples:
        shares: list[Any] = [None] * world_size
        dist.all_gather_object(shares, kept)
        kept = {index: example for share in shares for index, example in share.items()}
    count = losses[tasks[0]].count if tasks else 0
    if i3d and real_features.count < 2:
        raise HeldoutMismatch(f"FVD compares two sets of clips: {data} has {real_features.count}, give at least 2")
    measures = {"loss": losses, "psnr": psnrs, "ssim": ssims, "clip_similarity": similarities}
    return EvalReport(
        run_dir=run_dir,
        checkpoint=tag,
        data=data,
        clips=count,
        tasks=tasks,
        keyframes=keyframes,
        steps=steps,
        text_scale=scales[0],
        image_scale=scales[1],
        seed=seed,
        draws=draws,
        world_size=world_size,
        loss={task: m.mean() for task, m in losses.items()},
        psnr={task: m.mean() for task, m in psnrs.items()},
        ssim={task: m.mean() for task, m in ssims.items()},
        frames_scored={task: int(round(v)) for task, v in zip(tasks, scored_frames, strict=True)},
        seconds=time.perf_counter() - started,
        baselines={
            name: {metric: {t: m.mean() for t, m in per_task.items()} for metric, per_task in scores.items()}
            for name, scores in base.items()
        },
        intervals={
            name: {task: m.interval() for task, m in per_task.items()}
            for name, per_task in measures.items()
            if per_task
        },
        clip_similarity={task: m.mean() for task, m in similarities.items()},
        fvd={task: fvd(real_features, stats) for task, stats in generated_features.items()},
        i3d_weights=i3d_weights,
        i3d_size=i3d_size,
        clip_weights=clip_weights,
        examples=[kept[index] for index in sorted(kept)],
    )


def check_training_eval(cfg: TrainConfig) -> None:
    """At the start of training with eval.every set: the weights files and the held-out set, so that a wrong one
    fails now and not at the first evaluation, hours in."""
    if cfg.eval.i3d_weights:
        check_i3d_weights(cfg.eval.i3d_weights)
    if cfg.eval.clip_weights:
        check_clip_weights(cfg.eval.clip_weights, cfg.text.model)
    check_data(cfg.eval.data, NUM_FRAMES, cfg.latent.resolution)


def training_scalars(run_dir: str, cfg: TrainConfig, step_tag: str, device: torch.device) -> dict[str, float]:
    """eval/MEASURE/TASK of the checkpoint `step_tag` (eval.* settings, one noise draw for the loss), for TensorBoard.
    Every rank scores its share of the clips. The training RNG is left as it was, so a resumed run trains the same."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        report = evaluate(
            run_dir,
            cfg.eval.data,
            clips=cfg.eval.clips,
            steps=cfg.eval.steps,
            seed=cfg.eval.seed,
            draws=1,
            device=str(device),
            step_tag=step_tag,
            tasks=cfg.eval.tasks,
            i3d_weights=cfg.eval.i3d_weights,
            i3d_size=cfg.eval.i3d_size,
            clip_weights=cfg.eval.clip_weights,
        )
    measures = ("loss", "psnr", "ssim", "clip_similarity", "fvd")
    return {f"eval/{name}/{task}": value for name in measures for task, value in getattr(report, name).items()}
