"""Where a training run's folder lives: a local (or shared) folder, or an object store (`s3://`, `gs://`, any URI
pyarrow's filesystems open) reached through a local staging folder.

DeepSpeed, torch, TensorBoard and the GIF writer write local files, so for an object-store `--out` each process
works in a staging folder of its own (`$TMPDIR/rdtf-run-<hash of --out>-rank<r>`, emptied at start, removed at the
end) and rdtf copies what is finished through pyarrow's filesystem, the way DeepSpeed and Ray Train users stage
checkpoints:

- a checkpoint: every rank uploads the files it wrote, then deletes its local copy; after a barrier rank 0 uploads
  DeepSpeed's `latest` pointer last, so a process killed mid-upload leaves the previous checkpoint the latest;
- at resume: rank 0 downloads `latest` and config.json, then every rank downloads the whole checkpoint it names
  (DeepSpeed's ZeRO load reads every rank's optimizer file);
- metrics.jsonl, tb/ and samples/ are written locally by rank 0 and uploaded after each checkpoint and at the end.

A local `--out` is used in place: every copy here is then a no-op. Endpoints and credentials come from the
environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), never from the URI (schemas/layout.py `check_uri`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass

import pyarrow.fs as pafs

from rdtf.schemas.layout import resolve


@dataclass(frozen=True)
class RunStore:
    """A run folder. `local` is the folder the trainer reads and writes; `fs`/`root` the object store behind it (None
    for a local `--out`, where `local` is `--out` itself)."""

    uri: str  # --out as given
    local: str
    fs: pafs.FileSystem | None = None
    root: str = ""

    @classmethod
    def open(cls, out: str, rank: int = 0) -> RunStore:
        """The store of `out` for process `rank`; for an object store, with a fresh, empty staging folder."""
        if "://" not in out:
            return cls(out, out)
        fs, root = resolve(out)
        if isinstance(fs, pafs.LocalFileSystem):  # file:// URIs
            return cls(out, root)
        local = cls.staging_folder(out, rank)
        shutil.rmtree(local, ignore_errors=True)  # a killed process's leftovers
        os.makedirs(local)
        return cls(out, local, fs, root.rstrip("/"))

    @staticmethod
    def staging_folder(out: str, rank: int) -> str:
        """Where process `rank` stages the object-store run `out`: one folder per run and rank, so that a killed
        process's leftovers are found and emptied by the next start."""
        name = f"rdtf-run-{hashlib.sha256(out.encode()).hexdigest()[:12]}-rank{rank}"
        return os.path.join(tempfile.gettempdir(), name)

    @classmethod
    def of(cls, run: RunStore | str) -> RunStore:
        """`run` itself, or the store of a local folder (callers that only ever see local runs pass a path). A URI
        is refused: its store has a staging folder per process, which only `open(uri, rank)` may create."""
        if isinstance(run, RunStore):
            return run
        if "://" in run:
            raise ValueError(f"{run}: open an object-store run with RunStore.open(uri, rank)")
        return cls(run, run)

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def path(self, *parts: str) -> str:
        """The local path of a file or folder of the run."""
        return os.path.join(self.local, *parts)

    def _remote(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def pull(self, rel: str) -> bool:
        """Download the file or folder `rel` into the staging folder; whether the run has it."""
        if self.fs is None:
            return os.path.exists(self.path(rel))
        kind = self.fs.get_file_info(self._remote(rel)).type
        if kind == pafs.FileType.NotFound:
            return False
        local = self.path(rel)
        os.makedirs(local if kind == pafs.FileType.Directory else os.path.dirname(local), exist_ok=True)
        pafs.copy_files(self._remote(rel), local, self.fs, pafs.LocalFileSystem())
        return True

    def push(self, rel: str, drop_local: bool = False) -> None:
        """Upload the local file or folder `rel` (when there is one); `drop_local` then deletes the local copy."""
        local = self.path(rel)
        if self.fs is None or not os.path.exists(local):
            return
        pafs.copy_files(local, self._remote(rel), pafs.LocalFileSystem(), self.fs)
        if drop_local and os.path.isdir(local):
            shutil.rmtree(local)
        elif drop_local:
            os.remove(local)

    def names(self, rel: str) -> list[str]:
        """The entries of the run's folder `rel` (in the store), sorted; [] when there is none."""
        if self.fs is None:
            return sorted(os.listdir(self.path(rel))) if os.path.isdir(self.path(rel)) else []
        selector = pafs.FileSelector(self._remote(rel), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    def remove(self, rel: str) -> None:
        """Delete the run's folder `rel`, in the store and here."""
        if self.fs is not None:
            self.fs.delete_dir(self._remote(rel))
        shutil.rmtree(self.path(rel), ignore_errors=self.fs is not None)

    def close(self) -> None:
        """Remove the staging folder (everything in it was uploaded)."""
        if self.fs is not None:
            shutil.rmtree(self.local, ignore_errors=True)
