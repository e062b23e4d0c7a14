"""Resume safety on two gloo processes: rank 0 chooses the checkpoint, a run folder some rank does not see is
refused, and a resume that changes a setting which changes results is refused naming the key."""

from __future__ import annotations

import json
import pickle
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO

from rdtf.schemas.config import ConfigError, load
from rdtf.trainer import checkpoint, run_folder
from rdtf.trainer.config import TrainConfig
from rdtf.trainer.train import prepare_run

TINY = str(REPO / "configs" / "tiny.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outcome(action) -> str:
    try:
        return repr(action())
    except ConfigError as error:
        return f"ConfigError: {error}"


def _worker(rank: int, port: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    root = Path(folder)
    try:
        results = {}
        # 1. rank 1 sees a stale `latest` (another node's cache): it still resumes from rank 0's choice
        results["tag"] = checkpoint.resume_tag(str(root / f"view{rank}"))
        # 2. a run folder on rank 0's local disk: the same path on rank 1's node is another, empty folder
        results["unshared"] = _outcome(lambda: checkpoint.check_shared(str(root / f"local{rank}")))
        results["shared"] = _outcome(lambda: checkpoint.check_shared(str(root / "shared")))
        # 3. settings that change results are compared at resume; run length and intervals may change
        run, cfg = str(root / "run"), load(TrainConfig, TINY)
        prepare_run(run, cfg, "/data/a", "dataset-a", rank)
        longer = load(TrainConfig, TINY, {"run.max_steps": 999, "run.checkpoint_every": 7, "curriculum.length": 9})
        results["longer"] = _outcome(lambda: prepare_run(run, longer, "/moved/a", "dataset-a", rank)["data"])
        other_text = load(TrainConfig, TINY, {"text.model": "ViT-B-32", "latent.resolution": 64})
        results["text"] = _outcome(lambda: prepare_run(run, other_text, "/data/a", "dataset-a", rank))
        results["dataset"] = _outcome(lambda: prepare_run(run, cfg, "/data/a", "dataset-b", rank))
        results["diffusion"] = _outcome(
            lambda: prepare_run(run, load(TrainConfig, TINY, {"diffusion.beta_end": 0.02}), "/data/a", "dataset-a", 0)
        )
        (root / f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
    finally:
        dist.destroy_process_group()


def test_resume_is_decided_together_and_refuses_what_changes_results(tmp_path: Path) -> None:
    for rank, latest in ((0, "step-00000004"), (1, "step-00000002")):
        (tmp_path / f"view{rank}" / run_folder.CHECKPOINTS).mkdir(parents=True)
        (tmp_path / f"view{rank}" / run_folder.CHECKPOINTS / run_folder.LATEST).write_text(latest)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    assert [r["tag"] for r in results] == ["step-00000004"] * 2
    for r in results:
        assert r["unshared"].startswith("ConfigError: rank 1:") and "every node mounts" in r["unshared"]
        assert "rank 0:" not in r["unshared"]  # rank 0 sees its own folder
        assert r["shared"] == "None"
        assert r["longer"] == "'/moved/a'"  # a moved dataset with the same content, a longer run: accepted
        assert "text.model (saved 'rdtf-tiny-text', now 'ViT-B-32')" in r["text"] and "latent.resolution" in r["text"]
        assert "dataset (saved 'dataset-a', now 'dataset-b')" in r["dataset"]
        assert "diffusion.beta_end" in r["diffusion"]
    saved = json.loads((tmp_path / "run" / run_folder.CONFIG_FILE).read_text())
    assert saved["dataset"] == "dataset-a" and saved["config"]["run"]["max_steps"] == 999  # refusals wrote nothing
    shutil.rmtree(tmp_path / "run")
