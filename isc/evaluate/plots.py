"""Precision-recall curves drawn with matplotlib, the 90%-precision operating point marked.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from isc.core.files import InputError, atomic_path
from isc.evaluate.metrics import REQUIRED_PRECISION, Metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def image_format(path: str | Path) -> str:
    """The image format matplotlib writes for ``path``'s suffix (``png`` when it has none).

    InputError, naming the supported suffixes, for one matplotlib cannot write: call it before the work.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lower().lstrip(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in supported:
        names = ", ".join(f".{name}" for name in sorted(supported))
        raise InputError(f"{path}: unknown image format .{suffix} (supported: {names})")
    return suffix or "png"


def plot_precision_recall(
    metrics: Metrics, path: str | Path | None = None, title: str = "", ax: Axes | None = None
) -> Axes:
    """Draw the precision-recall curve, with the 90%-precision operating point marked, on ``ax`` (default: a
    new figure); save it to ``path`` when given (format from the suffix, see :func:`image_format`). Returns the axes."""
    image_type = None if path is None else image_format(path)
    if ax is None:
        # a bare Figure, not pyplot: no global backend switch (notebooks keep theirs), nothing left open
        from matplotlib.figure import Figure

        ax = Figure(figsize=(6, 4.5), dpi=100).subplots()
    ax.plot(metrics.recalls, metrics.precisions, lw=1.5, label=f"µAP = {metrics.muap:.4f}")
    ax.axhline(REQUIRED_PRECISION, color="grey", ls=":", lw=1)
    if metrics.recall_at_p90 is not None:
        ax.plot([metrics.recall_at_p90], [REQUIRED_PRECISION], "o", color="C3",
                label=f"recall@P90 = {metrics.recall_at_p90:.4f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title or "precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.figure.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            ax.figure.savefig(tmp, format=image_type)
    return ax


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
