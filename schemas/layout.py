"""Where a dataset's files live: `data/*.parquet`, `rejects/*.parquet` and `card.json` under one root.

The root is a local path or any URI that pyarrow's filesystems open (s3://, gs://, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

DATA_DIR = "data"
REJECTS_DIR = "rejects"
CARD_FILE = "card.json"
# Files being written start with this prefix; readers ignore them and a resumed job deletes them.
TEMP_PREFIX = ".tmp-"
# Workers write a run's shards under STAGING_DIR/<run id>/; only that run's live driver moves them into data/ and
# rejects/. A worker of a killed run that finishes late can only write into its dead run's staging folder, which
# nothing reads and the next run deletes.
STAGING_DIR = "_staging"


# URI schemes rdtf reads and writes (those pyarrow's filesystems open). Anything else is refused before any I/O.
SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


class UnsafeURIError(ValueError):
    """A URI rdtf refuses to open: an unknown scheme, or a query string or fragment."""


def check_uri(uri: str) -> None:
    """Refuse URIs whose scheme is not in SCHEMES or that carry '?' or '#'. pyarrow reads settings such as
    `endpoint_override` from a URI's query string, so one manifest line could send workers, with their credentials,
    to any host; those settings belong in the environment or the filesystem's own configuration."""
    if "://" not in uri:
        return
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise UnsafeURIError(f"{uri}: rdtf does not read '{scheme}://' URIs (it reads {', '.join(SCHEMES)})")
    if "?" in uri or "#" in uri:
        raise UnsafeURIError(
            f"{uri}: URIs may not carry a query string or fragment (filesystem settings such as endpoint_override "
            "go in the environment, e.g. AWS_ENDPOINT_URL, not in each path)"
        )


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and the path inside it for a local path or a URI (checked by `check_uri`)."""
    if "://" not in uri:
        scheme = uri.split(":/", 1)[0].lower() if ":/" in uri else ""
        if scheme in SCHEMES:  # "s3:/bucket/x" would silently become a local folder named "s3:"
            raise UnsafeURIError(f"{uri}: write {scheme}:// with two slashes (or ./{uri} for a local path)")
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    check_uri(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except OSError as error:  # pyarrow asks a bucket's region first: a wrong name or no network fails here
        raise FileNotFoundError(f"cannot open {uri}: {error} (does the bucket exist, and is it reachable?)") from None


@dataclass(frozen=True)
class DatasetLayout:
    """The files of one dataset. `root` is a path inside `fs`."""

    fs: pafs.FileSystem
    root: str

    @classmethod
    def at(cls, uri: str) -> DatasetLayout:
        fs, root = resolve(uri)
        return cls(fs, root.rstrip("/"))

    def dir(self, kind: str) -> str:
        """The folder of `kind`, DATA_DIR or REJECTS_DIR."""
        return f"{self.root}/{kind}"

    def staging_dir(self, run_id: str) -> str:
        """Where run `run_id`'s workers write shards before the driver publishes them."""
        return f"{self.root}/{STAGING_DIR}/{run_id}"

    @property
    def card_path(self) -> str:
        return f"{self.root}/{CARD_FILE}"

    def parquet_files(self, kind: str) -> list[str]:
        """Finished Parquet files of `kind`, sorted by name so that every reader sees the same order."""
        selector = pafs.FileSelector(self.dir(kind), allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(TEMP_PREFIX)
        )

    def temp_files(self) -> list[str]:
        """Half-written files that a killed job left behind."""
        found = []
        for kind in (DATA_DIR, REJECTS_DIR):
            selector = pafs.FileSelector(self.dir(kind), allow_not_found=True)
            found += [i.path for i in self.fs.get_file_info(selector) if i.base_name.startswith(TEMP_PREFIX)]
        return found

    def read_card(self) -> dict | None:
        if self.fs.get_file_info(self.card_path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.card_path) as f:
            return json.loads(f.read().decode())

    def write_card(self, card: dict) -> None:
        """Write card.json atomically (a reader sees the old card or the new one, never half of one), and the
        Hugging Face README.md that goes with it (schemas.hub_readme)."""
        from rdtf.schemas.hub_readme import README_FILE, render  # it names this module's folders: imported here

        self.fs.create_dir(self.root, recursive=True)
        for name, text in ((README_FILE, render(card)), (CARD_FILE, json.dumps(card, indent=2, sort_keys=True))):
            tmp = f"{self.root}/{TEMP_PREFIX}{name}"
            with self.fs.open_output_stream(tmp) as f:
                f.write(text.encode())
            self.fs.move(tmp, f"{self.root}/{name}")
