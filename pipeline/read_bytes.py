"""Read an input's bytes from any filesystem pyarrow opens, with a size limit checked before reading."""

from __future__ import annotations

import pyarrow.fs as pafs

from pipeline.stage import Reject
from schemas.layout import resolve


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """Return the file's bytes, or raise Reject (unreadable, empty_file, file_too_large)."""
    try:
        fs, path = resolve(uri)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise Reject("unreadable", f"{uri} is not a file (it is {info.type.name.lower()})")
        if info.size is not None and info.size > max_bytes:
            raise Reject("file_too_large", f"{info.size} bytes is over decode.max_file_bytes={max_bytes}")
        with fs.open_input_stream(path) as f:
            data = f.read()
    except Reject:
        raise
    except OSError as error:
        raise Reject("unreadable", f"cannot read {uri}: {error}") from error
    if not data:
        raise Reject("empty_file", f"{uri} has zero bytes")
    return data
