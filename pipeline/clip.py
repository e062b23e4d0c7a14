"""The CLIP stage: per-sample image embeddings, caption scores, zero-shot tags and captions (docs/clip.md).

Two halves, so that the encoder never waits for decoding:
- ClipInputStage runs with the CPU stages, where the frames were decoded: each distinct sampled frame once (uint8);
- ClipStage runs in a Ray actor pool (pipeline.plan): open_clip is loaded once per actor, in `setup()`, and the
  frames of a whole block are resized to the model's input, normalized and encoded in fixed-size batches on the
  actor's GPU (or its CPUs). Resizing there costs the GPU next to nothing and spares the CPUs a bicubic resize
  per frame (about 2 ms at 256 -> 224 px, as much as decoding the frame). Each sample gets
    clip_embedding    the mean of its frames' unit embeddings, renormalized (float16);
    clip_score        the cosine between its caption's text embedding and clip_embedding;
    tags              the clip.num_tags vocabulary entries of highest zero-shot probability, with that probability;
    caption           if none was given: CoCa's (clip.captioner), else its top tags joined; caption_source says which;
    frame_embeddings  its sampled frames' unit embeddings (float32), for the keyframe clustering; not stored.
  With clip.min_clip_score set, a sample whose *given* caption scores below it is rejected (`clip_score`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rdtf.pipeline.clip_models import Weights, check_weights, load_model, resolve
from rdtf.pipeline.config import ClipConfig
from rdtf.pipeline.stage import STATUS_COLUMNS, Batch, Reject, Resources, Stage
from rdtf.schemas.config import ConfigError

VOCABULARY = Path(__file__).with_name("sticker_vocabulary.txt")
# One prompt for every tag, in the style of CLIP's zero-shot prompts ("a photo of a {}."); captions made from tags
# use it too, so that they live where the tags were scored.
TAG_PROMPT = "an animated sticker: {}"
CAPTION_TAGS = 3  # tags joined into a caption for an input that has none: enough to say what and how
COCA_END = "<end_of_text>"
COCA_START = "<start_of_text>"


def load_vocabulary(path: str | None = None) -> list[str]:
    """The tags of a vocabulary file (one a line, '#' comments and blank lines skipped), first occurrences only."""
    text = Path(path or VOCABULARY).read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))


@dataclass(frozen=True)
class ClipSetup:
    """Everything the CLIP stage needs, checked on the driver before any input is read (`prepare`)."""

    cfg: ClipConfig
    weights: Weights
    captioner: Weights | None
    vocabulary: list[str]

    def for_cluster(self, cpus: float, gpus: float) -> ClipSetup:
        """Resolve the `auto` settings (device, precision, pool size) for a cluster of `cpus` CPUs and `gpus` GPUs."""
        cfg = self.cfg
        device = cfg.device if cfg.device != "auto" else ("cuda" if gpus > 0 else "cpu")
        if device == "cuda" and gpus == 0:
            raise ConfigError("config key 'clip.device': cuda, but the Ray cluster has no GPU (use auto or cpu)")
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
        pool_size = cfg.pool_size or (max(1, int(gpus // cfg.num_gpus)) if device == "cuda" else 1)
        if cpus - pool_size * cfg.num_cpus < 1:  # Ray would wait forever for a CPU to decode on
            raise ConfigError(
                f"config key 'clip.pool_size': {pool_size} actors of clip.num_cpus={cfg.num_cpus} CPUs would leave "
                f"less than one of the cluster's {cpus:g} CPUs to the decode tasks: use fewer or smaller actors"
            )
        return replace(self, cfg=replace(cfg, device=device, precision=precision, pool_size=pool_size))

    def card(self) -> dict[str, Any]:
        """What the dataset card says about the models (weights with their sha256, and a warning for random ones)."""
        return {
            **self.weights.card(),
            "captioner": self.captioner.card() if self.captioner else None,
            "vocabulary": self.cfg.vocabulary or f"pipeline/{VOCABULARY.name}",
            "vocabulary_size": len(self.vocabulary),
            "device": self.cfg.device,
            "precision": self.cfg.precision,
        }


def prepare(cfg: ClipConfig) -> ClipSetup | None:
    """Check the vocabulary, the model and its weights (and the captioner's) now; None when the stage is off."""
    if not cfg.enabled:
        return None
    try:
        vocabulary = load_vocabulary(cfg.vocabulary)
    except OSError as error:
        raise ConfigError(f"config key 'clip.vocabulary': cannot read {cfg.vocabulary}: {error}") from error
    if not vocabulary:
        raise ConfigError(f"config key 'clip.vocabulary': {cfg.vocabulary or VOCABULARY} holds no tag")
    weights = check_weights("clip.weights", "clip.model", cfg.model, cfg.weights, cfg.seed)
    captioner = None
    if cfg.captioner is not None:
        captioner = check_weights(
            "clip.captioner", "clip.captioner_model", cfg.captioner_model, cfg.captioner, cfg.seed, captioner=True
        )
    return ClipSetup(cfg, weights, captioner, vocabulary)


class ClipInputStage(Stage):
    """CPU side: the distinct sampled frames, and which of them each sampled frame is.

    A frame held on screen is sampled several times; it is sent and encoded once.
    """

    name = "clip_input"
    reads = ("frames",)
    writes = ("clip_pixels", "clip_frame_index")

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        seen: dict[bytes, int] = {}
        distinct: list[np.ndarray] = []
        index: list[int] = []
        for frame in row["frames"]:
            position = seen.setdefault(frame.tobytes(), len(distinct))
            if position == len(distinct):
                distinct.append(frame)
            index.append(position)
        return {"clip_pixels": np.stack(distinct), "clip_frame_index": index}


class ClipStage(Stage):
    """Actor side: embeddings, scores, tags and captions for a whole block at once (see the module docstring)."""

    name = "clip"
    reads = ("clip_pixels", "clip_frame_index", "caption")
    writes = ("clip_embedding", "clip_score", "tags", "caption", "caption_source", "frame_embeddings")

    def __init__(self, cfg: ClipConfig, vocabulary: list[str]):
        """`cfg` with its device, precision and pool_size resolved for the cluster (ClipSetup.for_cluster)."""
        self.cfg = cfg
        self.vocabulary = vocabulary
        gpus = cfg.num_gpus if cfg.device == "cuda" else 0.0
        self.resources = Resources(num_cpus=cfg.num_cpus, num_gpus=gpus, actors=cfg.pool_size or 1)
        self.model: Any = None

    def setup(self) -> None:
        import open_clip
        import torch

        if self.model is not None:
            return
        cfg = self.cfg
        if cfg.device == "cpu":
            torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.device = torch.device(cfg.device)
        self.model = load_model(
            resolve("clip.weights", "clip.model", cfg.model, cfg.weights), cfg.seed, cfg.device, cfg.precision
        )
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.prepare = self._preparer(self.model, open_clip.get_input_dtype(cfg.precision))
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        self.tag_embeddings = self._encode_texts([TAG_PROMPT.format(tag) for tag in self.vocabulary])
        self.captioner = None
        if cfg.captioner is not None:
            weights = resolve("clip.captioner", "clip.captioner_model", cfg.captioner_model, cfg.captioner)
            self.captioner = load_model(weights, cfg.seed, cfg.device, cfg.precision)
            self.caption_prepare = self._preparer(self.captioner, open_clip.get_input_dtype(cfg.precision))

    def _preparer(self, model: Any, dtype: Any):
        """uint8 frames (n, h, w, 3) on the device -> `model`'s input: resized to its square input size (bicubic
        with antialiasing, as open_clip's transform; frames are square already), normalized, in its input dtype."""
        import open_clip
        import torch

        preprocess = open_clip.get_model_preprocess_cfg(model)
        size = preprocess["size"] if isinstance(preprocess["size"], int) else preprocess["size"][0]
        mean = torch.tensor(preprocess["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(preprocess["std"], device=self.device).view(1, 3, 1, 1)

        def prepare(pixels: Any) -> Any:
            images = pixels.permute(0, 3, 1, 2).float() / 255
            if images.shape[-1] != size:
                images = torch.nn.functional.interpolate(images, size=(size, size), mode="bicubic", antialias=True)
            return ((images - mean) / std).to(dtype or torch.float32)

        return prepare

    def _padded(self, values: Any, size: int) -> tuple[Any, int]:
        """`values` (a tensor of at most `size` rows) padded with zero rows to exactly `size`, and the real count."""
        import torch

        real = len(values)
        if real < size:
            values = torch.cat([values, values.new_zeros((size - real, *values.shape[1:]))])
        return values, real

    def _encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(n, s, s, 3) uint8 -> (n, d) float32 unit embeddings, in passes of exactly batch_size images."""
        import torch

        size = self.cfg.batch_size
        out = []
        for begin in range(0, len(pixels), size):
            chunk, real = self._padded(torch.from_numpy(pixels[begin : begin + size]).to(self.device), size)
            with torch.inference_mode():
                embeddings = self.model.encode_image(self.prepare(chunk))[:real].float()
            out.append(torch.nn.functional.normalize(embeddings, dim=-1).cpu().numpy())
        return np.concatenate(out)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, d) float32 unit embeddings, in passes of exactly batch_size texts."""
        import torch

        size = self.cfg.batch_size
        out = []
        for begin in range(0, len(texts), size):
            tokens, real = self._padded(self.tokenizer(texts[begin : begin + size]).to(self.device), size)
            with torch.inference_mode():
                embeddings = self.model.encode_text(tokens)[:real].float()
            out.append(torch.nn.functional.normalize(embeddings, dim=-1).cpu().numpy())
        return np.concatenate(out)

    def _generate(self, pixels: np.ndarray) -> list[str]:
        """CoCa captions for (n, s, s, 3) uint8 frames, in padded passes of caption_batch_size (beam search)."""
        import open_clip
        import torch

        size = self.cfg.caption_batch_size
        captions = []
        for begin in range(0, len(pixels), size):
            chunk, real = self._padded(torch.from_numpy(pixels[begin : begin + size]).to(self.device), size)
            with torch.inference_mode():
                tokens = self.captioner.generate(self.caption_prepare(chunk), seq_len=self.cfg.caption_max_tokens)
            for row in tokens[:real]:
                text = open_clip.decode(row).split(COCA_END)[0].replace(COCA_START, "")
                captions.append(" ".join(text.split()))
        return captions

    def _tags(self, sample: np.ndarray) -> list[tuple[str, float]]:
        """The num_tags most probable vocabulary entries for one sample embedding. One row at a time: a matrix
        product over the whole batch would round differently with the batch's size."""
        logits = self.logit_scale * (self.tag_embeddings @ sample)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        top = np.argsort(-probabilities, kind="stable")[: self.cfg.num_tags]
        return [(self.vocabulary[j], float(probabilities[j])) for j in top]

    def _process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | Reject]:
        """The outputs of each row, or the Reject it earned. Only the model sees the rows together (in passes of a
        fixed size); everything after it is computed row by row, so that no result depends on the batch."""
        pixels = [row["clip_pixels"] for row in rows]
        offsets = np.cumsum([0] + [len(p) for p in pixels])
        distinct = self._encode_images(np.concatenate(pixels))
        frame_embeddings, samples, representative = [], [], []
        for r, row in enumerate(rows):
            own = distinct[offsets[r] : offsets[r + 1]]
            frames = own[np.asarray(row["clip_frame_index"])]
            mean = frames.mean(axis=0)
            sample = mean / np.linalg.norm(mean)
            frame_embeddings.append(frames)
            samples.append(sample)
            representative.append(pixels[r][int(np.argmax(own @ sample))])  # the frame closest to the whole
        tags = [self._tags(sample) for sample in samples]

        captions = [row["caption"] or None for row in rows]
        sources = ["given" if caption else None for caption in captions]
        missing = [r for r, caption in enumerate(captions) if caption is None]
        generated = self._generate(np.stack([representative[r] for r in missing])) if missing and self.captioner else []
        for r, text in zip(missing, generated or [""] * len(missing), strict=True):
            if text:
                captions[r], sources[r] = text, "coca"
            else:
                captions[r] = TAG_PROMPT.format(", ".join(tag for tag, _ in tags[r][:CAPTION_TAGS]))
                sources[r] = "tags"
        scores = [float(text @ sample) for text, sample in zip(self._encode_texts(captions), samples, strict=True)]

        results: list[dict[str, Any] | Reject] = []
        for r in range(len(rows)):
            threshold = self.cfg.min_clip_score
            if threshold is not None and sources[r] == "given" and scores[r] < threshold:
                message = f"CLIP score {scores[r]:.4f} of the caption and the frames < clip.min_clip_score={threshold}"
                results.append(Reject("clip_score", message))
                continue
            results.append(
                {
                    "clip_embedding": samples[r].astype(np.float16),
                    "clip_score": scores[r],
                    "tags": [{"tag": tag, "score": score} for tag, score in tags[r]],
                    "caption": captions[r],
                    "caption_source": sources[r],
                    "frame_embeddings": frame_embeddings[r],
                }
            )
        return results

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        result = self._process([row])[0]
        if isinstance(result, Reject):
            raise result
        return result

    def __call__(self, batch: Batch) -> Batch:
        """Every live row of the batch at once, so that all their frames share forward passes. If that fails, the
        batch is done again row by row (Stage.__call__), so that only the rows that fail become rejects."""
        size = len(batch["source_uri"])
        for column in STATUS_COLUMNS:
            batch.setdefault(column, [None] * size)
        alive = [i for i in range(size) if batch["reject_reason"][i] is None]
        try:
            results = self._process([{c: batch[c][i] for c in self.reads} for i in alive]) if alive else []
        except Exception:
            return super().__call__(batch)
        outputs: dict[str, list[Any]] = {c: [None] * size for c in self.writes}
        for i, result in zip(alive, results, strict=True):
            if isinstance(result, Reject):
                self._reject(batch, i, result.reason, result.message)
                continue
            for column in self.writes:
                outputs[column][i] = result[column]
        batch.update(outputs)
        return batch
