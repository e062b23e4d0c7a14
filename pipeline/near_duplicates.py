"""Near-duplicates across the whole dataset, by CLIP embedding cosine, without comparing all pairs (docs/clip.md).

1. Read sample_id, source_uri and clip_embedding of every row (Ray Data, only those columns).
2. Cluster: k = ceil(rows / clip.near_duplicate_cluster_rows) centroids by k-means on a sample -- the rows whose
   sample_id (a sha256) falls below a cut: a uniform sample that no scheduling can change -- and every row joins
   its nearest centroid. With one cluster (up to near_duplicate_cluster_rows rows) the search is exact and runs on
   the driver; with more, a pair split across two clusters is missed, as in SemDeDup (Abbas et al., 2023), which
   this follows.
3. Within each cluster (a Ray Data groupby), every pair at or above the threshold is an edge; edges are few,
   because near-duplicates are rare, and only they come back to the driver.
4. Greedily, in order of priority, a row is kept unless it is near a row already kept; it is then dropped, and its
   reject names the first kept row it is near. Priority: rows that earlier passes named as kept come first (so a
   reject never names a dropped row), then the smallest source URI, as the exact de-duplication does. The result
   depends only on the rows, never on scheduling; and removing rows the greedy dropped changes no other decision,
   so running the pass again on its own result finds nothing new.
5. Move: one rejects file for the whole pass (the commit point), then every data file that holds a dropped row is
   rewritten without it (`drop_rejected_rows`). A run killed between the two leaves rows that are also rejects;
   the next run, seeing that the last one did not finish, calls `drop_rejected_rows` first, which finishes the move.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rdtf.pipeline import ledger
from rdtf.pipeline.write import shard_name, write_table
from rdtf.schemas.dataset import REJECT_SCHEMA
from rdtf.schemas.layout import DATA_DIR, REJECTS_DIR, DatasetLayout
from rdtf.schemas.reader import footers

STAGE = "near_duplicates"
REASON = "near_duplicate"
COLUMNS = ["sample_id", "source_uri", "clip_embedding"]
SAMPLE_PER_CLUSTER = 64  # k-means sample rows per centroid: a few dozen points per centroid fit it well
KMEANS_ITERATIONS = 20
SEED = 0  # k-means initialisation
HASH_SPACE = 16**8  # the first 8 hex digits of a sample_id, as an integer, are uniform in [0, HASH_SPACE)
# Shuffle partitions of the groupby: one per cluster up to Ray Data's default (200); a partition holds whole clusters.
MAX_PARTITIONS = 200
PAIR_CHUNK = 1024  # rows compared with their whole cluster at once: 1024 x 20,000 float32 is 80 MB
CANDIDATE_MARGIN = 1e-4  # far above float32 rounding of a 512-term dot product of unit vectors (about 1e-6)


def embeddings(table: pa.Table) -> np.ndarray:
    """(n, d) float64 unit rows from a clip_embedding column (float16 lists of equal length), renormalized."""
    column = table.column("clip_embedding").combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    matrix = flat.reshape(len(column), -1)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


EDGE_SCHEMA = pa.schema(
    [("a", pa.string()), ("a_uri", pa.string()), ("b", pa.string()), ("b_uri", pa.string()), ("cosine", pa.float64())]
)


def _with_embedding(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch["clip_embedding"]))


def _sample(batch: pa.Table, cut: int) -> pa.Table:
    batch = _with_embedding(batch)
    prefixes = np.array([int(s[:8], 16) for s in batch.column("sample_id").to_pylist()], dtype=np.int64)
    return batch.filter(pa.array(prefixes < cut))


def _assign(batch: pa.Table, centroids: np.ndarray) -> pa.Table:
    """Add `cluster`: the nearest centroid of each row."""
    batch = _with_embedding(batch)
    nearest = np.argmax(embeddings(batch).astype(np.float32) @ centroids.T, axis=1).astype(np.int32)
    return batch.append_column("cluster", pa.array(nearest))


def _pairs(group: pa.Table, threshold: float) -> pa.Table:
    """Every pair of rows of one cluster whose cosine is at or above `threshold`.

    Candidates come from float32 matrix products, whose rounding depends on the cluster's size; each is then
    decided by its own float64 dot product, so that a pair's fate depends on the two rows alone.
    """
    exact = embeddings(group)
    vectors = exact.astype(np.float32)
    ids, uris = group.column("sample_id").to_pylist(), group.column("source_uri").to_pylist()
    found: dict[str, list[Any]] = {name: [] for name in EDGE_SCHEMA.names}
    for begin in range(0, len(vectors), PAIR_CHUNK):
        similarity = vectors[begin : begin + PAIR_CHUNK] @ vectors.T
        rows, columns = np.nonzero(similarity >= threshold - CANDIDATE_MARGIN)
        for i, j in zip((rows + begin).tolist(), columns.tolist(), strict=True):
            cosine = float(exact[i] @ exact[j])
            if j > i and cosine >= threshold:  # each pair once, never a row with itself
                found["a"].append(ids[i])
                found["a_uri"].append(uris[i])
                found["b"].append(ids[j])
                found["b_uri"].append(uris[j])
                found["cosine"].append(cosine)
    return pa.table(found, schema=EDGE_SCHEMA)


def centroids_from_sample(dataset: Any, rows: int, clusters: int) -> np.ndarray:
    """Step 2: k-means centroids (unit rows) from the rows whose sample_id falls below a cut."""
    from scipy.cluster.vq import kmeans2

    cut = min(HASH_SPACE, math.ceil(HASH_SPACE * SAMPLE_PER_CLUSTER * clusters / rows))
    sample = dataset.map_batches(_sample, fn_kwargs={"cut": cut}, batch_format="pyarrow")
    batches = list(sample.iter_batches(batch_format="pyarrow", batch_size=None))
    table = pa.concat_tables(batches).sort_by("sample_id")  # an order that no scheduling can change
    vectors = embeddings(table)
    found, _ = kmeans2(
        vectors, min(clusters, len(vectors)), iter=KMEANS_ITERATIONS, minit="++", seed=np.random.default_rng(SEED)
    )
    return (found / np.maximum(np.linalg.norm(found, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def find_edges(layout: DatasetLayout, threshold: float, cluster_rows: int) -> pa.Table:
    """Every pair of rows found at or above `threshold` (steps 1-3), as EDGE_SCHEMA."""
    import ray

    files = layout.parquet_files(DATA_DIR)
    rows = sum(footer.num_rows for footer in footers(layout.fs, tuple(files)))
    if rows < 2:
        return EDGE_SCHEMA.empty_table()
    clusters = math.ceil(rows / cluster_rows)
    if clusters == 1:  # few enough rows to compare here, exactly: a Ray shuffle would cost more than the comparison
        tables = [pq.read_table(f, columns=COLUMNS, filesystem=layout.fs) for f in files]
        return _pairs(_with_embedding(pa.concat_tables(tables)), threshold)
    dataset = ray.data.read_parquet(files, filesystem=layout.fs).select_columns(COLUMNS)
    centroids = centroids_from_sample(dataset, rows, clusters)
    assigned = dataset.map_batches(_assign, fn_kwargs={"centroids": centroids}, batch_format="pyarrow")
    grouped = assigned.groupby("cluster", num_partitions=min(clusters, MAX_PARTITIONS))
    edges = grouped.map_groups(_pairs, fn_kwargs={"threshold": threshold}, batch_format="pyarrow")
    tables = [t.cast(EDGE_SCHEMA) for t in edges.iter_batches(batch_format="pyarrow", batch_size=None)]
    return pa.concat_tables(tables) if tables else EDGE_SCHEMA.empty_table()


def choose(edges: pa.Table, uris: dict[str, str], protected: set[str]) -> dict[str, tuple[str, float]]:
    """Step 4: dropped sample_id -> (the kept sample_id it is near, their cosine)."""
    neighbours: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for a, b, cosine in zip(*(edges.column(c).to_pylist() for c in ("a", "b", "cosine")), strict=True):
        neighbours[a].append((b, cosine))
        neighbours[b].append((a, cosine))
    order = sorted(neighbours, key=lambda s: (s not in protected, uris[s], s))
    rank = {s: n for n, s in enumerate(order)}
    kept: set[str] = set()
    dropped: dict[str, tuple[str, float]] = {}
    for sample_id in order:
        near = [(rank[other], other, cosine) for other, cosine in neighbours[sample_id] if other in kept]
        if near:
            _, other, cosine = min(near)
            dropped[sample_id] = (other, cosine)
        else:
            kept.add(sample_id)
    return dropped


def _pass_files(layout: DatasetLayout) -> list[str]:
    """The rejects files of earlier near-duplicate passes (one per pass, named after STAGE)."""
    return [p for p in layout.parquet_files(REJECTS_DIR) if p.rsplit("/", 1)[-1].startswith(f"{STAGE}-")]


def kept_by_earlier_passes(layout: DatasetLayout) -> set[str]:
    """The sample_ids that near_duplicate rejects already name as kept (as many as earlier passes dropped)."""
    files = _pass_files(layout)
    if not files:
        return set()
    table = pads.dataset(files, format="parquet", filesystem=layout.fs).to_table(columns=["kept_sample_id"])
    return set(table["kept_sample_id"].drop_null().to_pylist())


def drop_rejected_rows(layout: DatasetLayout, uris: pa.Array | None = None) -> int:
    """Remove the rows of near-duplicate rejects from the data files (threaded, ledger.drop_inputs); how many went.

    `uris`: those a pass just moved; by default those of every near-duplicate rejects file, which is what a pass
    killed between its commit and its move leaves to do (other rejects never have rows).
    """
    if uris is None:
        files = _pass_files(layout)
        if not files:
            return 0
        found = pads.dataset(files, format="parquet", filesystem=layout.fs).to_table(columns=["source_uri"])
        uris = found["source_uri"].combine_chunks()
    return ledger.drop_inputs(layout, uris, kinds=(DATA_DIR,)) if len(uris) else 0


def near_duplicate_pass(layout: DatasetLayout, threshold: float, cluster_rows: int) -> list[str]:
    """Steps 1-5 over every row of the dataset; the source URIs of the rows moved to the rejects."""
    edges = find_edges(layout, threshold, cluster_rows)
    uris = dict(zip(edges["a"].to_pylist(), edges["a_uri"].to_pylist(), strict=True))
    uris.update(zip(edges["b"].to_pylist(), edges["b_uri"].to_pylist(), strict=True))
    dropped = choose(edges, uris, kept_by_earlier_passes(layout))
    if not dropped:
        return []
    rejects = sorted(
        (
            {
                "source_uri": uris[sample_id],
                "sample_id": sample_id,
                "stage": STAGE,
                "reason": REASON,
                "message": f"CLIP embedding cosine {cosine:.4f} >= clip.near_duplicate_threshold={threshold} "
                f"with {uris[kept]}",
                "kept_sample_id": kept,
            }
            for sample_id, (kept, cosine) in dropped.items()
        ),
        key=lambda r: r["source_uri"],
    )
    moved = [r["source_uri"] for r in rejects]
    name = f"{STAGE}-{shard_name(moved).removeprefix('part-')}"
    write_table(layout, REJECTS_DIR, name, pa.Table.from_pylist(rejects, REJECT_SCHEMA))
    drop_rejected_rows(layout, pa.array(moved, pa.string()))
    return moved
