"""Ray Jobs for rdtf: reach a cluster's job API, package this checkout for a job, follow a job to its end, and the
`rdtf jobs list | status ID | logs ID [--follow] | stop ID` commands.

Everything goes through Ray's own `JobSubmissionClient` (the dashboard's HTTP job API, port 8265 by default; keep it
on localhost and reach it through an SSH tunnel: docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from rdtf.jobs.console import importing_quietly

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # Ray's own variable for the job API (`ray job` reads it too)
CONNECT_TIMEOUT_S = 5.0  # an unreachable head fails within this, not after the OS's TCP timeout (minutes)
LOG_TAIL_LINES = 40  # lines of a failed job's log printed at the end


class ClusterError(RuntimeError):
    """The job API cannot be reached, refused a request, or does not know a job; the message names the address."""


def resolve_address(address: str | None) -> str:
    """The job API's http(s) URL from --address or RAY_API_SERVER_ADDRESS, checked for form."""
    address = address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise ClusterError(f"no cluster given: pass --address http://HEAD:8265 or set {ADDRESS_ENV}")
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(
            f"--address {address!r}: give the head's job API as http://HEAD:8265 (the dashboard port; through an "
            "SSH tunnel: http://127.0.0.1:8265)"
        )
    return address.rstrip("/")


def connect(address: str | None) -> Any:
    """A JobSubmissionClient for the job API at `address`; fails within seconds, naming it, when it is unreachable."""
    url = resolve_address(address)
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:  # the client itself would wait for the OS's TCP timeout on an unroutable host
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = f"no answer within {CONNECT_TIMEOUT_S:g} s" if isinstance(error, TimeoutError) else str(error)
        raise ClusterError(
            f"cannot reach the Ray job API at {url} ({reason}). "
            "Is the head running with the dashboard on that port, and is an SSH tunnel open if it is remote "
            "(docs/scale-out.md)?"
        ) from error
    with importing_quietly():
        from ray.job_submission import JobSubmissionClient
    if not logging.getLogger("rdtf").isEnabledFor(logging.INFO):  # "Uploading package ...": only with -v
        logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(url)
    except Exception as error:  # ConnectionError, AuthenticationError, a version mismatch: all name the cause
        raise ClusterError(f"the Ray job API at {url} refused the connection: {error}") from error


def package_dir() -> Path:
    """The folder of this checkout's (or installation's) `rdtf` package: shipped with every job, so the cluster needs
    only the dependencies (`make install`) and a job runs the code of the checkout that submitted it."""
    spec = importlib.util.find_spec("rdtf")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("cannot find the package 'rdtf' of this checkout to ship with the job")
    return Path(list(spec.submodule_search_locations)[0])


@contextmanager
def working_dir(files: dict[str, str]) -> Iterator[str]:
    """A temporary folder with this checkout's `rdtf` package and `files` (name -> text): a job's `working_dir`.

    Ray uploads it at submission (content-addressed: an unchanged checkout is uploaded once), unpacks it on every
    node, starts the job's driver in it and puts it first on every worker's sys.path, so the job runs this checkout
    even where an older rdtf is installed. In a checkout `rdtf/` links to the layout's folders; the copy holds them.
    """
    with tempfile.TemporaryDirectory(prefix="rdtf-job-") as folder:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(package_dir(), Path(folder) / "rdtf", ignore=ignore)  # symlinks=False: links are followed
        for name, text in files.items():
            (Path(folder) / name).write_text(text)
        yield folder


def job_info(client: Any, job_id: str) -> Any:
    """JobDetails of `job_id`, or ClusterError when the cluster does not know it."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as error:
        raise ClusterError(f"no job {job_id!r} on the cluster at {client.get_address()} ({error})") from error


def follow(client: Any, job_id: str, out: TextIO = sys.stdout) -> None:
    """Print the job's log as it is written, until the job ends."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


def wait_until_done(client: Any, job_id: str, poll_s: float = 1.0) -> Any:
    """JobDetails once the job is SUCCEEDED, FAILED or STOPPED (its log stream may end a moment before)."""
    while True:
        info = job_info(client, job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)


def log_tail(client: Any, job_id: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(client.get_job_logs(job_id).rstrip("\n").splitlines()[-lines:])


def outcome(client: Any, job_id: str, err: TextIO = sys.stderr) -> int:
    """Say how the ended job went: 0 when it SUCCEEDED; otherwise its status, message and log tail, and 1."""
    info = wait_until_done(client, job_id)
    if info.status == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED", file=err)
        return 0
    print(f"job {job_id} {info.status}: {info.message or ''}".rstrip(), file=err)
    print(f"--- the last {LOG_TAIL_LINES} lines of its log ---\n{log_tail(client, job_id)}", file=err)
    return 1


# -- `rdtf jobs ...` -------------------------------------------------------------------------------------------------


def add_jobs_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "jobs",
        help="list, inspect, follow and stop jobs on a Ray cluster",
        description="The jobs on a Ray cluster's job API (those of `rdtf submit` and any other).",
        epilog=f"--address defaults to ${ADDRESS_ENV}. docs/scale-out.md",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", metavar="URL", help=f"the head's job API, http://HEAD:8265 (${ADDRESS_ENV})")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", parents=[common], help="every job, oldest first").set_defaults(run=run_list)
    for name, run, what in (
        ("status", run_status, "a job's status and message"),
        ("stop", run_stop, "stop a job and wait until it has stopped"),
    ):
        action = actions.add_parser(name, parents=[common], help=what)
        action.add_argument("job_id", metavar="ID")
        action.set_defaults(run=run)
    logs = actions.add_parser("logs", parents=[common], help="a job's log (driver output)")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(run=run_logs)


def run_list(args: argparse.Namespace) -> int:
    client = connect(args.address)
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
    print(f"{'ID':<36} {'STATUS':<10} {'STARTED (UTC)':<19} WHAT")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(job.start_time / 1000)) if job.start_time else "-"
        output = (job.metadata or {}).get("rdtf_output")
        what = f"rdtf {job.metadata['rdtf_command']} -> {output}" if output else job.entrypoint
        print(f"{job.submission_id or job.job_id:<36} {str(job.status):<10} {started:<19} {what}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    info = job_info(connect(args.address), args.job_id)
    print(f"{info.status}{': ' + info.message if info.message else ''}")
    return 0


def run_logs(args: argparse.Namespace) -> int:
    client = connect(args.address)
    job_info(client, args.job_id)
    if args.follow:
        follow(client, args.job_id)
    else:
        sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    client = connect(args.address)
    info = job_info(client, args.job_id)
    if info.status.is_terminal():
        print(f"job {args.job_id} had already ended: {info.status}")
        return 0
    client.stop_job(args.job_id)
    print(f"job {args.job_id} {wait_until_done(client, args.job_id).status}")
    return 0
