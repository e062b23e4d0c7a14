"""`rdtf launch train --backend ray` checks its paths before training: the job runs jobs/preflight.py on every node
(reads --data, shares --out), here on a one-node Ray started by the test."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from rdtf.jobs.launch import ray_entrypoint
from rdtf.jobs.preflight import preflight


def test_the_ray_job_runs_the_preflight_on_data_and_run_before_training() -> None:
    args = argparse.Namespace(num_workers=2, cpus_per_worker=0.5, use_gpu=False)
    first, _, second = ray_entrypoint(args, "/shared/ds", "s3://bucket/run").partition(" && ")
    assert shlex.split(first) == ["python", "-m", "rdtf.jobs.preflight", "/shared/ds", "--out", "s3://bucket/run"]
    assert shlex.split(second)[:3] == ["python", "-m", "rdtf.jobs.ray_train"]


@pytest.mark.slow
def test_preflight_names_the_node_and_a_dataset_it_cannot_read(tmp_path: Path) -> None:
    import ray

    (tmp_path / "ds").mkdir()
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        assert preflight([str(tmp_path / "ds")], str(tmp_path / "run")) == []
        problems = preflight([str(tmp_path / "missing")], str(tmp_path / "run"))
    finally:
        ray.shutdown()
    assert len(problems) == 1
    assert problems[0].startswith("node ") and f"cannot read {tmp_path / 'missing'}" in problems[0]
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # the preflight's files are removed
