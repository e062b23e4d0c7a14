"""The page of `rdtf stats --html`: one self-contained HTML file (inline SVG plots, GIF thumbnails as data URIs).

Nothing on it is fetched from anywhere, so it opens from a laptop's disk or a mail attachment alike. Thumbnails: one
sticker per static-difficulty decile (decile edges from the whole dataset; stickers read from the first files until
every decile has one, so the cost does not grow with the dataset) and a few rejects per reason, drawn from their
source file where decoding it is safe, else a tile that names the reason.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
from typing import Any

import numpy as np
from PIL import Image

from rdtf.jobs.stats import DatasetStats, Histogram
from rdtf.schemas.frames import decode_frames
from rdtf.schemas.layout import resolve
from rdtf.schemas.query import connect
from rdtf.schemas.reader import DatasetReader

THUMB = 96  # pixels, the longer side of a thumbnail
REJECTS_PER_REASON = 3
MAX_SOURCE_BYTES = 16 * 2**20  # a reject's file larger than this is not read for its thumbnail
MAX_FRAMES = 24  # frames of a reject's thumbnail
# Rejects whose file is safe to decode here; the others (unreadable, bombs, crashes, timeouts, ...) get a named tile.
DRAWN_REASONS = {"too_small", "bad_aspect_ratio", "too_few_frames", "low_entropy", "duplicate", "clip_score",
                 "near_duplicate", "truncated"}  # fmt: skip

# After load, the page records on <body> whether every thumbnail decoded and how many script errors happened: what a
# person sees, and what tests/jobs/test_stats.py reads from a headless browser.
CHECK_SCRIPT = """
let errors = 0;
window.addEventListener("error", () => { errors += 1; document.body.dataset.errors = errors; });
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((img) => !img.complete || img.naturalWidth === 0).length;
  document.body.dataset.thumbnails = images.length;
  document.body.dataset.broken = broken;
  document.body.dataset.errors = errors;
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 1rem; }
figure { margin: 0; } figcaption { font-size: 0.85rem; color: #555; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.75rem; }
.tile { width: 120px; font-size: 0.75rem; overflow-wrap: anywhere; }
.tile img { width: 96px; height: 96px; object-fit: contain; background: #f4f4f4; border: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 0.2rem 0.6rem; text-align: left; border-bottom: 1px solid #eee; }
"""


def write_page(stats: DatasetStats, reader: DatasetReader, path: str) -> int:
    """Write the page to local `path`; the number of thumbnails on it."""
    deciles = decile_samples(reader)
    rejects = reject_samples(reader)
    parts = [f"<h1>rdtf dataset {_e(stats.uri)}</h1>", _summary(stats), "<h2>Distributions</h2><div class='plots'>"]
    parts += [f"<figure>{_svg(h)}<figcaption>{_e(h.title)}</figcaption></figure>" for h in stats.histograms]
    parts.append("</div>")
    for title, tally in (
        ("Caption sources", stats.caption_sources),
        ("Tags", stats.tags),
        ("Rejects by reason", stats.rejects_by_reason),
    ):
        rows = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in tally.items()) or "<tr><td>none</td></tr>"
        parts.append(f"<h2>{title}</h2><table>{rows}</table>")
    parts.append("<h2>A sticker per static-difficulty decile</h2><div class='gallery'>")
    parts += [_tile(gif, f"decile {d + 1}: {difficulty:.3f}", caption) for d, (gif, difficulty, caption) in deciles]
    parts.append("</div><h2>Rejects</h2><div class='gallery'>")
    parts += [_tile(image, reason, f"{uri.rsplit('/', 1)[-1]}: {message}") for image, reason, uri, message in rejects]
    parts.append("</div>")
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>rdtf dataset</title>"
        f"<style>{STYLE}</style><script>{CHECK_SCRIPT}</script></head><body>{''.join(parts)}</body></html>"
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return len(deciles) + len(rejects)


def decile_samples(reader: DatasetReader) -> list[tuple[int, tuple[str, float, str]]]:
    """(decile, (GIF data URI, difficulty, caption)) for each decile that has a sticker in the files read."""
    con = connect(reader)
    edges = con.execute("SELECT quantile_cont(static_difficulty, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]) "
                    "FROM stickers").fetchone()[0]  # fmt: skip
    if edges is None:
        return []
    found: dict[int, tuple[str, float, str]] = {}
    columns = ["static_difficulty", "caption", "frames", "frame_timestamps_ms"]
    for batch in reader.iter_batches(columns=columns, batch_size=256):
        for row in batch.to_pylist():
            decile = bisect.bisect_right(edges, row["static_difficulty"])
            if decile not in found:
                durations = np.diff(row["frame_timestamps_ms"], append=row["frame_timestamps_ms"][-1] + 100)
                gif = _gif(list(decode_frames(row["frames"])), [int(d) for d in durations])
                found[decile] = (gif, row["static_difficulty"], row["caption"] or "")
        if len(found) == len(edges) + 1:
            break
    return sorted(found.items())


def reject_samples(reader: DatasetReader) -> list[tuple[str, str, str, str]]:
    """(image data URI, reason, source URI, message) for up to REJECTS_PER_REASON rejects of each reason."""
    sql = (
        "SELECT source_uri, reason, message FROM rejects "
        f"QUALIFY row_number() OVER (PARTITION BY reason ORDER BY source_uri) <= {REJECTS_PER_REASON} "
        "ORDER BY reason, source_uri"
    )
    return [
        (_reject_image(uri, reason), reason, uri, message)
        for uri, reason, message in connect(reader).execute(sql).fetchall()
    ]


def _reject_image(uri: str, reason: str) -> str:
    if reason in DRAWN_REASONS:
        try:
            fs, path = resolve(uri)
            if fs.get_file_info(path).size <= MAX_SOURCE_BYTES:
                with fs.open_input_file(path) as f:
                    return _gif_of_file(f.read())
        except Exception:  # noqa: BLE001 -- a thumbnail that cannot be drawn becomes the named tile below
            pass
    return _placeholder(reason)


def _gif_of_file(data: bytes) -> str:
    frames, durations = [], []
    with Image.open(io.BytesIO(data)) as image:
        for index in range(min(getattr(image, "n_frames", 1), MAX_FRAMES)):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
            durations.append(int(image.info.get("duration", 100)) or 100)
    return _gif(frames, durations)


def _gif(frames: list[np.ndarray], durations: list[int]) -> str:
    images = [Image.fromarray(frame) for frame in frames]
    for image in images:
        image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode()


def _placeholder(reason: str) -> str:
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{THUMB}' height='{THUMB}'><rect width='100%' height='100%' "
        f"fill='#eee'/><text x='50%' y='50%' font-size='10' text-anchor='middle' fill='#a33'>{_e(reason)}</text></svg>"
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def _tile(image: str, title: str, text: str) -> str:
    return f"<div class='tile'><img src='{image}' alt='{_e(title)}'><b>{_e(title)}</b><br>{_e(text[:80])}</div>"


def _svg(hist: Histogram, width: int = 320, height: int = 140) -> str:
    """A bar chart: one bar per bin, the count above it, the first and last edges under the axis."""
    if not hist.counts:
        return "<p>no values</p>"
    top, bar = max(hist.counts) or 1, width / len(hist.counts)
    bars = []
    for i, count in enumerate(hist.counts):
        h = (height - 40) * count / top
        x, y = i * bar, height - 20 - h
        label = f"{hist.edges[i]:.3g} - {hist.edges[i + 1]:.3g}: {count}"
        bars.append(
            f"<rect x='{x + 1:.1f}' y='{y:.1f}' width='{bar - 2:.1f}' height='{h:.1f}' fill='#4a7bd0'>"
            f"<title>{label}</title></rect><text x='{x + bar / 2:.1f}' y='{y - 3:.1f}' font-size='9' "
            f"text-anchor='middle'>{count}</text>"
        )
    low, high = f"{hist.edges[0]:.3g}", f"{hist.edges[-1]:.3g}"
    axis = (
        f"<text x='0' y='{height - 5}' font-size='10'>{low}</text>"
        f"<text x='{width}' y='{height - 5}' font-size='10' text-anchor='end'>{high}</text>"
    )
    return f"<svg width='{width}' height='{height}' role='img'>{''.join(bars)}{axis}</svg>"


def _summary(stats: DatasetStats) -> str:
    card: dict[str, Any] = stats.card
    items = [f"{stats.rows} rows", f"{stats.rejects} rejects", f"{stats.rows + stats.rejects} inputs"]
    if card:
        items += [f"status {card.get('status')}", f"schema {card.get('schema_version')}",
                  f"rdtf {card.get('software_version')}", f"updated {card.get('updated')}"]  # fmt: skip
    return "<p>" + " · ".join(_e(str(item)) for item in items) + "</p>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
