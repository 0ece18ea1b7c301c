"""Error analysis of a matching-track predictions file: what the matcher finds, misses and confuses.

``build_report`` scores the predictions, picks bounded galleries of pairs (the highest-scoring false
matches, the ground-truth pairs missed at 90% precision, random true matches) and loads their
thumbnails; given isc-verify's evidence, it adds each pair's inlier count and, for the verified pairs it
shows, a picture of the two images with their inlier matches as lines (matched again here: the evidence
keeps no keypoints); ``render_html`` turns that into one self-contained HTML page (figures and thumbnails as
data URIs, no script, no network) and ``write_summary_png`` into one summary image. The gallery
functions work on the labelled predictions table and are reused by the error-analysis notebook."""

from __future__ import annotations

import base64
import html
import io
import os
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from isc.core.competition import split_folder
from isc.core.files import IMAGE_SUFFIXES, InputError, atomic_path
from isc.core.tables import pair_keys
from isc.evaluate.metrics import Metrics, evaluate
from isc.evaluate.plots import plot_precision_recall

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from isc.verify.local_features import VerifyOptions

GALLERY_SIZE = 16
THUMBNAIL_SIZE = 160
PLACEHOLDER_COLOR = (200, 200, 200)
MATCH_COLOR = (0, 255, 0)  # the lines between matched keypoints
MAX_DRAWN_MATCHES = 60  # more lines hide the images
MATCH_GAP = 6  # pixels between the two images of a match picture


# ----------------------------------------------------------------------------- pair tables


def label_predictions(predictions: pd.DataFrame, ground_truth: pd.DataFrame) -> pd.DataFrame:
    """Predictions with ``is_match`` and ``rank`` (1-based place among its query's predictions, ties pessimistic)."""
    positives = ground_truth[ground_truth["reference_id"] != ""]
    keys, positive_keys = pair_keys(predictions, positives)
    is_match = np.isin(keys, positive_keys)
    rank = predictions["score"].groupby(predictions["query_id"].to_numpy()).rank(method="max", ascending=False)
    return predictions.assign(is_match=is_match, rank=rank.to_numpy(dtype=np.int64))


def top_false_matches(labeled: pd.DataFrame, n: int, ground_truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``n`` highest-scoring wrong pairs; with ``ground_truth``, also each query's true reference ('' if none)."""
    wrong = labeled[~labeled["is_match"]].nlargest(n, "score")
    if ground_truth is not None:
        # one reference per query in the competition's files; join them should a ground truth list several
        true_reference = ground_truth.groupby("query_id")["reference_id"].agg(" ".join).str.strip()
        wrong = wrong.assign(true_reference_id=wrong["query_id"].map(true_reference).fillna(""))
    return wrong


def missed_pairs(labeled: pd.DataFrame, ground_truth: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
    """Ground-truth pairs not counted at ``threshold``: scored below it or not retrieved at all.

    ``score`` and ``rank`` are NaN for a pair absent from the predictions. ``threshold=None`` (the required
    precision is never reached) counts every pair as missed.
    """
    positives = ground_truth.loc[ground_truth["reference_id"] != "", ["query_id", "reference_id"]]
    found = labeled[labeled["is_match"]]
    found_keys, keys = pair_keys(found, positives)
    found = found.set_index(found_keys)
    got = positives.assign(score=found["score"].reindex(keys).to_numpy(), rank=found["rank"].reindex(keys).to_numpy())
    # the scorer ranks wrong pairs first on ties, so every true pair scoring >= the threshold is counted
    counted = got["score"] >= threshold if threshold is not None else np.zeros(len(got), dtype=bool)
    return got[~counted].reset_index(drop=True)


def sample_pairs(pairs: pd.DataFrame, n: int, seed: int = 0, by: str = "score") -> pd.DataFrame:
    """At most ``n`` rows drawn at random (reproducibly), shown by decreasing ``by`` (NaN last)."""
    if len(pairs) > n:
        pairs = pairs.sample(n=n, random_state=seed)
    return pairs.sort_values(by, ascending=False, na_position="last", kind="stable")


# ----------------------------------------------------------------------------- images


EMPTY = '<p class="empty">none</p>'  # a gallery without a card
SIDES = ("query", "reference")  # the two columns of a pair, each shown by its own image
ImageLocator = Callable[[str, str], Path]  # (side, id) -> the image file


def image_path(data_root: str | Path, image_id: str, side: str | None = None) -> Path:
    """Where the dataset folder keeps an image: ``ROOT/<side>_images/<id><suffix>``, else ``ROOT/<id><suffix>``,
    for any suffix the extractor reads (the ``.jpg`` path when there is none); ``side`` (query or reference)
    defaults to the competition's, from the id (``Q``: query)."""
    side = side or ("query" if image_id.startswith("Q") else "reference")
    for folder in (split_folder(data_root, side), Path(data_root)):
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            # the id as text, not Path.with_suffix: an id may hold dots and folders
            if (candidate := folder / f"{image_id}{suffix}").is_file():
                return candidate
    return split_folder(data_root, side) / f"{image_id}.jpg"


def placeholder_tile(text: str, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """A grey square saying why there is no picture."""
    tile = Image.new("RGB", (size, size), PLACEHOLDER_COLOR)
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default(size=max(10, size // 10))
    box = draw.multiline_textbbox((0, 0), text, font=font, align="center")
    xy = ((size - (box[2] - box[0])) / 2, (size - (box[3] - box[1])) / 2)
    draw.multiline_text(xy, text, fill=(90, 90, 90), font=font, align="center")
    return tile


def load_thumbnail(path: str | Path, size: int = THUMBNAIL_SIZE) -> Image.Image | None:
    """The image shrunk to fit ``size`` x ``size``, or None when it is missing or unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for big images
            thumbnail = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    thumbnail.thumbnail((size, size))
    return thumbnail


def jpeg_data_uri(image: Image.Image, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# ----------------------------------------------------------------------------- figures


def figure_png(fig: Figure) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def precision_recall_png(metrics: Metrics) -> bytes:
    """The scorer's own precision-recall plot, as PNG bytes."""
    return figure_png(plot_precision_recall(metrics).figure)


def plot_score_histograms(labeled: pd.DataFrame, threshold: float | None, ax: Axes | None = None) -> Axes:
    """Histograms of the scores of true and false pairs (log counts), with the 90%-precision threshold."""
    if ax is None:
        # a bare Figure, not pyplot: no global backend switch, nothing left open
        from matplotlib.figure import Figure

        ax = Figure(figsize=(6, 4.5), dpi=100).subplots()
    scores = labeled["score"].to_numpy()
    is_match = labeled["is_match"].to_numpy()
    edges = np.histogram_bin_edges(scores, bins=60) if len(scores) else np.linspace(0, 1, 61)
    false_counts = ax.hist(scores[~is_match], bins=edges, color="C3", alpha=0.6,
                           label=f"false pairs ({(~is_match).sum():,})")[0]
    true_counts = ax.hist(scores[is_match], bins=edges, color="C2", alpha=0.6, label=f"true pairs ({is_match.sum():,})")[0]
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold at P90 = {threshold:.4g}")
    if max(false_counts.max(initial=0), true_counts.max(initial=0)) > 100:
        ax.set_yscale("log")  # false pairs usually outnumber true ones by orders of magnitude
    ax.set(xlabel="score", ylabel="predictions", title="score distributions")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax.figure.tight_layout()
    return ax


# ----------------------------------------------------------------------------- the report


@dataclass
class Gallery:
    title: str
    description: str
    pairs: pd.DataFrame  # query_id, reference_id, score, rank (+ columns the captions use)
    total: int  # how many pairs the category holds before sampling


@dataclass
class Report:
    metrics: Metrics
    labeled: pd.DataFrame
    galleries: list[Gallery]
    thumbnails: dict[tuple[str, str], Image.Image] = field(repr=False)  # by (side, id)
    missing_images: list[str]
    source: str = ""
    matches: dict[tuple[str, str], Image.Image] = field(default_factory=dict, repr=False)  # verified pairs shown


def build_report(
    predictions: pd.DataFrame,
    ground_truth: pd.DataFrame,
    data_root: str | Path,
    gallery_size: int = GALLERY_SIZE,
    thumbnail_size: int = THUMBNAIL_SIZE,
    seed: int = 0,
    restrict_to_ground_truth_queries: bool = False,
    source: str = "",
    quiet: bool = False,
    evidence: pd.DataFrame | None = None,
    verify_options: VerifyOptions | None = None,
) -> Report:
    """Score the predictions, choose the galleries (at most ``gallery_size`` pairs each) and load their thumbnails.

    ``evidence``: isc-verify's evidence (:func:`isc.verify.verification.read_evidence`): each pair shown gets its inlier
    count, and each verified one a picture of its inlier matches, found again with ``verify_options``
    (default: isc-verify's defaults)."""
    if not Path(data_root).is_dir():
        state = "is not a directory" if Path(data_root).exists() else "does not exist"
        raise InputError(f"data folder {data_root} {state} (expected ROOT/query_images, ROOT/reference_images)")
    if gallery_size < 0:
        raise InputError(f"gallery size must be >= 0, got {gallery_size}")
    if thumbnail_size < 16:
        raise InputError(f"thumbnail size must be at least 16 pixels, got {thumbnail_size}")
    if restrict_to_ground_truth_queries:
        predictions = predictions[predictions["query_id"].isin(ground_truth["query_id"])]
    metrics = evaluate(predictions, ground_truth)
    labeled = label_predictions(predictions, ground_truth)
    threshold = metrics.threshold_at_p90
    false_matches = top_false_matches(labeled, gallery_size, ground_truth)
    missed = missed_pairs(labeled, ground_truth, threshold)
    true_matches = labeled[labeled["is_match"]]
    at = "at 90% precision" if threshold is not None else "(90% precision is never reached: every pair counts as missed)"
    galleries = [
        Gallery("Highest-scoring false matches",
                "Wrong pairs ranked highest: what the matcher confuses most confidently.",
                false_matches, int((~labeled["is_match"]).sum())),
        Gallery("Missed ground-truth pairs",
                f"Random sample of the true pairs not counted {at}, with the rank and score they got.",
                sample_pairs(missed, gallery_size, seed), len(missed)),
        Gallery("Random true matches", "Random sample of the true pairs the predictions contain.",
                sample_pairs(true_matches, gallery_size, seed), len(true_matches)),
    ]
    thumbnails, missing = load_thumbnails(galleries, lambda side, i: image_path(data_root, i, side), thumbnail_size,
                                          quiet)
    matches = {}
    if evidence is not None:
        for gallery in galleries:
            gallery.pairs = with_evidence(gallery.pairs, evidence)
        matches = match_pictures(galleries, data_root, verify_options, thumbnail_size, quiet)
    return Report(metrics, labeled, galleries, thumbnails, missing, source, matches)


def load_thumbnails(
    galleries: list[Gallery], locate: ImageLocator, size: int = THUMBNAIL_SIZE, quiet: bool = False,
    more: Iterable[tuple[str, str]] = (),
) -> tuple[dict[tuple[str, str], Image.Image], list[str]]:
    """Thumbnails of every image the galleries show and of ``more`` (side, id), by (side, id), each read from
    ``locate(side, id)`` (placeholders for missing ones), and the missing ids."""
    keys = sorted({(side, i) for g in galleries for side in SIDES for i in g.pairs[f"{side}_id"]} | set(more))
    thumbnails, missing = {}, []
    for side, image_id in tqdm(keys, desc="thumbnails", unit="img", disable=quiet):
        thumbnail = load_thumbnail(locate(side, image_id), size)
        if thumbnail is None:
            missing.append(image_id)
            thumbnail = placeholder_tile(f"{image_id[:20]}\nmissing", size)
        thumbnails[side, image_id] = thumbnail
    return thumbnails, missing


def with_evidence(pairs: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` with isc-verify's ``verified``, ``inliers`` and ``error`` of each (False, 0, '' when absent)."""
    columns = evidence[["query_id", "reference_id", "verified", "inliers", "error"]]
    joined = pairs.drop(columns=["verified", "inliers", "error"], errors="ignore").merge(
        columns, on=["query_id", "reference_id"], how="left")
    return joined.assign(verified=joined["verified"].eq(True),
                         inliers=joined["inliers"].fillna(0).astype(np.int64), error=joined["error"].fillna(""))


def match_picture(query: np.ndarray, reference: np.ndarray, options: VerifyOptions,
                  size: int = THUMBNAIL_SIZE) -> tuple[Image.Image, int]:
    """(the two images side by side, each shrunk to fit ``size``, with lines between their inlier matches (at
    most :data:`MAX_DRAWN_MATCHES`, evenly chosen), the number of inliers) of uint8 RGB pixels [h, w, 3]."""
    from isc.verify.local_features import describe_pixels, match_features

    match = match_features(describe_pixels(query, options), describe_pixels(reference, options), options)
    thumbnails = []
    for pixels in (query, reference):
        thumbnail = Image.fromarray(pixels)
        thumbnail.thumbnail((size, size))
        thumbnails.append(thumbnail)
    left, right = thumbnails
    picture = Image.new("RGB", (left.width + MATCH_GAP + right.width, max(left.height, right.height)), "white")
    picture.paste(left, (0, 0))
    picture.paste(right, (left.width + MATCH_GAP, 0))
    query_factor, reference_factor = left.width / query.shape[1], right.width / reference.shape[1]
    draw = ImageDraw.Draw(picture)
    step = -(-match.inliers // MAX_DRAWN_MATCHES) or 1
    for (qx, qy), (rx, ry) in zip(match.query_points[::step], match.reference_points[::step], strict=True):
        start = (qx * query_factor, qy * query_factor)
        end = (left.width + MATCH_GAP + rx * reference_factor, ry * reference_factor)
        draw.line([start, end], fill=MATCH_COLOR, width=1)
        for x, y in (start, end):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=MATCH_COLOR)
    return picture, match.inliers


def match_pictures(galleries: list[Gallery], data_root: str | Path, options: VerifyOptions | None = None,
                   size: int = THUMBNAIL_SIZE, quiet: bool = False) -> dict[tuple[str, str], Image.Image]:
    """:func:`match_picture` of every verified pair the galleries show whose images can be read."""
    from isc.core.images import BrokenImage
    from isc.verify.local_features import VerifyOptions, decode_image

    options = options or VerifyOptions()
    pairs = sorted({(q, r) for g in galleries for q, r, verified in
                    zip(g.pairs["query_id"], g.pairs["reference_id"], g.pairs["verified"], strict=True) if verified})
    pictures = {}
    for query_id, reference_id in tqdm(pairs, desc="matches", unit="pair", disable=quiet):
        try:
            pixels = [decode_image(image_path(data_root, i, side)) for side, i in zip(SIDES, (query_id, reference_id), strict=True)]
        except BrokenImage:
            continue  # drawn as two thumbnails, a grey tile for the missing one
        pictures[query_id, reference_id] = match_picture(*pixels, options, size)[0]
    return pictures


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


def render_html(report: Report) -> str:
    """The whole report as one HTML page with every figure and thumbnail embedded."""
    size = max((max(t.size) for t in report.thumbnails.values()), default=THUMBNAIL_SIZE)
    histogram = plot_score_histograms(report.labeled, report.metrics.threshold_at_p90)
    figures = (f'<div class="figures"><img alt="precision-recall curve" src="{png_data_uri(precision_recall_png(report.metrics))}">'
               f'<img alt="score histograms" src="{png_data_uri(figure_png(histogram.figure))}"></div>')
    warning = ""
    if report.missing_images:
        shown = ", ".join(report.missing_images[:10]) + (" ..." if len(report.missing_images) > 10 else "")
        n = len(report.missing_images)
        warning = (f'<p class="warning">{n} image{"s" if n > 1 else ""} not found under the data folder '
                   f"(grey tiles): {html.escape(shown)}</p>")
    title = "Copy-detection error report" + (f": {report.source}" if report.source else "")
    return page_html(title, f"{metrics_table_html(report.metrics)}{figures}{warning}", report.galleries,
                     report.thumbnails, size, report.matches)


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


def write_report(report: Report, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_html(report), encoding="utf-8")


def write_summary_png(report: Report, path: str | Path) -> None:
    """One image: the precision-recall curve beside the score histograms, the headline numbers on top."""
    curve = Image.open(io.BytesIO(precision_recall_png(report.metrics))).convert("RGB")
    histogram = plot_score_histograms(report.labeled, report.metrics.threshold_at_p90)
    histograms = Image.open(io.BytesIO(figure_png(histogram.figure))).convert("RGB")
    header = 40
    summary = Image.new("RGB", (curve.width + histograms.width, header + max(curve.height, histograms.height)), "white")
    summary.paste(curve, (0, header))
    summary.paste(histograms, (curve.width, header))
    m = report.metrics
    p90 = "not reached" if m.recall_at_p90 is None else f"{m.recall_at_p90:.4f} (threshold {m.threshold_at_p90:.4g})"
    text = (f"µAP {m.muap:.4f}   recall@P90 {p90}   {m.n_predictions:,} predictions, "
            f"{m.n_true_positives:,}/{m.n_positives:,} true pairs found")
    from matplotlib import font_manager

    # matplotlib's bundled DejaVu Sans has a "µ"; Pillow's default font does not
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 18)
    ImageDraw.Draw(summary).text((10, 10), text, fill="black", font=font)
    with atomic_path(path) as tmp:
        summary.save(tmp, format="PNG")


def write_matches_page(
    path: str | Path, matches: pd.DataFrame, below: pd.DataFrame, locate: ImageLocator, summary: str,
    gallery_size: int = 200, thumbnail_size: int = THUMBNAIL_SIZE, quiet: bool = False,
    groups: list[list[tuple[str, str]]] | None = None,
) -> None:
    """An HTML page of found copies (no ground truth): the ``groups`` (lists of (side, id)) when given, the best
    ``gallery_size`` matches, then the best pairs scoring just below the threshold, each image read from
    ``locate(side, id)`` and labelled by its path, a link to the file (and by its side without ``groups``: two
    folders)."""
    galleries = [
        Gallery("Matches", "Pairs at or above the threshold, best first.", matches.head(gallery_size), len(matches)),
        Gallery("Closest below the threshold", "The best pairs that were not kept: copies missed, if any.",
                below.head(min(gallery_size, GALLERY_SIZE)), len(below)),
    ]
    shown_groups = (groups or [])[:gallery_size]
    thumbnails, _ = load_thumbnails(galleries, locate, thumbnail_size, quiet,
                                    more=[node for group in shown_groups for node in group])
    folder = Path(path).resolve().parent

    def label(side: str, image_id: str) -> str:
        image = Path(locate(side, image_id))
        link = quote(Path(os.path.relpath(image.resolve(), folder)).as_posix())
        side_label = "" if groups is not None else f"{side}: "  # one folder: both sides are its images
        return f'{side_label}<a href="{html.escape(link)}">{html.escape(str(image))}</a>'

    header = f"<p>{html.escape(summary)}</p>"
    if groups is not None:
        cards = "".join(
            '<div class="pair"><div class="images">' + "".join(
                f'<figure><img src="{jpeg_data_uri(thumbnails[node])}" alt="{html.escape(node[1])}">'
                f"<figcaption>{label(*node)}</figcaption></figure>" for node in group) + "</div></div>"
            for group in shown_groups)
        header += (f"<section><h2>Groups <small>({len(shown_groups):,} shown of {len(groups):,})</small></h2>"
                   "<p>Images that are copies of one another (connected by the matches), largest group first."
                   f'</p><div class="gallery">{cards or EMPTY}</div></section>')
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page_html("Copies found", header, galleries, thumbnails, thumbnail_size, label=label),
                             encoding="utf-8")
