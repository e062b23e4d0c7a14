"""Exact de-duplication across the whole input: the same bytes under several URIs are one sample.

The kept copy is the one with the smallest source URI, a rule that depends only on the inputs, never on which
worker finished first; the others become `duplicate` rejects naming the kept sample_id.
"""

from __future__ import annotations


def kept_copies(hashes: dict[str, str]) -> dict[str, str]:
    """sample_id -> the source URI kept for it, from source_uri -> sample_id of all inputs (done or to do)."""
    kept: dict[str, str] = {}
    for uri, sample_id in hashes.items():
        if sample_id not in kept or uri < kept[sample_id]:
            kept[sample_id] = uri
    return kept
