"""A submission scored locally, as the organisers scored it, and the score recorded in its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from isc.core.tables import read_predictions
from isc.evaluate.metrics import Metrics, evaluate, score_descriptor_track
from isc.submit.manifest import update_manifest

if TYPE_CHECKING:
    import pandas as pd


def score_submission(
    submission: str | Path, track: str, ground_truth: pd.DataFrame, *, restrict_to_gt_queries: bool = False,
    max_results: int | None = None, backend: str = "auto", quiet: bool = True,
) -> tuple[Metrics, pd.DataFrame]:
    """(metrics, the predictions scored) of a submission file: a ``matching`` track CSV as it is, a
    ``descriptors`` track HDF5 by the organisers' search (its ``max_results`` closest pairs, by default 10 per
    query); ``restrict_to_gt_queries``: predictions of queries absent from the ground truth are dropped."""
    if track == "matching":
        predictions = read_predictions(submission)
        return evaluate(predictions, ground_truth, restrict_to_gt_queries), predictions
    return score_descriptor_track(submission, ground_truth, max_results, restrict_to_gt_queries, backend, quiet)


def record_evaluation(submission: str | Path, metrics: Metrics, ground_truth: pd.DataFrame,
                      source: str | Path) -> Path:
    """Add the local evaluation to the submission's manifest: the ground truth's file (``source``) and number of
    queries, and the metrics; returns the manifest's path."""
    return update_manifest(submission, local_evaluation={
        "ground_truth": str(source), "ground_truth_queries": int(ground_truth["query_id"].nunique()),
        **metrics.summary()})
