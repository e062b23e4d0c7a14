"""rdtf: train an animated-sticker generation model from raw GIFs (RDTF, arXiv 2503.17735).

The command line (`rdtf --help`) is the main way in. From Python, the curated datasets:

    import rdtf
    ds = rdtf.open_dataset("out/dataset")          # pyarrow: ds.read([...]), ds.iter_batches(); ds.to_pandas([...])
    loader = torch.utils.data.DataLoader(ds.torch(), batch_size=None)   # frames as (f, h, w, 3) uint8 tensors
    rdtf.query("out/dataset", "SELECT caption FROM stickers WHERE static_difficulty > 0.8")  # DuckDB -> Arrow
    rdtf.search("out/dataset", "a cat waving hello", k=20)                # CLIP text search -> Arrow

The layout's folders (schemas/, pipeline/, trainer/, jobs/) are its subpackages, `rdtf.schemas` and so on. Importing
`rdtf` loads none of them: the names above are imported on first use, so a Ray worker that imports
`rdtf.pipeline.decode` does not pay for DuckDB, FAISS or torch.
"""

from importlib import import_module
from typing import Any

__all__ = ["open_dataset", "query", "search"]

_HOMES = {
    "open_dataset": "rdtf.schemas.reader",
    "query": "rdtf.schemas.query",
    "search": "rdtf.jobs.search",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'rdtf' has no attribute {name!r}")
