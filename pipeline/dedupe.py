"""Exact de-duplication: the same bytes under several URIs are one sample, across this run and every earlier one.

A sample already in the dataset keeps its row: a new input with the same bytes is a `duplicate` of it. Among new
inputs only, the kept copy is the one with the smallest source URI, a rule that depends only on the inputs, never on
which worker finished first. Both are joins and group-bys on Arrow tables, so the driver holds no Python object per
input.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def kept_copies(new: pa.Table, existing: pa.Table) -> pa.Table:
    """sample_id -> kept_uri for every sample_id of `new` (source_uri, sample_id of readable new inputs), given the
    dataset's rows `existing` (source_uri, sample_id)."""
    existing = existing.filter(pc.is_in(existing["sample_id"], value_set=new["sample_id"]))  # the few that matter
    old = existing.select(["sample_id", "source_uri"]).group_by("sample_id").aggregate([("source_uri", "min")])
    fresh = new.select(["sample_id", "source_uri"]).group_by("sample_id").aggregate([("source_uri", "min")])
    fresh = fresh.join(old.select(["sample_id"]), "sample_id", join_type="left anti")
    kept = pa.concat_tables(
        [old.select(["sample_id", "source_uri_min"]), fresh.select(["sample_id", "source_uri_min"])]
    )
    return kept.rename_columns(["sample_id", "kept_uri"])


def duplicates(new: pa.Table, existing: pa.Table) -> pa.Table:
    """The rows of `new` that are not their sample's kept copy, with a `kept_uri` column, sorted by URI."""
    joined = new.join(kept_copies(new, existing), "sample_id")
    return joined.filter(pc.not_equal(joined["source_uri"], joined["kept_uri"])).sort_by("source_uri")
