"""The contract between rdtf's stages: Arrow schemas, the dataset layout and the one dataset reader.

Everything that opens a curated dataset goes through `schemas.reader`; `pipeline/` and `trainer/` meet only here.
"""

from rdtf.schemas.dataset import (
    KEYFRAME_COUNTS,
    REJECT_REASONS,
    REJECT_SCHEMA,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
)
from rdtf.schemas.reader import DatasetReader, SchemaVersionError, open_dataset

__all__ = [
    "KEYFRAME_COUNTS",
    "REJECT_REASONS",
    "REJECT_SCHEMA",
    "SAMPLE_SCHEMA",
    "SCHEMA_VERSION",
    "DatasetReader",
    "SchemaVersionError",
    "open_dataset",
]
