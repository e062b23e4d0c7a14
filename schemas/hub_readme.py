"""The dataset folder's README.md: a Hugging Face dataset card whose `configs:` name the rows and the rejects apart.

With it, `datasets.load_dataset(FOLDER)` loads the curated rows (config `stickers`, the default) and
`load_dataset(FOLDER, "rejects")` the rejects, instead of mixing the two tables' files. Rewritten with card.json.
"""

from __future__ import annotations

from typing import Any

from rdtf.schemas.layout import CARD_FILE, DATA_DIR, REJECTS_DIR

README_FILE = "README.md"

FRONT_MATTER = f"""---
configs:
- config_name: stickers
  default: true
  data_files:
  - split: train
    path: {DATA_DIR}/*.parquet
- config_name: rejects
  data_files:
  - split: train
    path: {REJECTS_DIR}/*.parquet
tags:
- rdtf
- animated-stickers
---
"""


def render(card: dict[str, Any]) -> str:
    """The README text for `card` (the dataset's card.json as a dict)."""
    counts = card.get("counts") or {}
    lines = [
        FRONT_MATTER,
        "# An rdtf animated-sticker dataset",
        "",
        f"Written by rdtf {card.get('software_version')} (schema {card.get('schema_version')}), status "
        f"**{card.get('status')}**, updated {card.get('updated')}: {counts.get('rows', '?')} rows, "
        f"{counts.get('rejects', '?')} rejects.",
        "",
        f"- `{DATA_DIR}/`: one row per sticker (frames as zstd-compressed RGB bytes, keyframe sets, captions, "
        "entropies, static difficulty, CLIP embedding and tags when the CLIP stage ran).",
        f"- `{REJECTS_DIR}/`: one row per input that did not become a row, with its reason.",
        f"- `{CARD_FILE}`: how it was made (the full configuration, the CLIP weights, counts by reason).",
        "",
        "```python",
        "from datasets import load_dataset",
        'rows = load_dataset("PATH")             # the stickers',
        'rejects = load_dataset("PATH", "rejects")',
        "```",
        "",
    ]
    return "\n".join(lines)
