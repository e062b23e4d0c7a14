"""The local S3-compatible server of the object-store tests (started by the `s3_server` fixture in conftest.py).

A module of its own, like local_cluster.py: test files import it by this name (`conftest` names whichever
conftest.py pytest imported first).
"""

from __future__ import annotations

from dataclasses import dataclass


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
