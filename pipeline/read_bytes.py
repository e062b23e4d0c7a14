"""Read an input's bytes from any filesystem pyarrow opens: a size limit checked before and during the read, and
transient errors retried with backoff.

A read that keeps failing for a reason that may pass (throttling, a dropped connection) is not a reject: it raises
NotDone, the input is written nowhere, and the next run tries it again. Reasons that will not pass (no such file,
permission denied, too large, empty) are rejects.
"""

from __future__ import annotations

import time

import pyarrow.fs as pafs

from rdtf.pipeline.stage import NotDone, Reject
from rdtf.schemas.layout import resolve

ATTEMPTS = 4  # reads of one input before it is left for the next run
BACKOFF_S = 0.5  # wait before the second attempt; doubled before each later one (0.5, 1, 2 s)
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def file_version(info: pafs.FileInfo) -> str | None:
    """What identifies a file's content without reading it: "size:mtime_ns" (None when the filesystem lacks one).
    The ledger keeps it with each row, so a re-run redoes an input replaced in place."""
    if info.size is None or info.mtime_ns is None:
        return None
    return f"{info.size}:{info.mtime_ns}"


def _read_once(uri: str, max_bytes: int) -> tuple[bytes, str | None]:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise Reject("unreadable", f"{uri} is not a file (it is {info.type.name.lower()})")
    if info.size is not None and info.size > max_bytes:
        raise Reject("file_too_large", f"{info.size} bytes is over decode.max_file_bytes={max_bytes}")
    with fs.open_input_stream(path) as f:
        data = f.read(max_bytes + 1)  # capped: a file that grew, or whose size was unknown, stops past the limit
    if len(data) > max_bytes:
        raise Reject("file_too_large", f"more than decode.max_file_bytes={max_bytes} bytes")
    if not data:
        raise Reject("empty_file", f"{uri} has zero bytes")
    return data, file_version(info)


def read_input(uri: str, max_bytes: int) -> tuple[bytes, str | None]:
    """The file's bytes and version; raises Reject (unreadable, empty_file, file_too_large) or NotDone."""
    for attempt in range(ATTEMPTS):
        try:
            return _read_once(uri, max_bytes)
        except PERMANENT as error:
            raise Reject("unreadable", f"cannot read {uri}: {error}") from error
        except OSError as error:
            if attempt == ATTEMPTS - 1:
                raise NotDone(
                    f"cannot read {uri} after {ATTEMPTS} attempts ({error}); the next run retries it"
                ) from error
            time.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """`read_input` without the version."""
    return read_input(uri, max_bytes)[0]
