"""`rdtf submit preprocess` and `rdtf jobs` against a real two-node Ray cluster started here (tests/local_cluster.py):
a job followed to SUCCEEDED, a job stopped mid-way and submitted again, a failing job, refusals and attaching.
The commands run as users run them, in subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from local_cluster import LocalCluster, free_port

from rdtf.schemas.layout import DATA_DIR, DatasetLayout
from rdtf.schemas.reader import open_dataset

REPO = Path(__file__).resolve().parents[2]
STICKERS = 7  # a few: enough for several shards on two one-CPU nodes


def rdtf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rdtf.jobs.cli", *args],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)} | (env or {}),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(num_cpus=1, object_store_mb=100) as started:
        yield started


def _stickers(stickers: Path, folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    names = sorted(p.name for p in (stickers / "gifs").glob("*.gif"))[:count]
    return [Path(shutil.copy(stickers / "gifs" / name, folder / name)) for name in names]


def _each_input_once(out: Path, inputs: list[Path]) -> None:
    dataset = open_dataset(str(out))
    uris = dataset.read(columns=["source_uri"])["source_uri"].to_pylist() + dataset.rejects()["source_uri"].to_pylist()
    assert sorted(uris) == sorted(str(p) for p in inputs)


def test_an_unreachable_address_fails_naming_it(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = rdtf("submit", "preprocess", str(tmp_path), "--out", str(tmp_path / "out"), "--address", address)
    assert result.returncode == 2
    assert f"cannot reach the Ray job API at {address}" in result.stderr


def test_a_relative_output_is_refused_before_connecting(tmp_path: Path) -> None:
    result = rdtf("submit", "preprocess", str(tmp_path), "--out", "out", "--address", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert "--out 'out': give an absolute path" in result.stderr


def test_a_job_runs_to_succeeded_on_the_cluster(cluster: LocalCluster, stickers: Path, tmp_path: Path) -> None:
    inputs = _stickers(stickers, tmp_path / "in", STICKERS)
    out = tmp_path / "dataset"
    submit = ("submit", "preprocess", str(tmp_path / "in"), "--out", str(out), "--address", cluster.address)
    result = rdtf(*submit, "--set", "ray.rows_per_shard=2", "--wait", env=cluster.auth_env)
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("rdtf-preprocess-")
    assert f"dataset: {STICKERS} rows, 0 rejects" in result.stdout  # the job's log, followed live
    assert f"job {job_id} SUCCEEDED" in result.stderr
    _each_input_once(out, inputs)

    listed = rdtf("jobs", "list", "--address", cluster.address, env=cluster.auth_env)
    assert any(line.split()[:2] == [job_id, "SUCCEEDED"] for line in listed.stdout.splitlines()), listed.stdout
    status = rdtf("jobs", "status", job_id, "--address", cluster.address, env=cluster.auth_env)
    assert status.returncode == 0 and status.stdout.startswith("SUCCEEDED")
    logs = rdtf("jobs", "logs", job_id, "--address", cluster.address, env=cluster.auth_env)
    assert f"dataset: {STICKERS} rows" in logs.stdout
    unknown = rdtf("jobs", "status", "no-such-job", "--address", cluster.address, env=cluster.auth_env)
    assert unknown.returncode == 2 and "no job 'no-such-job'" in unknown.stderr


def test_a_stopped_job_resumes_when_submitted_again(cluster: LocalCluster, stickers: Path, tmp_path: Path) -> None:
    """The first job holds one input in a decoder that sleeps (an injected fault, far past any test's length), so it
    is certainly running when it is stopped, after it published at least one shard."""
    inputs = _stickers(stickers, tmp_path / "in", STICKERS)
    hanging = inputs.pop()
    hanging = hanging.rename(hanging.with_name("hang-" + hanging.name))
    out = tmp_path / "dataset"
    submit = [
        *("submit", "preprocess", str(tmp_path / "in"), "--out", str(out), "--address", cluster.address),
        *("--set", "ray.rows_per_shard=1", "--set", "decode.timeout_s=3600"),
        *("--set", "decode.fault_injection=[{match: hang-, action: sleep}]"),
    ]
    first = rdtf(*submit, env=cluster.auth_env)
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.strip()

    layout = DatasetLayout.at(str(out))
    deadline = time.monotonic() + 600  # only a guard against a broken job: the loop normally ends in seconds
    while not layout.parquet_files(DATA_DIR):
        status = rdtf("jobs", "status", job_id, "--address", cluster.address, env=cluster.auth_env).stdout
        assert status.startswith(("PENDING", "RUNNING")) and time.monotonic() < deadline, status
        time.sleep(1)

    # The same work again attaches; other work on the same output is refused, naming the running job.
    again = rdtf(*submit, env=cluster.auth_env)
    assert again.returncode == 0 and again.stdout.strip() == job_id
    assert "attached to job" in again.stderr
    other = rdtf(*submit, "--set", "filters.min_frames=2", env=cluster.auth_env)
    assert other.returncode == 2 and job_id in other.stderr

    stopped = rdtf("jobs", "stop", job_id, "--address", cluster.address, env=cluster.auth_env)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"job {job_id} STOPPED"

    # Without the input that hangs (so that the resumed job can finish), the same command: a second attempt that
    # keeps what the first one published and does the rest.
    hanging.unlink()
    resumed = rdtf(*submit, "--wait", env=cluster.auth_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.splitlines()[0] == f"{job_id}-2"
    assert layout.read_card()["last_run"]["already_done"] >= 1
    _each_input_once(out, inputs)
    rows = open_dataset(str(out)).read(columns=["sample_id"])["sample_id"]
    assert len(pc.unique(rows)) == len(rows)


def test_a_batch_spec_is_checked_whole_before_anything_is_submitted(tmp_path: Path) -> None:
    spec = tmp_path / "batch.yaml"
    spec.write_text(f"jobs:\n  - {{inputs: [/a], out: {tmp_path}/x}}\n  - {{inputs: [/b], outt: {tmp_path}/y}}\n")
    result = rdtf("submit", "batch", str(spec), "--address", "http://127.0.0.1:1")  # never reached
    assert result.returncode == 2 and "unknown config key 'jobs[1].outt'" in result.stderr
    spec.write_text(f"jobs:\n  - {{inputs: [/a], out: {tmp_path}/x}}\n  - {{inputs: [/b], out: {tmp_path}/x/}}\n")
    result = rdtf("submit", "batch", str(spec), "--address", "http://127.0.0.1:1")
    assert result.returncode == 2 and "'jobs[1].out'" in result.stderr and "also the output of jobs[0]" in result.stderr


def test_a_batch_runs_one_job_per_output(cluster: LocalCluster, stickers: Path, tmp_path: Path) -> None:
    both = _stickers(stickers, tmp_path / "part-0", 6)
    (tmp_path / "part-1").mkdir()
    parts = [both[:3], [Path(shutil.move(p, tmp_path / "part-1" / p.name)) for p in both[3:]]]
    spec = tmp_path / "batch.yaml"
    spec.write_text(
        f"address: {cluster.address}\nset: {{ray.rows_per_shard: 2}}\njobs:\n"
        f"  - {{inputs: [{tmp_path / 'part-0'}], out: {tmp_path / 'ds-0'}}}\n"
        f"  - {{inputs: [{tmp_path / 'part-1'}], out: {tmp_path / 'ds-1'}, set: {{decode.fps: 4}}}}\n"
    )
    result = rdtf("submit", "batch", str(spec), "--wait", env=cluster.auth_env)
    assert result.returncode == 0, result.stdout + result.stderr
    table = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(row[1], row[2]) for row in table] == [("SUCCEEDED", str(tmp_path / f"ds-{i}")) for i in (0, 1)]
    _each_input_once(tmp_path / "ds-0", parts[0])
    _each_input_once(tmp_path / "ds-1", parts[1])
    assert open_dataset(str(tmp_path / "ds-1")).card["config"]["decode"]["fps"] == 4


def test_an_output_no_node_can_write_fails_the_preflight_naming_node_and_path(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "dataset"
    result = rdtf(
        *("submit", "preprocess", str(tmp_path / "in"), "--out", str(out), "--address", cluster.address, "--wait"),
        env=cluster.auth_env,
    )
    assert result.returncode == 1
    assert "not every node can do this job's I/O" in result.stderr
    assert re.search(rf"node \S+ \(the head, where the job's driver runs\): cannot write into {out}", result.stderr)


def test_a_failing_job_exits_non_zero_with_its_log_tail(cluster: LocalCluster, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"  # absolute, and missing on the cluster
    result = rdtf(
        *("submit", "preprocess", str(missing), "--out", str(tmp_path / "out"), "--address", cluster.address),
        "--wait",
        env=cluster.auth_env,
    )
    assert result.returncode == 1
    tail = result.stderr.split("--- the last 40 lines of its log ---", 1)
    assert len(tail) == 2 and "FAILED" in tail[0]
    assert f"cannot read {missing}: {missing} does not exist there" in tail[1]  # the preflight, naming the node
