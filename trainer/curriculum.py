"""Difficulty-adaptive curriculum learning (DCL): which task each optimizer step trains, and how likely each buffered
sample is to be drawn. See ../docs/curriculum.md; tested by tests/trainer/test_curriculum.py.

Task level as the paper's released code defines it (a static step schedule plus a PID signal on the training loss),
with its ranking bug fixed. Sample level as rdtf defines it (the pipeline's static entropy difficulty, moved by an
adaptive score from the loss of the sample and of its peers, paced easy to difficult by a threshold; the loader orders
each epoch by these weights without dropping a row, trainer/pacing.py).

Symbols (paper notes; docs/curriculum.md). Task level: t = optimizer step, T = `length`, tau = task, s_tau(t) = static
weight, L_t = training loss, P_t = Kp*L_t + Ki*mean(L over the last <= W steps) + Kd*(L_t - L_(t-1)) with W = `window`,
r = the fraction of the last <= W PID values above P_t, l = level, a_tau(l) = adaptive weight,
w_tau = s_tau(t) + a_tau(l), tau ~ Categorical(w / sum w). Sample level: s_i = static difficulty, z = loss normalised
within its (task, timestep range), A_b = the decayed mean z of static-difficulty bin b, a_i = sample i's decayed mean z
shrunk towards A_b, d_i = clip(s_i + strength*tanh(a_i), 0, 1),
p(t) = pacing fraction, lambda(t) = the p(t)-quantile of static difficulty.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rdtf.schemas.config import require
from rdtf.trainer.tasks import TASKS

# Task groups of the paper notes' task table.
TASK_GROUP = {
    "t2v": "generation",
    "i2v": "generation",
    "it2v": "generation",
    "interpolate": "interpolation",
    "predict-pre": "prediction",
    "predict-post": "prediction",
}
# s_tau at steps 0, T/2 and T, linear in between, constant after T (released code `task_weight`): from easy tasks
# (many frames given) to hard ones (at most one frame given).
STATIC_SCHEDULE = {"generation": (0.1, 0.5, 0.9), "interpolation": (0.9, 0.5, 0.1), "prediction": (0.7, 0.5, 0.3)}
# a_tau for levels 0..3 (released code `P_ratio_map` 0..3; its level 4 cannot be reached there either). Level 0 is a
# high PID value (loss high for the recent past): weight moves to the easy task, interpolation.
LEVEL_WEIGHTS = {
    "generation": (0.1, 0.3, 0.5, 0.7),
    "interpolation": (0.9, 0.7, 0.5, 0.3),
    "prediction": (0.5, 0.5, 0.5, 0.5),
}
NUM_LEVELS = 4
MIN_HISTORY = 10  # released code: no ranking before 10 PID values; reused as the warm-up of each loss distribution
DIFFICULTY_BINS = 100  # histogram resolution of difficulty in [0, 1] for quantiles (pacing threshold, logging)
Z_CLIP = 3.0  # a normalised loss counts at most 3 standard deviations, so one outlier step cannot decide a sample
SCORE_BINS = 20  # static-difficulty bins whose mean z places rows not trained yet (about 3K rows each at 62.5K)


TaskCurriculum = Literal["none", "linear", "adaptive"]
TASK_CURRICULA: tuple[str, ...] = ("none", "linear", "adaptive")
# What the former `curriculum.mode` (one key for both levels, before issue 12) set, so that a run folder saved with it
# still resumes and compares (trainer/config.py `upgrade_saved`): old `linear` paced by static difficulty alone.
LEGACY_MODES: dict[str, dict[str, Any]] = {
    "none": {"task": "none", "pacing": False},
    "linear": {"task": "linear", "pacing": True, "adaptive_strength": 0.0},
    "adaptive": {"task": "adaptive", "pacing": True},
}


@dataclass
class CurriculumConfig:
    """The curriculum's settings: `task` is the paper's task-level ablation (none 459.21 / linear 451.65 / adaptive
    442.18 FVD), `pacing` rdtf's own sample level, a separate switch (docs/curriculum.md)."""

    task: TaskCurriculum = "adaptive"  # the paper's: none uniform tasks; linear the static schedule; adaptive + PID
    pacing: bool = True  # rdtf's sample-level pacing, easy rows first moved by their loss; off: every row weight 1
    length: int = 50_000  # T, optimizer steps over which the static task schedule runs (paper: 50K steps)
    kp: float = 5.0  # PID proportional gain on L_t (released code)
    ki: float = 3.0  # PID integral gain on the mean of the recent losses (released code)
    kd: float = 1.3  # PID derivative gain on L_t - L_(t-1) (released code)
    window: int = 1000  # recent losses in the PID mean, recent PID values in the ranking (released code: 1000)
    pacing_start: float = 0.3  # fraction of samples, easiest first by static difficulty, admitted at step 0
    pacing_end: float = 0.8  # fraction of `length` at which every sample is admitted (pacing rises linearly)
    pacing_softness: float = 0.05  # difficulty above the threshold that divides a sample's weight by e (>= 0.01)
    adaptive_strength: float = 0.15  # most a sample's loss can move its difficulty (about the real stickers' IQR/1.3)
    score_half_life: int = 10_000  # optimizer steps after which a sample's loss evidence counts half
    score_prior: float = 1.0  # pseudo-observations at z = 0 that pull a sparsely seen sample toward its static score
    timestep_bins: int = 4  # equal ranges of diffusion timesteps, each with its own running loss distribution
    num_timesteps: int = 1000  # diffusion training timesteps (paper: 1000 steps)
    loss_stats_window: int = 1000  # losses per (task, timestep range) that its running mean and variance remember
    sync_every: int = 100  # sync() calls between merges of loss distributions and bin scores across ranks
    pacing_passes: int = 4  # passes over each epoch: a row turned away waits for the next; the last takes all left

    def __post_init__(self) -> None:
        require(self.task in TASK_CURRICULA, "curriculum.task", f"must be one of {', '.join(TASK_CURRICULA)}")
        require(self.length > 0, "curriculum.length", "must be a positive number of steps")
        for key in ("kp", "ki", "kd"):
            require(getattr(self, key) >= 0, f"curriculum.{key}", "must be non-negative")
        require(self.window >= MIN_HISTORY, "curriculum.window", f"must be at least {MIN_HISTORY}")
        require(0 < self.pacing_start <= 1, "curriculum.pacing_start", "must be in (0, 1]")
        require(self.pacing_end > 0, "curriculum.pacing_end", "must be positive")
        # exp(-1 / 0.01) is still far above float64's smallest number: weights are never all 0.
        require(self.pacing_softness >= 0.01, "curriculum.pacing_softness", "must be at least 0.01")
        require(0 <= self.adaptive_strength <= 1, "curriculum.adaptive_strength", "must be in [0, 1]")
        require(self.score_half_life > 0, "curriculum.score_half_life", "must be a positive number of steps")
        require(self.score_prior > 0, "curriculum.score_prior", "must be positive")
        require(self.timestep_bins >= 1, "curriculum.timestep_bins", "must be at least 1")
        require(self.num_timesteps >= self.timestep_bins, "curriculum.num_timesteps", "must be at least timestep_bins")
        require(self.loss_stats_window >= 1, "curriculum.loss_stats_window", "must be at least 1")
        require(self.sync_every >= 1, "curriculum.sync_every", "must be at least 1")
        require(self.pacing_passes >= 1, "curriculum.pacing_passes", "must be at least 1")


def _process_group() -> Any:
    """torch.distributed when this process is one rank of several, else None. Imported here, not at the top: the
    config half of this module stays free of torch, for `rdtf train`'s and `rdtf launch`'s early checks."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _histogram_quantile(histogram: np.ndarray, q: float) -> float:
    """The q-quantile of values in [0, 1] binned in `histogram`, linear within a bin."""
    cumulative = np.cumsum(histogram)
    target = q * cumulative[-1]
    index = min(int(np.searchsorted(cumulative, target, side="left")), len(histogram) - 1)
    below = cumulative[index - 1] if index else 0.0
    within = (target - below) / histogram[index] if histogram[index] > 0 else 1.0
    return (index + within) / len(histogram)


def _difficulty_bins(values: np.ndarray) -> np.ndarray:
    return np.clip((values * DIFFICULTY_BINS).astype(np.int64), 0, DIFFICULTY_BINS - 1)


class TaskSampler:
    """Task level: w_tau = s_tau(t) + a_tau(l), tau ~ Categorical(w / sum w) over the trained `tasks`.

    The draw is a function of (seed, step) and the PID state only, so every rank that fed the same (rank-averaged)
    losses draws the same task without communicating. `tasks` is every task of the dual masks, or the one task
    trained with them off (trainer/masks.py `trained_tasks`).
    """

    def __init__(self, config: CurriculumConfig, seed: int, tasks: tuple[str, ...] = TASKS) -> None:
        unknown = [task for task in tasks if task not in TASKS]
        if not tasks or unknown:
            raise ValueError(f"tasks {list(tasks)} must be a non-empty subset of {', '.join(TASKS)}")
        self.config = config
        self.seed = seed
        self.tasks = tuple(tasks)
        self._losses: deque[float] = deque(maxlen=config.window)
        self._pids: deque[float] = deque(maxlen=config.window)
        self._rank: float | None = None
        self._level: int | None = None
        self._last_loss: dict[str, float] = {}

    def static_weights(self, step: int) -> dict[str, float]:
        """s_tau(t): (v0, v1, v2) at (0, T/2, T), linear in between, v2 after T."""
        half = self.config.length / 2
        ratio = min(step, 2 * half) / half  # 0..2
        weights = {}
        for task in self.tasks:
            v0, v1, v2 = STATIC_SCHEDULE[TASK_GROUP[task]]
            weights[task] = v0 + (v1 - v0) * ratio if ratio <= 1 else v1 + (v2 - v1) * (ratio - 1)
        return weights

    def adaptive_weights(self) -> dict[str, float]:
        """a_tau(l); zero until MIN_HISTORY PID values exist (no rank, no evidence: the static schedule alone)."""
        if self._level is None:
            return dict.fromkeys(self.tasks, 0.0)
        return {task: LEVEL_WEIGHTS[TASK_GROUP[task]][self._level] for task in self.tasks}

    def weights(self, step: int) -> dict[str, float]:
        """w / sum w over the trained tasks for `config.task`: uniform, static only, or static + adaptive."""
        if self.config.task == "none":
            return dict.fromkeys(self.tasks, 1.0 / len(self.tasks))
        raw = self.static_weights(step)
        if self.config.task == "adaptive":
            adaptive = self.adaptive_weights()
            raw = {task: value + adaptive[task] for task, value in raw.items()}
        total = sum(raw.values())
        return {task: value / total for task, value in raw.items()}

    def draw(self, step: int, weights: dict[str, float]) -> str:
        """tau ~ Categorical(weights), from a generator seeded by (seed, step) alone."""
        generator = np.random.default_rng([self.seed, step])
        return str(generator.choice(self.tasks, p=np.array([weights[task] for task in self.tasks])))

    def observe(self, task: str, loss: float) -> None:
        """The PID update, released code order, ranking fixed.

        1. Append L_t to the recent losses (<= W).  2. P_t = Kp*L_t + Ki*mean(recent L) + Kd*(L_t - L_(t-1)).
        3. r = fraction of the previous <= W PID values above P_t (ties count half), once MIN_HISTORY exist.
        4. l = min(floor(4r), 3): the four levels as quartiles of the recent PID values.  5. Append P_t.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
        if not math.isfinite(loss):
            return  # a skipped (overflowed) step says nothing about difficulty; every rank skips it alike
        self._last_loss[task] = loss
        if self.config.task != "adaptive":
            return
        previous = self._losses[-1] if self._losses else loss
        self._losses.append(loss)
        c = self.config
        pid = c.kp * loss + c.ki * sum(self._losses) / len(self._losses) + c.kd * (loss - previous)
        if len(self._pids) >= MIN_HISTORY:
            history = np.fromiter(self._pids, dtype=np.float64, count=len(self._pids))
            self._rank = float(((history > pid).sum() + 0.5 * (history == pid).sum()) / len(history))
            self._level = min(int(NUM_LEVELS * self._rank), NUM_LEVELS - 1)
        self._pids.append(float(pid))

    def consensus_key(self) -> tuple[int, float | None, int | None]:
        """What every rank must agree on for identical draws; compared across ranks at each sync."""
        return len(self._pids), (self._pids[-1] if self._pids else None), self._level

    def scalars(self) -> dict[str, float]:
        values = {f"curriculum/loss/{task}": loss for task, loss in self._last_loss.items()}
        if self._pids:
            values["curriculum/pid"] = self._pids[-1]
        if self._level is not None:
            values["curriculum/pid_rank"] = float(self._rank)
            values["curriculum/pid_level"] = float(self._level)
        return values

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self._losses),
            "pids": list(self._pids),
            "rank": self._rank,
            "level": self._level,
            "last_loss": dict(self._last_loss),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._losses = deque(state["losses"], maxlen=self.config.window)
        self._pids = deque(state["pids"], maxlen=self.config.window)
        self._rank, self._level = state["rank"], state["level"]
        self._last_loss = dict(state["last_loss"])


class SampleScorer:
    """Sample level for this rank's share: how hard each row is now, and the admission weight the pacing gives it.

    Rows are compact ids 0..n-1 (the loader's index of the row in this rank's files), never sample-id strings; every
    per-row number lives in a numpy array of the share's size, bound once by `bind`. Memory: 17 bytes per row (static
    difficulty, decayed z sum and weight as float32, the step they refer to as int32, the bin as uint8), about 1 MB
    for a 62.5K-row share (1M rows on 16 ranks); a checkpoint holds the 12 bytes per row learned from the loss. No
    rank holds another rank's rows: the ranks exchange only the running loss distributions and the bin scores.

    The adaptive score a_i = (S_i*g + prior*A_b) / (W_i*g + prior) shrinks a row's own evidence towards the mean z of
    its static-difficulty bin, A_b: what the loss says about rows like it. So a row never trained yet (about every row
    in the first epoch) is already placed by the loss of its peers, and its own loss takes over as it accumulates.
    """

    def __init__(self, config: CurriculumConfig) -> None:
        self.config = config
        self._decay_per_step = 0.5 ** (1.0 / config.score_half_life)
        self._static = np.zeros(0, dtype=np.float32)
        self._bins = np.zeros(0, dtype=np.uint8)  # static-difficulty bin of each row (derived, not saved)
        self._share_histogram = np.zeros(DIFFICULTY_BINS)  # static difficulty of the whole share: the pacing quantile
        # Per row: decayed sums of z (S_i) and of weights (W_i), and the step they refer to.
        self._sum = np.zeros(0, dtype=np.float32)
        self._weight = np.zeros(0, dtype=np.float32)
        self._updated = np.zeros(0, dtype=np.int32)
        # Per static-difficulty bin: decayed sums of z and of weights at step `_bin_step`, and what this rank added
        # since the last sync (to send to the other ranks) at `_pending_step`.
        self._bin_sum, self._bin_weight, self._bin_step = np.zeros(SCORE_BINS), np.zeros(SCORE_BINS), 0
        self._pending_sum, self._pending_weight, self._pending_step = np.zeros(SCORE_BINS), np.zeros(SCORE_BINS), 0
        # Running loss distribution per (task, timestep range): mean, variance, count.
        shape = (len(TASKS), config.timestep_bins)
        self._loss_mean = np.zeros(shape)
        self._loss_var = np.zeros(shape)
        self._loss_count = np.zeros(shape, dtype=np.int64)
        self._drawn_histogram = np.zeros(DIFFICULTY_BINS)  # difficulty of the rows trained, decayed (for logging)

    def bind(self, static_difficulty: np.ndarray) -> None:
        """The share's static difficulties, by row id; clears every score (call before `load_state_dict`)."""
        static = np.clip(np.asarray(static_difficulty, dtype=np.float32), 0.0, 1.0)
        if static.ndim != 1 or not len(static):
            raise ValueError(f"a rank's share needs at least one row, got static difficulties of shape {static.shape}")
        self._static = static
        self._bins = np.minimum((static * SCORE_BINS).astype(np.uint8), SCORE_BINS - 1)
        self._share_histogram = np.bincount(_difficulty_bins(static), minlength=DIFFICULTY_BINS).astype(np.float64)
        self._sum = np.zeros(len(static), dtype=np.float32)
        self._weight = np.zeros(len(static), dtype=np.float32)
        self._updated = np.zeros(len(static), dtype=np.int32)

    @property
    def num_rows(self) -> int:
        return len(self._static)

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        if not self.num_rows:
            raise RuntimeError("the curriculum has no rows yet: call bind(static_difficulty) with this rank's share")
        return np.asarray(rows, dtype=np.int64).reshape(-1)

    # Pacing and difficulty.
    def pacing_fraction(self, step: int) -> float:
        """p(t): the fraction of samples admitted, linear from `pacing_start` to 1 at `pacing_end * length`."""
        if not self.config.pacing:
            return 1.0
        c = self.config
        return min(1.0, c.pacing_start + (1.0 - c.pacing_start) * step / (c.pacing_end * c.length))

    def pacing_threshold(self, step: int) -> float:
        """lambda(t): the p(t)-quantile of the share's static difficulty; inf once all are admitted."""
        fraction = self.pacing_fraction(step)
        if fraction >= 1.0 or not self._share_histogram.any():
            return math.inf
        return _histogram_quantile(self._share_histogram, fraction)

    def bin_scores(self, step: int) -> np.ndarray:
        """A_b per static-difficulty bin: the decayed mean z of the bin's losses, shrunk towards 0 by the prior."""
        decay = self._decay_per_step ** max(step - self._bin_step, 0)
        return self._bin_sum * decay / (self._bin_weight * decay + self.config.score_prior)

    def adaptive_scores(self, rows: np.ndarray, step: int) -> np.ndarray:
        """a_i = (S_i*g + prior*A_b) / (W_i*g + prior), g the decay since row i's last update."""
        rows = self._rows(rows)
        decay = self._decay_per_step ** np.maximum(step - self._updated[rows].astype(np.int64), 0)
        prior = self.config.score_prior
        own_sum, own_weight = self._sum[rows] * decay, self._weight[rows] * decay
        return (own_sum + prior * self.bin_scores(step)[self._bins[rows]]) / (own_weight + prior)

    def difficulty(self, rows: np.ndarray, step: int) -> np.ndarray:
        """d_i: the static difficulty, moved by the adaptive score when pacing is on."""
        static = self._static[self._rows(rows)].astype(np.float64)
        if not self.config.pacing:
            return static
        shift = self.config.adaptive_strength * np.tanh(self.adaptive_scores(rows, step))
        return np.clip(static + shift, 0.0, 1.0)

    def weights(self, rows: np.ndarray, step: int) -> np.ndarray:
        """Admission probabilities: 1 up to lambda(t), exp(-(d_i - lambda(t)) / softness) above it.

        Never 0 (a hard row is only deferred: the loader's last pass of an epoch takes it anyway) and at most 1.
        O(len(rows)), no side effects: a loader may weigh rows it then leaves undecided.
        """
        difficulty = self.difficulty(rows, step)
        threshold = self.pacing_threshold(step)
        if math.isinf(threshold):
            return np.ones(len(difficulty))
        return np.exp(-np.maximum(difficulty - threshold, 0.0) / self.config.pacing_softness)

    # Adaptive scores from the loss.
    def observe(self, rows: np.ndarray, losses: np.ndarray, task: str, timesteps: np.ndarray, step: int) -> None:
        """Rescore rows from their loss (on the frames the task generated) at optimizer step `step`.

        1. Group each loss by (task, timestep range).  2. z = (loss - mean) / std of that group's running
        distribution, clipped to +-Z_CLIP, once the group holds MIN_HISTORY losses.  3. Add z to the row's decayed
        sums (S_i, W_i) and to its static-difficulty bin's.  4. Update the group's running mean and variance (exact
        until `loss_stats_window` losses, then exponential). With pacing off only the log histogram moves.
        """
        rows = self._rows(rows)
        difficulty = self.difficulty(rows, step)
        self._drawn_histogram *= (1.0 - 1.0 / self.config.window) ** len(rows)
        self._drawn_histogram += np.bincount(_difficulty_bins(difficulty), minlength=DIFFICULTY_BINS)
        if not self.config.pacing:
            return
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        timesteps = np.asarray(timesteps).reshape(-1)
        if not len(rows) == len(losses) == len(timesteps):
            raise ValueError(f"{len(rows)} rows, {len(losses)} losses, {len(timesteps)} timesteps")
        c = self.config
        time_bins = np.clip(timesteps.astype(np.int64) * c.timestep_bins // c.num_timesteps, 0, c.timestep_bins - 1)
        task_index = TASKS.index(task)
        for row, loss, time_bin in zip(rows, losses, time_bins, strict=True):
            if not math.isfinite(loss):
                continue  # e.g. a clip with no frame to generate
            group = (task_index, int(time_bin))
            mean, count = self._loss_mean[group], int(self._loss_count[group])
            if count >= MIN_HISTORY:
                z = float(np.clip((loss - mean) / (math.sqrt(self._loss_var[group]) + 1e-8), -Z_CLIP, Z_CLIP))
                self._add_row(int(row), z, step)
                self._add_bin(int(self._bins[row]), z, step)
            alpha = max(1.0 / (count + 1), 1.0 / c.loss_stats_window)
            delta = loss - mean
            self._loss_mean[group] = mean + alpha * delta
            self._loss_var[group] = (1.0 - alpha) * (self._loss_var[group] + alpha * delta**2)
            self._loss_count[group] = count + 1

    def _add_row(self, row: int, z: float, step: int) -> None:
        decay = self._decay_per_step ** max(step - int(self._updated[row]), 0)
        self._sum[row] = self._sum[row] * decay + z
        self._weight[row] = self._weight[row] * decay + 1.0
        self._updated[row] = max(step, int(self._updated[row]))

    def _add_bin(self, bin_index: int, z: float, step: int) -> None:
        """Add z to the bin's sums and to the pending ones; both are brought to the later step first."""
        for sums, weights, attribute in (
            (self._bin_sum, self._bin_weight, "_bin_step"),
            (self._pending_sum, self._pending_weight, "_pending_step"),
        ):
            reference = getattr(self, attribute)
            if step > reference:
                factor = self._decay_per_step ** (step - reference)
                sums *= factor
                weights *= factor
                setattr(self, attribute, step)
            factor = self._decay_per_step ** max(getattr(self, attribute) - step, 0)
            sums[bin_index] += z * factor
            weights[bin_index] += factor

    # Ranks, logging, checkpoints.
    def sync_payload(self) -> dict[str, Any]:
        remembered = np.minimum(self._loss_count, self.config.loss_stats_window)
        return {
            "bins": (self._pending_sum, self._pending_weight, self._pending_step),
            "loss_stats": (self._loss_mean, self._loss_var, remembered),
        }

    def merge(self, payloads: list[dict[str, Any]], own: int) -> None:
        """Add the other ranks' bin evidence since the last sync, and pool the running loss distributions (each rank
        weighted by the losses it remembers) so that every rank normalises losses alike. Fixed size: 2 x 20 bins
        and 2 x 6 x `timestep_bins` numbers per rank, whatever the dataset."""
        for rank, payload in enumerate(payloads):
            sums, weights, step = payload["bins"]
            if rank == own or not weights.any():
                continue
            if step > self._bin_step:
                factor = self._decay_per_step ** (step - self._bin_step)
                self._bin_sum *= factor
                self._bin_weight *= factor
                self._bin_step = step
            factor = self._decay_per_step ** (self._bin_step - step)
            self._bin_sum += sums * factor
            self._bin_weight += weights * factor
        self._pending_sum, self._pending_weight = np.zeros(SCORE_BINS), np.zeros(SCORE_BINS)
        means, variances, counts = (np.stack(parts) for parts in zip(*(p["loss_stats"] for p in payloads), strict=True))
        total = counts.sum(axis=0)
        seen = total > 0
        share = counts / np.maximum(total, 1)
        mean = (share * means).sum(axis=0)
        var = (share * (variances + (means - mean) ** 2)).sum(axis=0)
        self._loss_mean[seen], self._loss_var[seen] = mean[seen], var[seen]

    def scalars(self, step: int) -> dict[str, float]:
        values = {
            "curriculum/pacing_fraction": self.pacing_fraction(step),
            "curriculum/pacing_threshold": min(self.pacing_threshold(step), 1.0),
            "curriculum/tracked_samples": float(np.count_nonzero(self._weight)),
        }
        if self._drawn_histogram.any():
            for q in (0.1, 0.5, 0.9):
                values[f"curriculum/drawn_difficulty/q{round(q * 100)}"] = _histogram_quantile(self._drawn_histogram, q)
            centres = (np.arange(DIFFICULTY_BINS) + 0.5) / DIFFICULTY_BINS
            values["curriculum/drawn_difficulty/mean"] = float(
                (centres * self._drawn_histogram).sum() / self._drawn_histogram.sum()
            )
        return values

    def state_dict(self) -> dict[str, Any]:
        """The share's learned scores (12 bytes per row) and fixed-size statistics. Not the static difficulties
        (re-read from the data and bound again), only their count and a digest, to refuse another share. Not the
        pending bin evidence: a restored rank must not send it a second time."""
        return {
            "num_rows": self.num_rows,
            "static_digest": _digest(self._static),
            "sum": self._sum.copy(),
            "weight": self._weight.copy(),
            "updated": self._updated.copy(),
            "bin_sum": self._bin_sum.copy(),
            "bin_weight": self._bin_weight.copy(),
            "bin_step": self._bin_step,
            "loss_mean": self._loss_mean.copy(),
            "loss_var": self._loss_var.copy(),
            "loss_count": self._loss_count.copy(),
            "drawn_histogram": self._drawn_histogram.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows or state["static_digest"] != _digest(self._static):
            raise ValueError(
                f"the checkpoint's sample scores are for another share of the data ({state['num_rows']} rows on this "
                f"rank, now {self.num_rows}, or other static difficulties): resume on the same dataset with the same "
                "number of processes"
            )
        self._sum, self._weight = state["sum"].copy(), state["weight"].copy()
        self._updated = state["updated"].copy()
        self._bin_sum, self._bin_weight = state["bin_sum"].copy(), state["bin_weight"].copy()
        self._bin_step = state["bin_step"]
        self._pending_sum, self._pending_weight, self._pending_step = np.zeros(SCORE_BINS), np.zeros(SCORE_BINS), 0
        self._loss_mean, self._loss_var = state["loss_mean"].copy(), state["loss_var"].copy()
        self._loss_count = state["loss_count"].copy()
        self._drawn_histogram = state["drawn_histogram"].copy()


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]


class Curriculum:
    """The trainer's one curriculum object: a TaskSampler and a SampleScorer, their state in every checkpoint.

    Once: `bind(static_difficulty)` with this rank's share (row id -> static difficulty), then `load_state_dict` on
    resume. Per optimizer step, on every rank: `task_for_step(step)` once; train, with `observe_sample_losses(...)`
    for each micro-batch; `observe_task_loss(task, loss averaged over ranks)`; `sync()`; on rank 0, log
    `scalars(step)` with the step given to `task_for_step`. Each rank saves its own `state_dict()`. The data loader
    calls `sample_weights` (main thread) for the rows it is about to admit or defer (trainer/pacing.py).
    """

    def __init__(self, config: CurriculumConfig, seed: int, tasks: tuple[str, ...] = TASKS) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.config = config
        self.tasks = TaskSampler(config, seed, tasks)
        self.samples = SampleScorer(config)
        self._step = 0  # the latest step seen: the reference step for sample losses, which come without one
        self._sync_calls = 0
        self._drawn: tuple[int, str, dict[str, float]] | None = None  # the latest draw, so logging shows it exactly

    def bind(self, static_difficulty: np.ndarray) -> None:
        """This rank's share: the static difficulty of each row id 0..n-1."""
        self.samples.bind(static_difficulty)

    # Task level.
    def task_weights(self, step: int) -> dict[str, float]:
        """Normalised weights over the trained tasks for `step`, from the current state."""
        return self.tasks.weights(step)

    def task_for_step(self, step: int) -> str:
        """The task of optimizer step `step`: the same on every rank that fed the same losses."""
        weights = self.tasks.weights(step)
        task = self.tasks.draw(step, weights)
        self._step = max(self._step, step)
        self._drawn = (step, task, weights)
        return task

    def observe_task_loss(self, task: str, loss: float) -> None:
        """The step's training loss, averaged over ranks (so that every rank holds the same PID state)."""
        self.tasks.observe(task, float(loss))

    # Sample level.
    def sample_weights(self, rows: np.ndarray, step: int) -> np.ndarray:
        """Admission probabilities in (0, 1] for these row ids at `step`; O(len(rows)), no side effects."""
        self._step = max(self._step, step)
        return self.samples.weights(rows, step)

    def observe_sample_losses(self, rows: np.ndarray, losses: np.ndarray, task: str, timesteps: np.ndarray) -> None:
        """Per-row losses of this rank's micro-batch on the frames the task generated (not the given ones, whose
        loss measures the mask draw more than the sample), with its task and each row's diffusion timestep."""
        self.samples.observe(rows, losses, task, timesteps, self._step)

    def sync(self, force: bool = False) -> None:
        """Every `sync_every` calls (or now, with `force`): pool loss distributions and bin scores across ranks.

        A collective (`all_gather_object`) of a fixed, small size: every rank must call it equally often. It also
        checks that the ranks hold the same task state, which fails when the trainer feeds a rank's own loss
        instead of the rank average. No-op on one process, and with neither PID nor pacing (nothing learned).
        """
        self._sync_calls += 1
        if self.config.task != "adaptive" and not self.config.pacing:
            return
        dist = _process_group()
        if dist is None:
            return
        if not force and self._sync_calls % self.config.sync_every:
            return
        payloads: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(payloads, {"task": self.tasks.consensus_key(), **self.samples.sync_payload()})
        keys = [payload["task"] for payload in payloads]
        if any(key != keys[0] for key in keys):
            raise RuntimeError(
                f"ranks disagree on the task curriculum (PID count, last value, level per rank: {keys}); "
                "observe_task_loss must get the loss averaged over ranks"
            )
        self.samples.merge(payloads, dist.get_rank())

    # Logging and checkpoints.
    def scalars(self, step: int) -> dict[str, float]:
        """TensorBoard scalars: task weights and the task drawn at `step`, the PID signal, pacing, drawn difficulty."""
        if self._drawn is not None and self._drawn[0] == step:
            _, task, weights = self._drawn
        else:
            weights = self.tasks.weights(step)
            task = self.tasks.draw(step, weights)
        values = {f"curriculum/weight/{name}": weight for name, weight in weights.items()}
        values["curriculum/task"] = float(TASKS.index(task))
        return {**values, **self.tasks.scalars(), **self.samples.scalars(step)}

    def state_dict(self) -> dict[str, Any]:
        """Plain Python and numpy, picklable (`torch.load(..., weights_only=False)` reads it back)."""
        return {
            "version": 2,
            "task": self.config.task,
            "pacing": self.config.pacing,
            "step": self._step,
            "sync_calls": self._sync_calls,
            "tasks": self.tasks.state_dict(),
            "samples": self.samples.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state; `bind` the same share first."""
        if state.get("version") != 2:
            raise ValueError(f"unknown curriculum state version {state.get('version')!r}; this code reads version 2")
        self._step, self._sync_calls = state["step"], state["sync_calls"]
        self.tasks.load_state_dict(state["tasks"])
        self.samples.load_state_dict(state["samples"])
