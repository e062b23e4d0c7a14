"""`rdtf search` over real stickers embedded by the tiny CLIP model at seeded random weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rdtf.jobs.cli import main
from rdtf.jobs.search import QueryEncoder
from rdtf.jobs.search_index import INDEX_DIR, SearchError, build, files_of, load
from rdtf.schemas.dataset import SAMPLE_SCHEMA
from rdtf.schemas.reader import open_dataset

PLANTED = "f" * 64


def result_ids(out: str) -> list[str]:
    """The sample_id column (12 characters) of `rdtf search`'s printed results."""
    return [line.split()[2] for line in out.splitlines()[1:] if line.strip()]


def test_a_planted_row_comes_first_and_the_index_follows_the_files(
    clip_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(clip_dataset, dataset)
    query = "a cat waving hello"
    assert main(["search", str(dataset), query, "-k", "5"]) == 0
    first = capsys.readouterr()
    assert "building the search index" in first.err and len(result_ids(first.out)) == 5
    assert PLANTED[:12] not in result_ids(first.out)
    assert main(["search", str(dataset), query, "-k", "5"]) == 0  # the saved index is current: not rebuilt
    again = capsys.readouterr()
    assert "building" not in again.err and result_ids(again.out) == result_ids(first.out)

    # A row whose embedding is the query's own, in a new file: the index is rebuilt and the row comes first.
    reader = open_dataset(str(dataset))
    card = reader.card
    vector = QueryEncoder(card["clip"], None, card["config"]["clip"]["seed"]).text(query)
    row = reader.read().slice(0, 1).to_pylist()[0]
    row |= {"sample_id": PLANTED, "source_uri": "/planted.gif", "clip_embedding": vector.astype(np.float16)}
    pq.write_table(pa.Table.from_pylist([row], SAMPLE_SCHEMA), dataset / "data" / "part-planted.parquet")
    assert main(["search", str(dataset), query, "-k", "5"]) == 0
    planted = capsys.readouterr()
    assert "building the search index" in planted.err
    assert result_ids(planted.out)[0] == PLANTED[:12]
    assert float(planted.out.splitlines()[1].split()[1]) == pytest.approx(1.0, abs=2e-3)  # float16 storage


def test_search_by_example_finds_the_same_sticker(
    clip_dataset: Path, stickers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = open_dataset(str(clip_dataset))
    rows = reader.read(columns=["sample_id", "source_uri"]).to_pylist()
    for row in rows[:3]:
        assert main(["search", str(clip_dataset), "--image", row["source_uri"], "-k", "3"]) == 0
        assert result_ids(capsys.readouterr().out)[0] == row["sample_id"][:12]


def test_an_exact_index_matches_brute_force(clip_dataset: Path) -> None:
    reader = open_dataset(str(clip_dataset))
    built = build(reader, reader.card["clip"])
    table = reader.read(columns=["sample_id", "clip_embedding"])
    matrix = np.stack([np.asarray(v, np.float32) for v in table["clip_embedding"].to_pylist()])
    query = matrix[3] + 0.1 * matrix[5]
    query /= np.linalg.norm(query)
    expected = [table["sample_id"][int(i)].as_py() for i in np.argsort(-(matrix @ query))[:5]]
    assert built.search(query, 5)["sample_id"].to_pylist() == expected
    assert built.meta["files"] == files_of(reader.layout) and built.meta["rows"] == table.num_rows


def test_refusals(
    clip_dataset: Path, sticker_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", str(sticker_dataset), "a cat"]) == 2
    assert "has no CLIP embeddings" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    other.write_bytes(b"another checkpoint")
    assert main(["search", str(clip_dataset), "a cat", "--clip-weights", str(other)]) == 2
    assert "is not the checkpoint that made" in capsys.readouterr().err
    assert main(["search", str(clip_dataset), "   "]) == 2
    assert "empty" in capsys.readouterr().err
    assert load(open_dataset(str(sticker_dataset)).layout) is None
    assert not (sticker_dataset / INDEX_DIR).exists()


def test_a_dataset_embedded_with_a_pretrained_tag_is_searchable_with_that_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag resolves to its cached download, hashed like the pipeline hashed it (no hub here: the download is a
    local checkpoint of the tiny model, handed over by open_clip's own download function)."""
    import open_clip
    import open_clip.pretrained
    import torch

    from rdtf.pipeline.clip_models import RANDOM, Weights, file_sha256, load_model

    checkpoint = tmp_path / "tiny.pt"
    torch.save(load_model(Weights("k", "rdtf-tiny-clip", RANDOM, RANDOM, RANDOM), seed=3).state_dict(), checkpoint)
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda model: ["cached_tag"])
    monkeypatch.setattr(open_clip.pretrained, "get_pretrained_cfg", lambda model, tag: {"tag": tag})
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda cfg, **kwargs: str(checkpoint))
    card = {"model": "rdtf-tiny-clip", "weights": "cached_tag", "weights_sha256": file_sha256(str(checkpoint))}
    from_tag = QueryEncoder(card, None, seed=0).text("a cat")  # seed 0: only the checkpoint can make it seed 3's
    seed_3 = QueryEncoder({"model": "rdtf-tiny-clip", "weights": RANDOM}, None, seed=3).text("a cat")
    np.testing.assert_allclose(from_tag, seed_3, atol=1e-5)
    with pytest.raises(SearchError, match="is not the checkpoint"):
        QueryEncoder(card | {"weights_sha256": "0" * 64}, None, seed=0)
