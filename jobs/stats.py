"""`rdtf stats DATASET [--html OUT.html]`: what is in a curated dataset, from SQL aggregates over its columns.

Every figure is one DuckDB aggregate over the `stickers` and `rejects` views (schemas.query), which read only the
columns they name, so the cost grows with the rows' metadata, not with their frames. The page (`--html`) adds a
gallery read from the first files only (jobs/stats_page.py).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

import duckdb

from rdtf.schemas.config import ConfigError
from rdtf.schemas.query import connect
from rdtf.schemas.reader import DatasetReader, open_dataset

BINS = 10  # bars per histogram
TOP_TAGS = 15
BAR = 30  # characters of the longest bar in the terminal

# (title, SQL expression over `stickers`): the distributions shown as histograms.
HISTOGRAMS = (
    ("frames in the original", "num_frames"),
    ("duration, seconds", "list_sum(frame_durations_ms) / 1000.0"),
    ("spatial entropy, bits", "spatial_entropy"),
    ("temporal entropy, bits", "temporal_entropy"),
    ("static difficulty", "static_difficulty"),
)


@dataclass
class Histogram:
    title: str
    edges: list[float]  # BINS + 1 edges, equal widths from the smallest value to the largest
    counts: list[int]


@dataclass
class DatasetStats:
    """The figures of `rdtf stats`: counts from the files (not the card), distributions and tallies."""

    uri: str
    card: dict[str, Any]
    rows: int
    rejects: int
    histograms: list[Histogram] = field(default_factory=list)
    caption_sources: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)  # the TOP_TAGS most frequent zero-shot tags
    rejects_by_reason: dict[str, int] = field(default_factory=dict)


def add_stats_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "stats",
        help="what is in a curated dataset: counts, distributions, rejects; --html for a page with thumbnails",
        description=(
            "Print the dataset's counts, histograms of frame count, duration, entropies and static difficulty, "
            "caption sources, the most frequent tags and the rejects by reason. With --html OUT.html, also write "
            "one self-contained page with the same plots and animated thumbnails: a sticker per difficulty decile "
            "and rejects with their reasons."
        ),
        epilog="Every figure and the page: docs/query.md (Looking at a dataset).",
    )
    parser.add_argument("dataset", metavar="DATASET", help="a dataset folder or URI written by rdtf preprocess")
    parser.add_argument("--html", metavar="OUT.html", help="also write a page to open in a browser")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.html:  # told now, not after every figure is printed
        folder = os.path.dirname(os.path.abspath(args.html))
        if not os.path.isdir(folder):
            raise ConfigError(f"--html {args.html}: the folder {folder} does not exist")
        if os.path.isdir(args.html):
            raise ConfigError(f"--html {args.html} is a folder: give a file name for the page (OUT.html)")
    reader = open_dataset(args.dataset)
    stats = compute(reader, args.dataset)
    print(render_text(stats))
    if args.html:
        from rdtf.jobs.stats_page import write_page

        thumbnails = write_page(stats, reader, args.html)
        print(f"\nwrote {args.html} ({thumbnails} thumbnails)")
    return 0


def compute(reader: DatasetReader, uri: str) -> DatasetStats:
    con = connect(reader)
    stats = DatasetStats(uri, reader.card, _one(con, "SELECT count(*) FROM stickers"), 0)
    stats.rejects = _one(con, "SELECT count(*) FROM rejects")
    stats.histograms = [histogram(con, title, expr) for title, expr in HISTOGRAMS]
    stats.caption_sources = _tally(con, "SELECT coalesce(caption_source, 'none'), count(*) FROM stickers GROUP BY 1")
    stats.tags = _tally(
        con,
        f"SELECT t.tag, count(*) FROM (SELECT unnest(tags) AS t FROM stickers) GROUP BY 1 "
        f"ORDER BY 2 DESC, 1 LIMIT {TOP_TAGS}",
    )
    stats.rejects_by_reason = _tally(con, "SELECT reason, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC, 1")
    return stats


def histogram(con: duckdb.DuckDBPyConnection, title: str, expr: str) -> Histogram:
    """BINS equal-width bins from the smallest value of `expr` to the largest (the largest falls in the last)."""
    low, high = con.execute(f"SELECT min({expr}), max({expr}) FROM stickers").fetchone()
    if low is None:
        return Histogram(title, [], [])
    low, high = float(low), float(high)
    width = (high - low) / BINS or 1.0
    sql = (
        f"SELECT least(CAST(floor(({expr} - {low!r}) / {width!r}) AS INTEGER), {BINS - 1}) AS bin, count(*) "
        f"FROM stickers WHERE {expr} IS NOT NULL GROUP BY bin"
    )
    counts = [0] * BINS
    for bin_, count in con.execute(sql).fetchall():
        counts[bin_] = count
    return Histogram(title, [low + i * width for i in range(BINS + 1)], counts)


def render_text(stats: DatasetStats) -> str:
    card = stats.card
    lines = [f"dataset {stats.uri}"]
    if card:
        lines.append(
            f"  status {card.get('status')}, schema {card.get('schema_version')}, written by rdtf "
            f"{card.get('software_version')}, updated {card.get('updated')}"
        )
        lines.append(f"  CLIP: {_clip_line(card.get('clip') or {})}")
        if "derived_from" in card:
            lines.append(f"  selected from {card['derived_from']['dataset']} by: {card['derived_from']['query']}")
    lines.append(f"  {stats.rows} rows, {stats.rejects} rejects, {stats.rows + stats.rejects} inputs")
    for hist in stats.histograms:
        lines += ["", f"{hist.title}:"] + _bars(
            {f"{lo:9.3g} - {hi:<9.3g}": n for lo, hi, n in zip(hist.edges, hist.edges[1:], hist.counts, strict=False)}
        )
    for title, tally in (
        ("caption sources", stats.caption_sources),
        (f"tags (top {TOP_TAGS})", stats.tags),
        ("rejects by reason", stats.rejects_by_reason),
    ):
        lines += ["", f"{title}:"] + (_bars(tally) if tally else ["  (none)"])
    return "\n".join(lines)


def _bars(tally: dict[str, int]) -> list[str]:
    top = max(tally.values(), default=0) or 1
    width = max((len(k) for k in tally), default=0)
    return [f"  {k:<{width}} {'█' * round(BAR * n / top):<{BAR}} {n}" for k, n in tally.items()]


def _clip_line(clip: dict[str, Any]) -> str:
    if clip.get("status") == "skipped":
        return f"not run ({clip.get('reason')})"
    return ", ".join(f"{k} {v}" for k, v in clip.items() if isinstance(v, str | int | float)) or "ran"


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchone()[0])


def _tally(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, int]:
    return {str(key): int(count) for key, count in con.execute(sql).fetchall()}
