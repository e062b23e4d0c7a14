"""The training config: one tree of validated dataclasses, read from a preset (configs/tiny.yaml, small, paper) plus
dotted overrides, and saved as JSON beside every checkpoint.

Defaults follow the paper notes where they say something (diffusion, optimizer, guidance); the rest is rdtf's
choice, documented in docs/train.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rdtf.schemas.config import require
from rdtf.trainer.curriculum import LEGACY_MODES, CurriculumConfig
from rdtf.trainer.model_settings import check_model_settings
from rdtf.trainer.tasks import NUM_FRAMES, TASKS


@dataclass
class TextConfig:
    """The frozen open_clip text tower and its augmentation."""

    model: str = "ViT-B-32"  # an open_clip config name (rdtf-tiny-text is shipped for tests and the demo)
    weights: str = "random"  # a local open_clip checkpoint file, or "random" (tests and demos; warned about)
    token_mask_prob: float = 0.2  # text augmentation: share of caption tokens masked (paper: about 20%)
    random_seed: int = 0  # random weights come from this seed: every process and `rdtf sample` build the same tower

    def __post_init__(self) -> None:
        require(0.0 <= self.token_mask_prob < 1.0, "text.token_mask_prob", "must be in [0, 1)")
        require(bool(self.weights), "text.weights", "give a local checkpoint file or 'random'")


@dataclass
class LatentConfig:
    """Where diffusion happens: in a frozen VAE's latent space (the paper) or directly on small pixels (CPU demo)."""

    mode: Literal["vae", "pixel"] = "pixel"  # the paper and the small/paper presets: vae
    vae_path: str | None = None  # a local diffusers AutoencoderKL folder (config.json + weights); vae mode only
    resolution: int = 32  # frames are resized to this many pixels square (paper: 256 through a VAE of factor 8)

    def __post_init__(self) -> None:
        require(self.resolution >= 8 and self.resolution % 8 == 0, "latent.resolution", "must be a multiple of 8")
        require(
            self.mode == "pixel" or bool(self.vae_path),
            "latent.vae_path",
            "vae mode needs a local AutoencoderKL folder (or set latent.mode: pixel)",
        )


@dataclass
class DataConfig:
    """How the curated Parquet shards are streamed."""

    shuffle_buffer: int = 256  # rows held ready (decoded) to draw batches from
    decode_threads: int = 2  # background threads that decode stored frames ahead of the loop

    def __post_init__(self) -> None:
        require(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be at least 1")
        require(self.decode_threads >= 1, "data.decode_threads", "must be at least 1")


@dataclass
class DiffusionConfig:
    """Noise schedule, sampler and guidance (paper notes: Diffusion)."""

    train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    # What the model predicts: the noise (paper) or v = sqrt(a) * noise - sqrt(1 - a) * x0, which weighs errors of
    # the clean clip at high noise, where a clip's content is decided, about as much as at low noise (docs/learning.md)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # What the clean-clip estimate starts from where frames are given: "none" (the paper: the network alone), or
    # "nearest_given": the estimate gains (1 - a_t) times each frame's nearest given frame, so at high noise a frame
    # starts as a copy of its given neighbour and the network learns what changes (docs/learning.md)
    anchor: Literal["none", "nearest_given"] = "none"
    sample_steps: int = 50  # DDIM steps at sampling time
    eta: float = 1.0  # DDIM eta (paper: 1.0)
    text_scale: float = 7.5  # classifier-free guidance on the text
    image_scale: float = 7.5  # classifier-free guidance on the given frames
    text_dropout: float = 0.1  # share of training samples whose text is dropped (makes text guidance possible)
    image_dropout: float = 0.1  # share whose given frames are dropped (makes image guidance possible)

    def __post_init__(self) -> None:
        require(self.train_timesteps >= 2, "diffusion.train_timesteps", "must be at least 2")
        require(0 < self.beta_start < self.beta_end < 1, "diffusion.beta_start", "need 0 < beta_start < beta_end < 1")
        require(1 <= self.sample_steps <= self.train_timesteps, "diffusion.sample_steps", "must be in [1, train steps]")
        require(0.0 <= self.eta <= 1.0, "diffusion.eta", "must be in [0, 1]")
        for key in ("text_dropout", "image_dropout"):
            require(0.0 <= getattr(self, key) < 1.0, f"diffusion.{key}", "must be in [0, 1)")


@dataclass
class OptimConfig:
    """AdamW, warmup, clipping, accumulation and EMA (released code: AdamW 0.9/0.999, wd 1e-2, clip 1.0)."""

    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warmup of the lr over this many optimizer steps
    grad_clip: float = 1.0  # 0 turns clipping off
    micro_batch: int = 1  # clips per rank per forward pass
    grad_accum: int = 1  # micro-batches per optimizer step
    ema_decay: float | None = None  # EMA of the weights, e.g. 0.9999; None = off (ZeRO stage 0-2 only)

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", "must be positive")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", "two values in [0, 1)")
        require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        require(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
        require(self.micro_batch >= 1, "optim.micro_batch", "must be at least 1")
        require(self.grad_accum >= 1, "optim.grad_accum", "must be at least 1")
        require(self.ema_decay is None or 0 < self.ema_decay < 1, "optim.ema_decay", "must be in (0, 1) or null")


@dataclass
class EngineConfig:
    """DeepSpeed: ZeRO stage and precision."""

    zero_stage: int = 2  # 0-3
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, about 30% more time
    deepspeed_config: str | None = None  # your DeepSpeed JSON file, merged over rdtf's (offload, monitor, profiler)

    def __post_init__(self) -> None:
        require(self.zero_stage in (0, 1, 2, 3), "engine.zero_stage", "must be 0, 1, 2 or 3")


@dataclass
class RunConfig:
    """Length, seed and the intervals of logging, checkpoints and sample GIFs."""

    max_steps: int = 1000  # optimizer steps
    seed: int = 0
    loss_normalize: Literal["valid_frames", "all_frames"] = "valid_frames"  # docs/masks.md
    # The paper's dual masks (docs/masks.md); off: its ablation baseline, one task (it2v, first frame given) and
    # no loss mask (every frame, padding included, in the loss)
    dual_masks: bool = True
    log_every: int = 10  # a readable line and TensorBoard scalars every N steps
    checkpoint_every: int = 500  # and at the end
    keep_checkpoints: int = 2  # older ones are deleted
    sample_every: int = 0  # a sample GIF in TensorBoard and RUN_DIR/samples every N steps; 0 = off
    sample_prompt: str = ""  # the text of every sample GIF, so that steps compare; "" = the dataset's first caption
    export_every_checkpoint: bool = False  # also write each checkpoint as a diffusers pipeline (`rdtf export`)

    def __post_init__(self) -> None:
        require(self.max_steps >= 1, "run.max_steps", "must be at least 1")
        for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
            require(getattr(self, key) >= 1, f"run.{key}", "must be at least 1")
        require(self.sample_every >= 0, "run.sample_every", "must be >= 0")


@dataclass
class EvalConfig:
    """A small evaluation of the checkpoint just saved, logged to TensorBoard as eval/* (docs/evaluate.md)."""

    every: int = 0  # optimizer steps, a multiple of run.checkpoint_every; 0 = off
    data: str = ""  # a held-out dataset written by rdtf preprocess (clips the run does not train on)
    clips: int = 8  # the first N held-out clips
    steps: int = 10  # DDIM steps of generation
    tasks: list[str] = field(default_factory=lambda: ["it2v", "interpolate", "predict-post"])
    i3d_weights: str | None = None  # FVD when set: the I3D state dict (i3d_pretrained_400.pt) or "random"
    i3d_size: int = 224  # I3D input pixels (224: standard FVD; smaller for smoke tests only)
    clip_weights: str | None = None  # CLIP similarity when set: an open_clip checkpoint of text.model or "random"
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.every >= 0, "eval.every", "must be >= 0")
        require(not self.every or bool(self.data), "eval.data", "give a held-out dataset when eval.every is set")
        require(self.clips >= 1 and self.steps >= 1, "eval.clips", "clips and steps must be at least 1")
        require(all(t in TASKS for t in self.tasks), "eval.tasks", f"choose from {', '.join(TASKS)}")
        require(not self.i3d_weights or self.clips >= 2, "eval.clips", "FVD compares two sets: at least 2 clips")


@dataclass
class TrainConfig:
    """Everything `rdtf train` needs besides the data and the run folder."""

    model: dict[str, Any] = field(default_factory=dict)  # DFGN's constructor arguments (trainer/dfgn.py)
    text: TextConfig = field(default_factory=TextConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    run: RunConfig = field(default_factory=RunConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        require(bool(self.model), "model", "give the model's settings (use a preset: configs/tiny.yaml, small, paper)")
        check_model_settings(self.model)
        frames = self.model.get("num_frames", NUM_FRAMES)
        require(
            frames == NUM_FRAMES,
            "model.num_frames",
            f"rdtf trains {NUM_FRAMES}-frame clips (the paper's), got {frames!r}",
        )
        require(
            self.optim.ema_decay is None or self.engine.zero_stage < 3,
            "optim.ema_decay",
            "EMA needs whole weights on every rank: use engine.zero_stage 0-2",
        )
        require(
            self.curriculum.num_timesteps == self.diffusion.train_timesteps,
            "curriculum.num_timesteps",
            f"must equal diffusion.train_timesteps ({self.diffusion.train_timesteps}): the curriculum bins the "
            f"timesteps the scheduler draws; set both",
        )
        require(
            self.eval.every % self.run.checkpoint_every == 0,
            "eval.every",
            "must be a multiple of run.checkpoint_every: it scores the checkpoint just saved",
        )


def upgrade_saved(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config (RUN_DIR/config.json's "config") in today's keys: `curriculum.mode`, which set the task level
    and the sample level at once before issue 12, becomes the `curriculum.task`, `pacing` (and `adaptive_strength`)
    it meant, and `run.dual_masks` (not a key then) is on; so an older run folder still resumes (the resume compares
    whole configs), samples and exports. Other configs come back unchanged."""
    curriculum = config.get("curriculum")
    if not isinstance(curriculum, dict) or "mode" not in curriculum:
        return config
    settings = {key: value for key, value in curriculum.items() if key != "mode"}
    mode = curriculum["mode"]
    require(mode in LEGACY_MODES, "curriculum.mode", f"must be one of {', '.join(LEGACY_MODES)}")
    return config | {"curriculum": settings | LEGACY_MODES[mode], "run": {"dual_masks": True} | config.get("run", {})}
