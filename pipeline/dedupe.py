"""Exact de-duplication: the same bytes under several URIs are one sample, across this run and every earlier one.

A sample already in the dataset keeps its row: a new input with the same bytes is a `duplicate` of it. Among new
inputs only, the kept copy is the one with the smallest source URI, a rule that depends only on the inputs, never on
which worker finished first. Both are joins and group-bys in the run's workspace (pipeline/workspace.py, DuckDB),
so the driver holds neither the inputs nor the dataset's rows.
"""

from __future__ import annotations


def kept_copies(new: str, existing: str) -> str:
    """A query: sample_id -> kept_uri for every sample_id of `new` (a table or query with source_uri, sample_id of
    readable new inputs), given the dataset's rows `existing` (source_uri, sample_id)."""
    return f"""
        WITH old AS (
            SELECT sample_id, min(source_uri) AS kept_uri FROM ({existing})
            WHERE sample_id IN (SELECT sample_id FROM ({new})) GROUP BY sample_id  -- the few that matter
        ), fresh AS (
            SELECT sample_id, min(source_uri) AS kept_uri FROM ({new}) ANTI JOIN old USING (sample_id)
            GROUP BY sample_id
        )
        SELECT * FROM old UNION ALL SELECT * FROM fresh
    """


def duplicates(new: str, existing: str) -> str:
    """A query: the rows of `new` that are not their sample's kept copy, with a `kept_uri` column."""
    return f"""
        SELECT n.*, k.kept_uri FROM ({new}) n JOIN ({kept_copies(new, existing)}) k USING (sample_id)
        WHERE n.source_uri <> k.kept_uri
    """
