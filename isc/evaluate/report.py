"""Error analysis of a matching-track predictions file: what the matcher finds, misses and confuses.

``build_report`` scores the predictions, picks bounded galleries of pairs (the highest-scoring false
matches, the ground-truth pairs missed at 90% precision, random true matches) and loads their
thumbnails; given isc-verify's evidence, it adds each pair's inlier count and, for the verified pairs it
shows, a picture of the two images with their inlier matches as lines (matched again here: the evidence
keeps no keypoints); ``render_html`` turns that into one self-contained HTML page (figures and thumbnails as
data URIs, no script, no network) and ``write_summary_png`` into one summary image. Its parts are modules
by job: the pair tables (:mod:`pairs`), thumbnails (:mod:`thumbnails`), figures (:mod:`plots`), match
pictures (:mod:`match_pictures`) and HTML (:mod:`html_pages`), which isc-find's page (:mod:`matches_page`)
shares."""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from isc.core.files import InputError, atomic_path
from isc.evaluate.html_pages import metrics_table_html, page_html
from isc.evaluate.match_pictures import match_pictures
from isc.evaluate.metrics import Metrics, evaluate
from isc.evaluate.pairs import (
    GALLERY_SIZE,
    Gallery,
    label_predictions,
    missed_pairs,
    sample_pairs,
    top_false_matches,
    with_evidence,
)
from isc.evaluate.plots import figure_png, plot_score_histograms, precision_recall_png
from isc.evaluate.thumbnails import THUMBNAIL_SIZE, image_path, load_thumbnails, png_data_uri

if TYPE_CHECKING:
    from isc.verify.local_features import VerifyOptions


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
