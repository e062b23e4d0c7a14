"""The local S3-compatible server of the object-store tests (started by the `s3_server` fixture in conftest.py), and
the way those tests run the `rdtf` command line against it.

A module of its own, like local_cluster.py: test files import it by this name (`conftest` names whichever
conftest.py pytest imported first).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class S3Server:
    """A local S3-compatible server; `env` is what a process needs to reach it (endpoint and credentials come from
    the environment, as for any pyarrow or AWS user: URIs may not carry them)."""

    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # never look for credentials on a cloud metadata service
        }

    def filesystem(self, **options: Any) -> pafs.S3FileSystem:
        """pyarrow's filesystem on this server, with the credentials of `env` (and any other S3FileSystem option)."""
        env = self.env
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env["AWS_SECRET_ACCESS_KEY"],
            **options,
        )


def rdtf_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`rdtf ARGS` in the checkout with the environment `env` (the server's endpoint and credentials); must succeed."""
    command = [sys.executable, "-m", "rdtf.jobs.cli", *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"rdtf {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done
