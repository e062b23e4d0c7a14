"""What the console shows: rdtf's progress, summaries, own warnings and every error. The libraries' notices (open_clip,
diffusers, DeepSpeed, torch) appear only with -v, where they help someone debugging, not someone training."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager


def quiet_libraries() -> None:
    """Without -v: open_clip's "no pretrained weights", diffusers' "accelerate not found", torch's CUDA probe on a CPU
    machine, and anything else a library sends to the root logger below ERROR, stay off the console. DeepSpeed has
    its own handler: `importing_quietly` and trainer.train lower it."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # read when diffusers is first imported
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.name.startswith("rdtf") or record.levelno >= logging.ERROR)


@contextmanager
def importing_quietly() -> Iterator[None]:
    """Import the trainer: DeepSpeed logs its accelerator choice while it is imported, before any level can be set;
    without -v such warnings are dropped for the import's duration."""
    if logging.getLogger("rdtf").isEnabledFor(logging.INFO):
        yield
        return
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
