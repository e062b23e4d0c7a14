"""The nearest-neighbour index of a dataset's CLIP embeddings, kept beside the dataset in `index/` (FAISS).

Built once by streaming the `clip_embedding` column (memory: the index itself, not the dataset), saved with the list
of data files it was built from, and rebuilt when that list changes (a resumed or extended preprocessing run). Up to
FLAT_MAX rows the index is exact (inner product over every vector); above it, an inverted file of about 4 sqrt(n)
clusters with vectors kept in float16, searched in NPROBE clusters (recall measured in bench/query.py). Beside it,
`rows.arrow` holds each position's sample_id, caption, source_uri and static difficulty, so a result needs no scan.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from rdtf.schemas.layout import DATA_DIR, TEMP_PREFIX, DatasetLayout
from rdtf.schemas.reader import DatasetReader

INDEX_DIR = "index"
FLAT_MAX = 50_000  # rows up to which the index is exact
NPROBE = 32  # clusters searched per query in the inverted-file index
TRAIN_PER_CLUSTER = 40  # vectors per cluster to train the clustering on (FAISS warns under 39)
ROW_COLUMNS = ["sample_id", "caption", "source_uri", "static_difficulty"]
BATCH_ROWS = 8192


class SearchError(ValueError):
    """The dataset cannot be searched as asked (no embeddings, another CLIP checkpoint, an empty query)."""


@dataclass
class SearchIndex:
    index: faiss.Index
    rows: pa.Table  # ROW_COLUMNS, one row per index position
    meta: dict[str, Any]  # files it was built from, the CLIP model that made the embeddings, kind, dimension

    def search(self, vector: np.ndarray, k: int) -> pa.Table:
        """The k nearest rows to the unit vector `vector`: ROW_COLUMNS and `score` (cosine similarity), best first."""
        if isinstance(self.index, faiss.IndexIVF):
            self.index.nprobe = NPROBE
        scores, positions = self.index.search(vector.reshape(1, -1).astype(np.float32), min(k, self.index.ntotal))
        found = positions[0] >= 0
        table = self.rows.take(pa.array(positions[0][found]))
        return table.append_column("score", pa.array(scores[0][found], pa.float32()))


def files_of(layout: DatasetLayout) -> list[list[Any]]:
    """[name, size] of each data file, from one listing: what the index was built from."""
    selector = pafs.FileSelector(layout.dir(DATA_DIR), allow_not_found=True)
    infos = layout.fs.get_file_info(selector)
    return sorted(
        [i.base_name, i.size]
        for i in infos
        if i.base_name.endswith(".parquet") and not i.base_name.startswith(TEMP_PREFIX)
    )


def build(reader: DatasetReader, clip: dict[str, Any]) -> SearchIndex:
    """Stream the rows with an embedding into a new index (see the module docstring for its kind)."""
    rows = reader.num_rows  # from the files' footers; rows without an embedding are skipped below
    clusters = 0 if rows <= FLAT_MAX else 2 ** round(math.log2(4 * math.sqrt(rows)))
    index: faiss.Index | None = None
    pending: list[np.ndarray] = []  # vectors held until the clustering is trained
    kept: list[pa.RecordBatch] = []
    for batch in reader.iter_batches(columns=[*ROW_COLUMNS, "clip_embedding"], batch_size=BATCH_ROWS):
        batch = batch.filter(batch.column("clip_embedding").is_valid())
        if batch.num_rows == 0:
            continue
        vectors = _matrix(batch.column("clip_embedding"))
        kept.append(batch.select(ROW_COLUMNS))
        if index is None:
            dim = vectors.shape[1]
            if clusters == 0:
                index = faiss.IndexFlatIP(dim)
            else:
                pending.append(vectors)
                if sum(len(v) for v in pending) < clusters * TRAIN_PER_CLUSTER:
                    continue
                index = _trained(np.concatenate(pending), clusters)
                vectors, pending = np.concatenate(pending), []
        index.add(vectors)
    if not kept:
        raise SearchError(
            f"{reader.layout.root} has no CLIP embeddings: preprocess it with --clip-weights PATH to search it"
        )
    if index is None:  # fewer vectors than the clustering wanted: the rows fit an exact index
        index = faiss.IndexFlatIP(pending[0].shape[1])
        index.add(np.concatenate(pending))
    meta = {
        "files": files_of(reader.layout),
        "clip": {key: clip.get(key) for key in ("model", "weights", "weights_sha256")},
        "kind": type(index).__name__,
        "clusters": clusters,
        "rows": int(index.ntotal),
        "dimension": int(index.d),
    }
    return SearchIndex(index, pa.Table.from_batches(kept), meta)


def save(layout: DatasetLayout, built: SearchIndex) -> None:
    """index/clip.faiss, index/rows.arrow and index/meta.json (last: an index without it is never read)."""
    folder = f"{layout.root}/{INDEX_DIR}"
    layout.fs.create_dir(folder, recursive=True)
    sink = io.BytesIO()
    with ipc.new_file(sink, built.rows.schema) as writer:
        writer.write_table(built.rows)
    _write(layout, f"{folder}/clip.faiss", faiss.serialize_index(built.index).tobytes())
    _write(layout, f"{folder}/rows.arrow", sink.getvalue())
    _write(layout, f"{folder}/meta.json", json.dumps(built.meta, indent=2).encode())


def load(layout: DatasetLayout) -> SearchIndex | None:
    """The saved index, or None when there is none or its data files are not the dataset's files now."""
    folder = f"{layout.root}/{INDEX_DIR}"
    if layout.fs.get_file_info(f"{folder}/meta.json").type != pafs.FileType.File:
        return None
    meta = json.loads(_read(layout, f"{folder}/meta.json"))
    if meta.get("files") != files_of(layout):
        return None
    index = faiss.deserialize_index(np.frombuffer(_read(layout, f"{folder}/clip.faiss"), dtype=np.uint8))
    rows = ipc.open_file(pa.py_buffer(_read(layout, f"{folder}/rows.arrow"))).read_all()
    return SearchIndex(index, rows, meta)


def _trained(sample: np.ndarray, clusters: int) -> faiss.Index:
    quantizer = faiss.IndexFlatIP(sample.shape[1])
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, sample.shape[1], clusters, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index.train(sample)
    return index


def _matrix(column: pa.Array) -> np.ndarray:
    """A list<float16> column of equal-length rows -> (n, d) float32."""
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(column), -1)


def _write(layout: DatasetLayout, path: str, data: bytes) -> None:
    folder, name = path.rsplit("/", 1)
    temp = f"{folder}/{TEMP_PREFIX}{name}"
    with layout.fs.open_output_stream(temp) as f:
        f.write(data)
    layout.fs.move(temp, path)


def _read(layout: DatasetLayout, path: str) -> bytes:
    with layout.fs.open_input_stream(path) as f:
        return f.read()
