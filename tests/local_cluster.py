"""A real Ray cluster of two nodes on this machine, for tests: `ray start --head` and `ray start --address`, each
with free ports and its own temp dir, stopped by the process ids this helper started (never `ray stop`, which stops
every Ray on the machine).

Each node runs `ray start --block` in a session of its own: the blocking command owns the node's processes and
ends them when it gets SIGTERM; whatever is left in its session is killed after it. The session, not the process
group: Ray's actor workers (Ray Train's and Ray Data's coordinators) set process groups of their own.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
READY_TIMEOUT_S = 120.0  # a node takes about 6 s here; generous for a loaded machine
# A graceful stop: an idle node ends in about 2 s here; after a Ray Train job the head's `ray start` did not end in
# 25 s (its detached actors still ran), so waiting longer only delays the SIGKILL of its session.
STOP_TIMEOUT_S = 5.0


# Ports for the nodes come from between Ray's worker ports (10002-19999) and the kernel's ephemeral range (32768 and
# up): no outgoing connection or worker can take one between its choice here and the node binding it.
PORT_RANGE = (20000, 32767)
NODE_PORT_FLAGS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
)


def free_port() -> int:
    """One port nothing listens on (the kernel's choice): for a test that needs an address with no server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now, each checked by binding it; all are held until all are chosen, so no two
    are the same (choosing them one at a time gave the same port twice, and Ray refused to start)."""
    held: dict[int, socket.socket] = {}
    try:
        while len(held) < count:
            port = random.randint(*PORT_RANGE)
            if port in held:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held[port] = s
        return list(held)
    finally:
        for s in held.values():
            s.close()


def kill_session(session: int) -> None:
    """SIGKILL every process of the session that `session` (a process this helper started) leads."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == session:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class LocalCluster:
    """`with LocalCluster() as c:` c.address is the job API (http://127.0.0.1:PORT), c.gcs the GCS address."""

    num_cpus: int = 1
    object_store_mb: int = 100
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the nodes (and so of the jobs)
    processes: list[subprocess.Popen] = field(default_factory=list, init=False)
    temp_dir: str = field(default="", init=False)
    address: str = field(default="", init=False)
    gcs: str = field(default="", init=False)
    # Token authentication on, with a token of this cluster's own (not ~/.ray/auth_token): clients need auth_env.
    token: str = field(default_factory=lambda: secrets.token_hex(32), init=False)

    @property
    def auth_env(self) -> dict[str, str]:
        """The environment a client needs to talk to this cluster."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def _start(self, args: list[str], ports: list[int], log_name: str, temp_dir: str) -> subprocess.Popen:
        env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"} | self.auth_env | self.env
        # The nodes run this interpreter's environment: jobs call `python`, which must be this venv's.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        common = [
            f"--num-cpus={self.num_cpus}",
            f"--object-store-memory={self.object_store_mb * 2**20}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            "--block",
        ]
        log = open(os.path.join(self.temp_dir, log_name), "w")  # noqa: SIM115 -- closed with the process
        process = subprocess.Popen(
            [
                str(RAY),
                "start",
                *args,
                *common,
                *(f"--{flag}={p}" for flag, p in zip(NODE_PORT_FLAGS, ports, strict=True)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the session we clean up after it
        )
        self.processes.append(process)
        return process

    def start(self) -> LocalCluster:
        self.temp_dir = tempfile.mkdtemp(prefix="rdtf-rc-", dir="/tmp")  # short: socket paths < 107 chars
        # Every port of both nodes chosen at once, so that none is chosen twice.
        port, dashboard, client, *node_ports = free_ports(3 + 2 * len(NODE_PORT_FLAGS))
        head_ports, worker_ports = node_ports[: len(NODE_PORT_FLAGS)], node_ports[len(NODE_PORT_FLAGS) :]
        self.gcs, self.address = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
        self._start(
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}",
            ],
            head_ports,
            "head.log",
            self.temp_dir,
        )
        self._wait_for_nodes(1)
        # A temp dir of its own, as on a machine of its own: nodes sharing one would share (and garbage-collect)
        # each other's unpacked job files, such as a running job's working_dir.
        worker_dir = os.path.join(self.temp_dir, "w")
        os.mkdir(worker_dir)
        self._start([f"--address={self.gcs}", "--node-ip-address=127.0.0.1"], worker_ports, "worker.log", worker_dir)
        self._wait_for_nodes(2)
        return self

    def _wait_for_nodes(self, count: int) -> None:
        """Until the dashboard lists `count` alive nodes; fails with the node logs if a node process ended."""
        import requests

        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a Ray node exited ({process.returncode}): {self.logs()}")
            try:
                headers = {"Authorization": f"Bearer {self.token}"}
                reply = requests.get(f"{self.address}/nodes?view=summary", headers=headers, timeout=5).json()
                alive = [n for n in reply["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]
                if len(alive) >= count:
                    return
            except (requests.RequestException, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {count} nodes: {self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        parts = []
        for name in ("head.log", "worker.log"):
            path = os.path.join(self.temp_dir, name)
            if os.path.isfile(path):
                parts.append(f"--- {name} ---\n" + Path(path).read_text()[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        """Both nodes at once: SIGTERM to each `ray start --block` (it ends its node's processes), a wait of at
        most STOP_TIMEOUT_S for all of them together, then SIGKILL to anything left in each node's own session."""
        running = [process for process in self.processes if process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for process in self.processes:
            kill_session(process.pid)
        self.processes.clear()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)  # sessions, logs, spilled objects

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
