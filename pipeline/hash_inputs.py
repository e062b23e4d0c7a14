"""First pass: the content hash of every input, so duplicates can be found across the whole input before decoding."""

from __future__ import annotations

import hashlib
from typing import Any

from rdtf.pipeline.read_bytes import read_input
from rdtf.pipeline.stage import Stage


def content_hash(data: bytes) -> str:
    """The stable sample_id: sha256 of the file's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


class HashStage(Stage):
    """Reads each input once and hashes it; unreadable and empty inputs become rejects here."""

    name = "hash"
    reads = ("source_uri",)
    writes = ("sample_id", "num_bytes", "source_version")

    def __init__(self, max_file_bytes: int):
        self.max_file_bytes = max_file_bytes

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        data, version = read_input(row["source_uri"], self.max_file_bytes)
        return {"sample_id": content_hash(data), "num_bytes": len(data), "source_version": version}
