"""The cluster-launcher files: valid against the JSON schema shipped inside the ray package, accepted by the
preparation `ray up` does, and keeping the promises docs/scale-out.md makes (install like `make install`, no copy of
a local .venv, the job API on localhost, Ray started from the project's environment)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER_FILES = sorted(REPO.glob("ray_cluster*.yaml"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_is_a_cluster_file() -> None:
    assert REPO / "ray_cluster.yaml" in CLUSTER_FILES


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_a_cluster_file_passes_rays_own_schema(path: Path) -> None:
    schema = json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(_load(path))]
    assert errors == []


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_ray_up_would_accept_it(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config  # what `ray up` runs first

    validate_config(prepare_config(copy.deepcopy(_load(path))))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_a_cluster_installs_the_project_and_keeps_the_job_api_private(path: Path) -> None:
    config = _load(path)
    setup = " ".join(config.get("setup_commands", []))
    assert "make install" in setup
    assert all(".venv" not in source for source in config["file_mounts"].values())
    assert ".gitignore" in config.get("rsync_filter", [])
    assert ".venv/" in (REPO / ".gitignore").read_text().split()  # so the rsync filter leaves the local .venv
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "PATH=$HOME/rdtf/.venv/bin:$PATH" in start  # a job's `python` is the project's
