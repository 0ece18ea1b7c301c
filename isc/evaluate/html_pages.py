"""HTML of the pages: a gallery of pairs as cards (thumbnails or match pictures, captions), the metrics table,
the style, and the self-contained page around them (no script, no network)."""

from __future__ import annotations

import html
import string
from collections.abc import Callable

import pandas as pd
from PIL import Image

from isc.evaluate.metrics import Metrics
from isc.evaluate.pairs import Gallery
from isc.evaluate.thumbnails import SIDES, THUMBNAIL_SIZE, jpeg_data_uri

EMPTY = '<p class="empty">none</p>'  # a gallery without a card


def _format_score(score: float) -> str:
    return "not retrieved" if pd.isna(score) else f"score {score:.4g}"


def pair_caption(row: pd.Series) -> str:
    """One line under a pair: its score and rank, and for a false match the query's true reference."""
    parts = [_format_score(row["score"])]
    if not pd.isna(row.get("rank")):
        parts.append(f"rank {int(row['rank'])} for its query")
    if "true_reference_id" in row:
        parts.append(f"true match {row['true_reference_id']}" if row["true_reference_id"] else "query has no match")
    if row.get("exact"):
        parts.append(f"exact copy: same {row['exact']}")
    if row.get("verified"):
        parts.append(f"{int(row['inliers'])} inliers")
    elif row.get("error"):
        parts.append(f"not verified ({row['error']})")
    return " · ".join(parts)


def gallery_html(gallery: Gallery, thumbnails: dict[tuple[str, str], Image.Image],
                 matches: dict[tuple[str, str], Image.Image] | None = None,
                 label: Callable[[str, str], str] | None = None) -> str:
    """A gallery section: one card per pair, query beside reference, with ids (or ``label(side, id)``, HTML)
    and caption; a pair of ``matches`` (:func:`match_pictures`) is shown as its picture with the inlier matches
    drawn."""
    label = label or (lambda _, image_id: html.escape(image_id))
    cards = []
    for _, row in gallery.pairs.iterrows():
        pair = (row["query_id"], row["reference_id"])
        if matches and pair in matches:
            alt = html.escape(f"{pair[0]} and {pair[1]}: {int(row['inliers'])} inlier matches")
            images = (f'<figure class="matches"><img src="{jpeg_data_uri(matches[pair], quality=90)}" alt="{alt}">'
                      f'<figcaption>{html.escape(" · ".join(pair))}</figcaption></figure>')
        else:
            images = "".join(
                f'<figure><img src="{jpeg_data_uri(thumbnails[side, row[f"{side}_id"]])}" '
                f'alt="{html.escape(row[f"{side}_id"])}"><figcaption>{label(side, row[f"{side}_id"])}</figcaption>'
                "</figure>"
                for side in SIDES
            )
        cards.append(f'<div class="pair"><div class="images">{images}</div>'
                     f'<div class="caption">{html.escape(pair_caption(row))}</div></div>')
    shown = f"{len(gallery.pairs):,} shown of {gallery.total:,}"
    body = "".join(cards) if cards else EMPTY
    return (f"<section><h2>{html.escape(gallery.title)} <small>({shown})</small></h2>"
            f"<p>{html.escape(gallery.description)}</p><div class=\"gallery\">{body}</div></section>")


_CSS = string.Template("""
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { margin-bottom: 0.2em; } h2 small { font-weight: normal; color: #666; font-size: 0.7em; }
table.metrics td { padding: 2px 12px 2px 0; } table.metrics td:last-child { font-weight: bold; }
.figures img { max-width: 48%; margin-right: 1%; border: 1px solid #ddd; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.pair { border: 1px solid #ccc; border-radius: 4px; padding: 6px; background: #fafafa; }
.images { display: flex; gap: 6px; }
figure { margin: 0; width: ${size}px; text-align: center; }
figure img { max-width: ${size}px; max-height: ${size}px; display: block; margin: 0 auto; }
figure.matches { width: auto; } figure.matches img { max-width: ${width}px; }
figcaption, .caption { font-size: 12px; font-family: monospace; }
.caption { margin-top: 4px; color: #444; max-width: ${width}px; }
.warning { color: #a40; }
""")


def style_html(thumbnail_size: int = THUMBNAIL_SIZE) -> str:
    """The report's ``<style>`` block, for showing :func:`gallery_html` elsewhere (a notebook)."""
    return f"<style>{_CSS.substitute(size=thumbnail_size, width=2 * thumbnail_size + 6)}</style>"


def metrics_table_html(metrics: Metrics) -> str:
    def fmt(value: float | None, digits: int = 4) -> str:
        return "not reached" if value is None else f"{value:.{digits}f}"

    rows = [
        ("µAP", fmt(metrics.muap)),
        ("recall at 90% precision", fmt(metrics.recall_at_p90)),
        ("threshold at 90% precision", "not reached" if metrics.threshold_at_p90 is None
         else f"{metrics.threshold_at_p90:.6g}"),
        ("recall at rank 1", fmt(metrics.recall_at_rank1)),
        ("recall at rank 10", fmt(metrics.recall_at_rank10)),
        ("predictions", f"{metrics.n_predictions:,} for {metrics.n_queries_predicted:,} queries"),
        ("correct predictions", f"{metrics.n_true_positives:,}"),
        ("ground-truth pairs", f"{metrics.n_positives:,}"),
    ]
    return '<table class="metrics">' + "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(value)}</td></tr>" for name, value in rows) + "</table>"


def page_html(title: str, header: str, galleries: list[Gallery], thumbnails: dict[tuple[str, str], Image.Image],
              thumbnail_size: int = THUMBNAIL_SIZE, matches: dict[tuple[str, str], Image.Image] | None = None,
              label: Callable[[str, str], str] | None = None) -> str:
    """A self-contained page: the title, ``header`` (HTML), then the galleries (``label``: :func:`gallery_html`'s)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>{style_html(thumbnail_size)}</head><body>"
        f"<h1>{html.escape(title)}</h1>{header}"
        + "".join(gallery_html(g, thumbnails, matches, label) for g in galleries)
        + "</body></html>\n"
    )
