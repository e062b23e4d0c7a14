"""`rdtf train`: DFGN trained with the dual masks, the curriculum and DeepSpeed, in one sitting.

One process by default (CPU, or one GPU); one process per GPU under the `deepspeed` launcher or `torchrun` (their
RANK / WORLD_SIZE / LOCAL_RANK environment says which). Re-running on a RUN_DIR resumes from its last checkpoint:
on CPU in fp32 with the same number of processes, the resumed run's losses equal an uninterrupted run's.

The order of `train()`: 1. the dataset, processes and device, 2. this rank's data, 3. model, text tower, codec,
noise schedule and curriculum, 4. the run folder and config (so a wrong --data or model setting writes nothing),
5. `deepspeed.initialize`, 6. resume, 7. the loop, 8. the summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from deepspeed.runtime.config import DeepSpeedConfig
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from rdtf.schemas.config import ConfigError, to_dict
from rdtf.schemas.reader import open_dataset
from rdtf.trainer import checkpoint, run_folder
from rdtf.trainer.config import TrainConfig, upgrade_saved
from rdtf.trainer.curriculum import Curriculum
from rdtf.trainer.data import Batch, ClipLoader, ParquetRows
from rdtf.trainer.dfgn import DFGN
from rdtf.trainer.diffusion import generate, predict, sample_scheduler, train_scheduler, training_target
from rdtf.trainer.evaluate import check_training_eval, training_scalars
from rdtf.trainer.export import export_pipeline
from rdtf.trainer.latents import load_codec
from rdtf.trainer.masks import condition_mask, frame_mask, masked_mse, single_task_masks, trained_tasks
from rdtf.trainer.media import clip_to_frames, write_gif
from rdtf.trainer.run_store import RunStore
from rdtf.trainer.tasks import TEXT_ON
from rdtf.trainer.text import TextEncoder

log = logging.getLogger("rdtf.train")

METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "pipeline"  # RUN_DIR/checkpoints/step-N/pipeline/ with run.export_every_checkpoint (docs/export.md)
LOGS = (METRICS_FILE, "tb", "samples")  # rank 0's files beside the checkpoints, uploaded with them to an object store


@dataclass
class TrainSummary:
    """What one `rdtf train` call did."""

    run_dir: str
    start_step: int  # 0, or the step it resumed from
    end_step: int
    seconds: float
    samples: int  # clips trained on by all processes
    data_wait: float  # share of the time the loop waited for data
    last_loss: float
    is_main: bool  # rank 0, which prints the summary
    losses: dict[str, float] = field(default_factory=dict)  # mean loss per task over this call
    generated_losses: dict[str, float] = field(default_factory=dict)  # the same on the frames to generate only

    def lines(self) -> list[str]:
        resumed = f" (resumed from step {self.start_step})" if self.start_step else ""
        rate = self.samples / self.seconds if self.seconds else 0.0
        lines = [
            f"trained steps {self.start_step} -> {self.end_step}{resumed} in {self.seconds:.1f} s: "
            f"{rate:.2f} clips/s, waiting for data {100 * self.data_wait:.1f}% of the time",
            f"last loss {self.last_loss:.4f}; mean loss per task: "
            + ", ".join(f"{task} {loss:.4f}" for task, loss in sorted(self.losses.items())),
            "mean loss on the frames each task generates (given frames excluded): "
            + ", ".join(f"{task} {loss:.4f}" for task, loss in sorted(self.generated_losses.items())),
            f"checkpoints: {self.run_dir}/{run_folder.CHECKPOINTS}/ (sample with `rdtf sample --checkpoint "
            f"{self.run_dir}`), TensorBoard: {self.run_dir}/tb, per-step log: {self.run_dir}/{METRICS_FILE}",
        ]
        return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_processes() -> tuple[int, int, torch.device]:
    """Join the launcher's process group, or make a group of one; returns (rank, world size, device)."""
    if "RANK" not in os.environ:  # not started by a launcher: a group of one on this machine
        os.environ.update(
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
            | ({} if "MASTER_PORT" in os.environ else {"MASTER_PORT": str(_free_port())})
        )
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        printed = io.StringIO()  # DeepSpeed prints its communication op's build as it loads it
        with contextlib.redirect_stdout(printed if not log.isEnabledFor(logging.INFO) else sys.stdout):
            deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        log.debug("%s", printed.getvalue().strip())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


# DeepSpeed keys that rdtf sets from its own config (dotted: a key inside a section), with the setting to use instead:
# a user's DeepSpeed JSON that sets one is refused, so the run's config.json keeps saying what the run does.
DERIVED_DEEPSPEED_KEYS = {
    "train_batch_size": "optim.micro_batch and optim.grad_accum (times the number of processes)",
    "train_micro_batch_size_per_gpu": "optim.micro_batch",
    "gradient_accumulation_steps": "optim.grad_accum",
    "gradient_clipping": "optim.grad_clip",
    "zero_optimization.stage": "engine.zero_stage",
    "bf16": "engine.precision",
    "fp16": "engine.precision",
    "amp": "engine.precision",
    "optimizer": "the optim section (rdtf builds torch's AdamW)",
    "scheduler": "optim.warmup_steps",
}
DEEPSPEED_FILE = "deepspeed_config.json"  # RUN_DIR/deepspeed_config.json: the merged JSON DeepSpeed ran with


def user_deepspeed_config(path: str | None) -> dict[str, Any]:
    """engine.deepspeed_config read and checked for keys rdtf sets itself: {} when there is none."""
    if path is None:
        return {}
    key = "config key 'engine.deepspeed_config'"
    try:
        with open(path) as f:
            user = json.load(f)
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path} ({error.strerror})") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{key}: {path} is not JSON ({error})") from error
    if not isinstance(user, dict):
        raise ConfigError(f"{key}: {path} must hold a JSON object of DeepSpeed settings")
    for dotted, setting in DERIVED_DEEPSPEED_KEYS.items():
        section, _, inner = dotted.rpartition(".")
        if inner in (user.get(section, {}) if section else user):
            raise ConfigError(f"{key}: {path} sets '{dotted}', which rdtf derives from {setting}: set that instead")
    return user


def _merge(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """`theirs` over `ours`, section by section (a nested mapping merges, anything else replaces)."""
    merged = dict(ours)
    for key, value in theirs.items():
        both = isinstance(value, dict) and isinstance(ours.get(key), dict)
        merged[key] = _merge(ours[key], value) if both else value
    return merged


def deepspeed_config(cfg: TrainConfig, bf16: bool, user: dict[str, Any] | None = None) -> dict[str, Any]:
    """DeepSpeed's JSON config from ours (ZeRO stage, precision, accumulation, clipping, warmup), with the user's own
    DeepSpeed settings merged over it (`user_deepspeed_config`), checked by DeepSpeed's own config parser."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.optim.micro_batch,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "zero_optimization": {"stage": cfg.engine.zero_stage},
        # bf16 has fp32's range: DeepSpeed's overflow check (for fp16 loss scaling) only launches ~10 kernels per
        # parameter tensor per step, which made the tiny preset host-bound on an H200 (docs/benchmarks.md, "GPU").
        "bf16": {"enabled": bf16, "check_grad_overflow": False} if bf16 else {"enabled": False},
        "zero_allow_untested_optimizer": True,  # torch's AdamW: no CPU-Adam build on CPU machines
        "zero_force_ds_cpu_optimizer": False,  # and it stays torch's AdamW under offload (engine.deepspeed_config)
        "steps_per_print": 10**9,  # rdtf logs itself
    }
    if cfg.optim.grad_clip > 0:
        config["gradient_clipping"] = cfg.optim.grad_clip
    if cfg.optim.warmup_steps > 0:
        config["scheduler"] = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": cfg.optim.lr / cfg.optim.warmup_steps,  # the first step already learns
                "warmup_max_lr": cfg.optim.lr,
                "warmup_num_steps": cfg.optim.warmup_steps,
                "warmup_type": "linear",
            },
        }
    config = _merge(config, user or {})
    try:
        DeepSpeedConfig(config)  # no process group needed; refuses unknown keys inside a section, wrong types
    except (ValueError, TypeError, AssertionError) as error:
        refusal = " ".join(str(error).split())  # pydantic's message spans lines
        path = cfg.engine.deepspeed_config
        raise ConfigError(f"config key 'engine.deepspeed_config': DeepSpeed refuses {path}: {refusal}") from error
    return config


def step_generator(*keys: int) -> torch.Generator:
    """A generator seeded from (seed, step, micro-batch, rank): every random draw of a step is reproducible after a
    resume without saving generator states."""
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


# Keys a resumed run may change: how long it runs (and so its schedule's length), how often it logs and saves, how
# fast it decodes, whether it keeps an EMA, the user's DeepSpeed JSON (whose keys that change results are refused).
# Every other key changes what the run computes (the model, text tower, latent space, noise schedule, optimizer, data
# order, curriculum), so a resume with another value is refused.
MAY_CHANGE_AT_RESUME = frozenset(
    {
        "run.max_steps",
        "run.log_every",
        "run.checkpoint_every",
        "run.keep_checkpoints",
        "run.sample_every",
        "run.sample_prompt",
        "run.export_every_checkpoint",
        "data.decode_threads",
        "engine.gradient_checkpointing",
        "engine.deepspeed_config",
        "optim.ema_decay",
        "curriculum.length",
    }
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def dataset_identity(reader: Any) -> str:
    """What names the dataset's content, wherever it lies: its data files' names and sizes (one listing, no reads)."""
    infos = reader.layout.fs.get_file_info(list(reader.sample_files))
    listing = "\n".join(f"{os.path.basename(i.path)} {i.size}" for i in infos)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def prepare_run(run: RunStore | str, cfg: TrainConfig, data: str, dataset: str, rank: int) -> dict[str, Any]:
    """Check that a resumed run keeps what changes its results, and that every rank sees the run folder; then write
    RUN_DIR/config.json. All ranks stop together on a problem, before anything trains; a refused config writes
    nothing. A collective."""
    store = RunStore.of(run)
    run_dir = store.uri
    resolved = {"config": to_dict(cfg), "dataset": dataset, "data": data}
    path = store.path(run_folder.CONFIG_FILE)
    problem, saved_exists = [None], False
    if rank == 0:
        try:
            saved_exists = store.pull(run_folder.CONFIG_FILE)
        except OSError as error:
            problem[0] = f"cannot read {run_dir}: {error}"
    if saved_exists:
        with open(path) as f:
            saved_run = json.load(f)
        saved = _flatten({"config": upgrade_saved(saved_run["config"]), "dataset": saved_run.get("dataset")})
        now = _flatten(json.loads(json.dumps({"config": resolved["config"], "dataset": dataset})))  # tuples as lists
        changed = [
            key
            for key in sorted(saved.keys() | now.keys())
            if saved.get(key) != now.get(key) and key.removeprefix("config.") not in MAY_CHANGE_AT_RESUME
        ]
        if changed:
            details = ", ".join(
                f"{key.removeprefix('config.')} (saved {saved.get(key)!r}, now {now.get(key)!r})" for key in changed
            )
            problem[0] = (
                f"{run_dir} holds a run with other settings: {details}. These change the run's results: use a new "
                f"--out folder, or the saved settings ({os.path.join(run_dir, run_folder.CONFIG_FILE)}) to resume"
            )
    dist.broadcast_object_list(problem, src=0)
    if problem[0]:
        raise ConfigError(problem[0])
    checkpoint.check_shared(store)
    if rank == 0:
        with open(path + ".tmp", "w") as f:
            json.dump(resolved, f, indent=2)
        os.replace(path + ".tmp", path)
        store.push(run_folder.CONFIG_FILE)
    dist.barrier()
    return resolved


def training_loss(
    model: torch.nn.Module,
    batch: Batch,
    task: str,
    cfg: TrainConfig,
    codec: Any,
    text_encoder: TextEncoder,
    noise_scheduler: Any,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of one micro-batch, with per-clip losses on the generated frames and timesteps for the curriculum,
    and the loss on the
    generated and the given frames apart: (generated loss, 1 if any generated frame, given loss, 1 if any given
    frame), kept on the device so that logging it costs no synchronisation.

    Symbols (paper notes): z clean latents, m_frame the loss mask, m_cond the condition mask, c = z * m_cond *
    m_frame the condition latent, eps the noise, t the timestep, y the target (eps, or v with v prediction), y_hat
    the prediction.
    """
    b = len(batch)
    # 1. z, with padded frames zeroed
    m_frame = frame_mask(batch.num_valid).to(device)
    z = codec.encode(batch.frames.to(device, dtype), generator).float() * m_frame[:, None, :, None, None]
    # 2. c: the given frames of the task; image dropout removes them for some clips (makes image guidance possible).
    # With the dual masks off: one fixed condition and a loss mask of ones (the paper's ablation baseline)
    if cfg.run.dual_masks:
        m_cond, m_loss = condition_mask(task, batch.num_valid, generator).to(device), m_frame
    else:
        m_cond, m_loss = (mask.to(device) for mask in single_task_masks(batch.num_valid))
    keep_image = (torch.rand(b, generator=generator) >= cfg.diffusion.image_dropout).float().to(device)
    c = z * (m_cond * keep_image[:, None])[:, None, :, None, None]
    # 3. text: masked tokens through the frozen tower; the task's input gate and text dropout zero it
    tokens = text_encoder.mask_tokens(text_encoder.tokenize(batch.captions), cfg.text.token_mask_prob, generator)
    keep_text = (torch.rand(b, generator=generator) >= cfg.diffusion.text_dropout).float() * float(TEXT_ON[task])
    text = text_encoder(tokens) * keep_text.to(device, dtype)[:, None, None]
    # 4. eps, t and the noisy latent
    eps = torch.randn(z.shape, generator=generator).to(device)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
    noisy = noise_scheduler.add_noise(z, eps, t)
    # 5. predict the noise (or v), with the anchor if the run has one
    y = training_target(noise_scheduler, z, eps, t)
    y_hat = predict(model, noise_scheduler, cfg.diffusion.anchor, noisy.to(dtype), t, text.to(dtype), c.to(dtype))
    # 6. the loss mask: padded frames never count (with the dual masks, the default)
    loss = masked_mse(y_hat, y, m_loss, cfg.run.loss_normalize)
    with torch.no_grad():
        # the same loss on the frames the task had to produce and on the frames it was given (whose noise the
        # condition makes computable): the first says how well the task is learned, the second hides it in `loss`
        given = m_loss * m_cond * keep_image[:, None]
        generated = m_loss - given
        # per clip, for the curriculum: the generated frames only, so a clip's score measures the clip, not the
        # mask draw (NaN for a clip with nothing to generate, which the curriculum skips)
        pairs = zip(y_hat.split(1), y.split(1), generated.split(1), strict=True)
        per_clip = torch.stack([masked_mse(p, e, m) for p, e, m in pairs])
        per_clip = torch.where(generated.any(dim=1), per_clip, torch.nan)
        parts = torch.stack(
            [masked_mse(y_hat, y, generated), generated.any().float(), masked_mse(y_hat, y, given), given.any().float()]
        )
    return loss, per_clip, t, parts


def preview(
    model: torch.nn.Module,
    cfg: TrainConfig,
    codec: Any,
    text_encoder: TextEncoder,
    caption: str,
    latent_shape: tuple[int, ...],
    device: torch.device,
    seed: int,
) -> np.ndarray:
    """A text-to-GIF sample of the current weights: (f, h, w, 3) uint8. Runs on every rank (ZeRO-3 needs them all)."""
    text = text_encoder(text_encoder.tokenize([caption]))
    condition = torch.zeros((1, *latent_shape), device=device)
    generator = torch.Generator().manual_seed(seed)
    latents = generate(model, sample_scheduler(cfg.diffusion), text, condition, cfg.diffusion, True, generator)
    return clip_to_frames(codec.decode(latents.to(device)))[0]


def preview_prompt(cfg: TrainConfig, reader: Any) -> str:
    """run.sample_prompt, or else the dataset's first caption: one text for every sample GIF of the run (and every
    rank, which all take part in the sample under ZeRO-3), so that samples of different steps compare."""
    if cfg.run.sample_prompt:
        return cfg.run.sample_prompt
    for batch in reader.iter_batches(columns=["caption"], batch_size=256):
        captions = [c for c in batch.column("caption").to_pylist() if c]
        if captions:
            return captions[0]
    return "an animated sticker"


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def check_store_supports(cfg: TrainConfig, run_dir: str) -> None:
    """run.export_every_checkpoint and eval.every read the checkpoint just saved from the run's local folder, which
    an object-store --out empties as it uploads (trainer/run_store.py): refused there, before anything starts."""
    if "://" not in run_dir or run_dir.startswith("file://"):
        return
    for key, value in (
        ("run.export_every_checkpoint", cfg.run.export_every_checkpoint),
        ("eval.every", cfg.eval.every),
    ):
        if value:
            raise ConfigError(
                f"config key '{key}' needs a run folder on a local or shared filesystem, not {run_dir}: train there, "
                f"or run `rdtf export` / `rdtf eval` on a local copy of the run"
            )


def train(
    cfg: TrainConfig, data: str, run_dir: str, on_checkpoint: Callable[[dict[str, Any]], None] | None = None
) -> TrainSummary:
    """Train (or resume) the run in `run_dir` on the dataset at `data`; see the module docstring for the order.

    `on_checkpoint`, called on every rank once a checkpoint is saved (and uploaded), gets {step, loss, checkpoint:
    its folder or URI}: how a launcher reports checkpoints without the loop knowing it (jobs/ray_train.py)."""
    # -- 1. the data and DeepSpeed JSON (wrong ones fail here, before any process group or file), processes, device --
    reader = open_dataset(data)
    if cfg.eval.every:  # and a wrong held-out set or weights file for the evaluations (eval.*)
        check_training_eval(cfg)
    user_deepspeed = user_deepspeed_config(cfg.engine.deepspeed_config)  # a wrong file fails here too
    check_store_supports(cfg, run_dir)
    rank, world_size, device = init_processes()
    bf16 = cfg.engine.precision == "bf16" or (cfg.engine.precision == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if bf16 else torch.float32
    engine_config = deepspeed_config(cfg, bf16, user_deepspeed)
    is_main = rank == 0
    seed = cfg.run.seed
    torch.manual_seed(seed)  # the same initial weights on every rank (ZeRO-3 partitions each rank's own copy)

    # -- 2. data: this rank's shards, streamed through a shuffle buffer ---------------------------------------------
    rows = ParquetRows(reader, rank, world_size, seed)
    loader = ClipLoader(rows, cfg.data, cfg.latent.resolution, seed, rank, cfg.curriculum.pacing_passes)

    # -- 3. model, frozen text tower and codec, noise schedule, curriculum ------------------------------------------
    codec = load_codec(cfg.latent, device, dtype)
    text_encoder = TextEncoder(cfg.text).to(device, dtype)
    latent_size = cfg.latent.resolution // codec.factor
    sizes = {"in_channels": codec.channels, "sample_size": latent_size, "encoder_hid_dim": text_encoder.width}
    model = DFGN(**(cfg.model | sizes))
    if cfg.engine.gradient_checkpointing:
        model.enable_gradient_checkpointing()

    torch.manual_seed(seed + rank)  # from here on (dropout, if any) each rank draws its own
    noise_scheduler = train_scheduler(cfg.diffusion)
    curriculum = Curriculum(cfg.curriculum, seed, trained_tasks(cfg.run.dual_masks))
    curriculum.bind(rows.static_difficulty())  # this rank's share only: its rows' scores live in arrays of its size

    # -- 4. the run folder and its config: written once the data and the model were accepted ---------------------
    store = RunStore.open(run_dir, rank)  # an object-store --out: a local staging folder (trainer/run_store.py)
    prepare_run(store, cfg, data, dataset_identity(reader), rank)
    if is_main:  # the merged DeepSpeed JSON, beside the run's config
        with open(store.path(DEEPSPEED_FILE), "w") as f:
            json.dump(engine_config, f, indent=2)
        store.push(DEEPSPEED_FILE)

    # -- 5. DeepSpeed: ZeRO, precision, accumulation, clipping, warmup ----------------------------------------------
    optim = cfg.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
    )
    if not log.isEnabledFor(logging.INFO):  # DeepSpeed's notices (its logger is its own) only at INFO, e.g. -v
        deepspeed.utils.logger.setLevel(logging.ERROR)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=engine_config)

    # -- 6. resume: weights, optimizer and lr from DeepSpeed; data position, curriculum, RNG and EMA from our state --
    step = 0
    state = checkpoint.load(engine, store)
    if state is not None:
        step = state["step"]
        loader.load_state_dict(state["data"])
        curriculum.load_state_dict(state["curriculum"])
        torch.set_rng_state(state["torch_rng"])
        _truncate_metrics(store, step, is_main)
    ema = _ema(cfg, engine, store.local, step if state is not None else None, device)
    start_step = step

    # -- 7. the loop ---------------------------------------------------------------------------------------------------
    tb = _tensorboard(store.local, start_step) if is_main else None
    bar = tqdm(total=cfg.run.max_steps, initial=step, unit="step", disable=not (is_main and sys.stderr.isatty()))
    latent_shape = (codec.channels, 8, latent_size, latent_size)
    prompt = preview_prompt(cfg, reader) if cfg.run.sample_every else ""
    started = time.perf_counter()
    window_start, window_wait, window_clips, drawn = started, 0.0, 0, []
    total_wait, total_clips, task_losses, last_loss = 0.0, 0, {}, float("nan")
    generated_losses: dict[str, list[float]] = {}  # task -> loss on the frames it had to produce, per step
    engine.train()
    while step < cfg.run.max_steps:
        # 7a. the task of this step: the same on every rank
        task = curriculum.task_for_step(step)
        ids: list[str] = []
        # loss, then the generated- and given-frame losses as (sum, count) pairs: one all_reduce for all of them
        step_stats = torch.zeros(5, device=device)
        # 7b. micro-batches: forward, masked loss, backward; DeepSpeed steps the optimizer at the accumulation boundary
        for micro in range(cfg.optim.grad_accum):
            waited = time.perf_counter()
            batch = loader.next_batch(cfg.optim.micro_batch, step, curriculum.sample_weights)
            window_wait += time.perf_counter() - waited
            generator = step_generator(seed, step, micro, rank)
            loss, per_clip, timesteps, parts = training_loss(
                engine, batch, task, cfg, codec, text_encoder, noise_scheduler, generator, device, dtype
            )
            engine.backward(loss)
            engine.step()
            curriculum.observe_sample_losses(batch.rows, per_clip.cpu().numpy(), task, timesteps.cpu().numpy())
            step_stats[0] += loss.detach() / cfg.optim.grad_accum
            step_stats[1:] += parts  # a part without frames adds (0, 0)
            ids += batch.sample_ids
            window_clips += len(batch) * world_size
            drawn += batch.static_difficulty.tolist()
        step += 1
        if ema is not None:
            ema.step(engine.module.parameters())
        # 7c. the curriculum sees the loss averaged over ranks, so every rank keeps the same task weights
        dist.all_reduce(step_stats)
        stats = step_stats.tolist()
        last_loss = stats[0] / world_size
        loss_generated = stats[1] / stats[2] if stats[2] else None
        loss_given = stats[3] / stats[4] if stats[4] else None
        curriculum.observe_task_loss(task, last_loss)
        curriculum.sync()
        task_losses.setdefault(task, []).append(last_loss)
        if loss_generated is not None:
            generated_losses.setdefault(task, []).append(loss_generated)
        bar.update(1)
        # 7d. logging: a line in metrics.jsonl every step; scalars and a readable line every log_every steps
        if is_main:
            record = {"step": step, "task": task, "loss": last_loss, "loss_generated": loss_generated}
            _append_metrics(store.local, record | {"loss_given": loss_given, "sample_ids": ids})
        if step % cfg.run.log_every == 0 or step == cfg.run.max_steps:
            elapsed = time.perf_counter() - window_start
            scalars = {
                "loss": last_loss,
                f"loss/{task}": last_loss,
                **({f"loss_generated/{task}": loss_generated} if loss_generated is not None else {}),
                **({f"loss_given/{task}": loss_given} if loss_given is not None else {}),
                "lr": engine.get_lr()[0],
                "clips_per_s": window_clips / elapsed,
                "data_wait_fraction": window_wait / elapsed,
                "memory_gib": _memory_gib(device),
            } | curriculum.scalars(step - 1)  # the state of the step just trained
            if tb is not None:
                for name, value in scalars.items():
                    tb.add_scalar(name, value, step)
                tb.add_text("task", task, step)
                tb.add_histogram("data/static_difficulty_drawn", np.array(drawn), step)
                bar.write(
                    f"step {step}/{cfg.run.max_steps} task {task} loss {last_loss:.4f} lr {scalars['lr']:.2e} "
                    f"{scalars['clips_per_s']:.2f} clips/s data-wait {100 * scalars['data_wait_fraction']:.0f}% "
                    f"mem {scalars['memory_gib']:.1f} GiB"
                )
                sys.stdout.flush()  # readable as it happens when stdout is a file
            total_wait += window_wait
            total_clips += window_clips
            window_start, window_wait, window_clips, drawn = time.perf_counter(), 0.0, 0, []
        # 7e. a sample GIF of the current weights
        if cfg.run.sample_every and step % cfg.run.sample_every == 0:
            frames = preview(engine.module, cfg, codec, text_encoder, prompt, latent_shape, device, seed)
            if is_main:
                path = store.path("samples", f"{run_folder.tag(step)}.gif")
                write_gif(frames, path)
                tb.add_images("sample/t2v", frames, step, dataformats="NHWC")
        # 7f. checkpoints: every rank saves its part; rank 0 prunes old ones
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.max_steps:
            own_state = {
                "step": step,
                "data": loader.state_dict(),
                "curriculum": curriculum.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            folder = checkpoint.save(engine, store, step, own_state, ema)
            if is_main:
                checkpoint.prune(store, cfg.run.keep_checkpoints)
                if cfg.run.export_every_checkpoint:  # a diffusers pipeline folder beside the checkpoint's weights
                    export_pipeline(store.local, os.path.join(folder, EXPORT_DIR), run_folder.tag(step))
                tb.flush()
                _upload_logs(store)
            dist.barrier()
            if on_checkpoint is not None:
                tag_uri = f"{run_dir.rstrip('/')}/{run_folder.CHECKPOINTS}/{run_folder.tag(step)}"
                on_checkpoint({"step": step, "loss": last_loss, "checkpoint": tag_uri})
        # 7g. a small evaluation of the checkpoint just saved, on held-out clips (eval.every: a multiple of the above)
        if cfg.eval.every and step % cfg.eval.every == 0:
            scalars = training_scalars(store.local, cfg, run_folder.tag(step), device)
            if tb is not None:
                for name, value in scalars.items():
                    tb.add_scalar(name, value, step)

    # -- 8. teardown and the summary -----------------------------------------------------------------------------------
    bar.close()
    loader.close()
    if tb is not None:
        tb.close()
        _upload_logs(store)
    store.close()
    seconds = time.perf_counter() - started
    total_clips += window_clips
    total_wait += window_wait
    return TrainSummary(
        run_dir=run_dir,
        start_step=start_step,
        end_step=step,
        seconds=seconds,
        samples=total_clips,
        data_wait=total_wait / seconds if seconds else 0.0,
        last_loss=last_loss,
        is_main=is_main,
        losses={task: float(np.mean(values)) for task, values in task_losses.items()},
        generated_losses={task: float(np.mean(values)) for task, values in generated_losses.items()},
    )


def _ema(
    cfg: TrainConfig, engine: Any, run_dir: str, resumed_step: int | None, device: torch.device
) -> EMAModel | None:
    """The EMA of the weights when optim.ema_decay is set; shadow weights in fp32 (a bf16 copy would not move at
    decay 0.9999). On resume, the checkpoint's EMA at the configured decay; a checkpoint without one (EMA turned on
    at resume) starts it from the restored weights, and says so."""
    if cfg.optim.ema_decay is None:
        return None
    if resumed_step is not None:
        folder = os.path.join(run_dir, run_folder.CHECKPOINTS, run_folder.tag(resumed_step), checkpoint.EMA_DIR)
        if os.path.isdir(folder):
            ema = EMAModel.from_pretrained(folder, model_cls=DFGN)
            ema.decay = cfg.optim.ema_decay
            ema.to(device)
            return ema
        log.warning("EMA turned on at resume: it starts from the weights of step %d", resumed_step)
    shadow = [p.detach().float().clone() for p in engine.module.parameters()]
    return EMAModel(shadow, decay=cfg.optim.ema_decay, model_cls=DFGN, model_config=engine.module.config)


def _tensorboard(run_dir: str, start_step: int):
    """The run's TensorBoard writer. On resume, `purge_step` tells TensorBoard to drop what the earlier process
    logged after its checkpoint (those steps are redone), so each step shows once."""
    from torch.utils.tensorboard import SummaryWriter  # imported here: only rank 0 writes

    return SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_step + 1 if start_step else None)


def _upload_logs(store: RunStore) -> None:
    """Copy rank 0's logs to an object-store run (a no-op for a local one); sample GIFs are not kept here after."""
    for name in LOGS:
        store.push(name, drop_local=name == "samples")


def _append_metrics(run_dir: str, record: dict[str, Any]) -> None:
    with open(os.path.join(run_dir, METRICS_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(store: RunStore, step: int, is_main: bool) -> None:
    """A resumed run re-does the steps after its checkpoint: drop their lines so each step is logged once."""
    path = store.path(METRICS_FILE)
    if not is_main or not store.pull(METRICS_FILE):
        return
    with open(path) as f:
        kept = [line for line in f if json.loads(line)["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
