"""One writer per dataset: a lock file (owner, host, pid, heartbeat) that `rdtf preprocess` takes before it changes
anything in the output and renews while it runs. `rdtf train` takes the same lock on its run folder (jobs/train.py).

A second run on the same output is refused while the lock is alive. A lock whose heartbeat is older than
`stale_after_s`, or whose process is gone from this host, belongs to a killed run: it is taken over with a warning.
Object stores have no exclusive create, so taking the lock is write-then-read-back: two runs that start within the
same moment can both read back their own lock only if one overwrote the other in between, which the heartbeat then
shows (the loser stops at its next renewal).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from rdtf.schemas.config import ConfigError
from rdtf.schemas.layout import DatasetLayout

log = logging.getLogger("rdtf.preprocess")

LOCK_FILE = "_lock.json"
HEARTBEAT_S = 10.0  # how often a running job renews its lock
STALE_AFTER_S = 120.0  # a lock not renewed for this long belongs to a dead job (12 missed heartbeats)
# Set by `rdtf submit` in a Ray job's environment: the lock records the job, so that a refusal can name it.
JOB_ENV = "RDTF_JOB_ID"


class OutputLockedError(RuntimeError):
    """Another live job is writing the same output."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def describe(held: dict) -> str:
    """`Ray job ID, run RUN` or `run RUN`: who holds a lock, for messages."""
    job = f"Ray job {held['job']}, " if held.get("job") else ""
    return f"{job}run {held.get('owner')}"


@dataclass
class OutputLock:
    """`with OutputLock(layout, owner):` holds the output for one run; see the module docstring."""

    layout: DatasetLayout
    owner: str  # the run id
    command: str = "rdtf preprocess"  # what writes the output, for messages
    heartbeat_s: float = HEARTBEAT_S
    stale_after_s: float = STALE_AFTER_S
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    lost: bool = field(default=False, init=False)  # another run took the lock over while this one held it

    @property
    def path(self) -> str:
        return f"{self.layout.root}/{LOCK_FILE}"

    def read(self) -> dict | None:
        """The lock file's contents, or None when there is none (or it is half-written)."""
        if self.layout.fs.get_file_info(self.path).type != pafs.FileType.File:
            return None
        try:
            with self.layout.fs.open_input_stream(self.path) as f:
                return json.loads(f.read().decode())
        except (OSError, ValueError):
            return None

    def _write(self) -> None:
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        if os.environ.get(JOB_ENV):
            record["job"] = os.environ[JOB_ENV]
        with self.layout.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(record).encode())

    def _dead_reason(self, held: dict) -> str | None:
        """Why the holder of `held` is dead, or None if it may be alive."""
        age = time.time() - float(held.get("heartbeat", 0))
        if age > self.stale_after_s:
            return f"its last heartbeat was {age:.0f} s ago"
        if held.get("host") == socket.gethostname() and not _process_alive(int(held.get("pid", -1))):
            return f"its process {held.get('pid')} on this host is gone"
        return None

    def live_holder(self) -> dict | None:
        """The lock record of a live run holding this output (with `job` when it runs as a Ray job), or None."""
        held = self.read()
        return held if held is not None and self._dead_reason(held) is None else None

    def acquire(self) -> None:
        """Take the lock, or raise OutputLockedError naming the live holder and what to do."""
        if self.layout.fs.get_file_info(self.layout.root).type == pafs.FileType.File:
            raise ConfigError(f"{self.layout.root} is a file: the output must be a folder (a new one, or its own)")
        self.layout.fs.create_dir(self.layout.root, recursive=True)
        held = self.read()
        if held is not None and held.get("owner") != self.owner:
            reason = self._dead_reason(held)
            if reason is None:
                age = time.time() - float(held["heartbeat"])
                raise OutputLockedError(
                    f"{self.layout.root} is being written by another {self.command} ({describe(held)}, host "
                    f"{held.get('host')}, pid {held.get('pid')}, heartbeat {age:.0f} s ago). Wait for it to finish, "
                    f"or write to another --out. If that job is dead, re-run: its lock is taken over "
                    f"{self.stale_after_s:.0f} s after its last heartbeat."
                )
            log.warning("taking over the lock of %s from run %s: %s", self.layout.root, held.get("owner"), reason)
        self._write()
        if (self.read() or {}).get("owner") != self.owner:
            raise OutputLockedError(f"{self.layout.root}: another {self.command} took the lock at the same moment")
        self._thread = threading.Thread(target=self._renew, name="rdtf-output-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = self.read()
            if held is not None and held.get("owner") != self.owner:
                self.lost = True
                log.error("the lock of %s was taken over by run %s", self.layout.root, held.get("owner"))
                return
            self._write()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self.read() or {}).get("owner") == self.owner:
            self.layout.fs.delete_file(self.path)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
