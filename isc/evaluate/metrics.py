"""The competition's metric: micro-average precision (µAP) and recall at 90% precision, for both tracks.

Computed as the organisers' scorer (facebookresearch/isc2021, ``isc/metrics.py``) does it:
all predictions of all queries are ranked together by decreasing score, with the wrong pairs
placed before the right ones on equal scores (the worst case, so a constant score cannot help);
µAP = Σ (recall_i − recall_{i−1}) × precision_i with no interpolation, recall's denominator
being the number of ground-truth pairs. A descriptor-track file is scored as the organisers did
(:func:`score_descriptor_track`): :mod:`isc.search.capped_search`'s exact L2 search keeping the ``10 × n_queries`` closest pairs over
all queries, score = −squared distance, then µAP."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.descriptors import read_descriptor_track
from isc.core.files import InputError
from isc.core.tables import pair_keys
from isc.search.capped_search import descriptor_track_predictions

REQUIRED_PRECISION = 0.9


@dataclass
class Metrics:
    muap: float
    recall_at_p90: float | None
    threshold_at_p90: float | None
    recall_at_rank1: float
    recall_at_rank10: float
    n_predictions: int
    n_positives: int
    n_true_positives: int
    n_queries_predicted: int
    precisions: np.ndarray = field(repr=False)
    recalls: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, float | int | None]:
        """The scalar results, for ``--json`` and reports."""
        return {
            "muap": self.muap,
            "recall_at_p90": self.recall_at_p90,
            "threshold_at_p90": self.threshold_at_p90,
            "recall_at_rank1": self.recall_at_rank1,
            "recall_at_rank10": self.recall_at_rank10,
            "n_predictions": self.n_predictions,
            "n_positives": self.n_positives,
            "n_true_positives": self.n_true_positives,
            "n_queries_predicted": self.n_queries_predicted,
        }


def precision_recall(
    is_match: np.ndarray, scores: np.ndarray, n_positives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precisions, recalls and thresholds along the ranking, by increasing recall.

    On equal scores the wrong predictions come first, exactly as in the organisers' scorer.
    """
    is_match = np.asarray(is_match, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    # lexsort's last key is the primary one: decreasing score, then False (wrong) before True
    order = np.lexsort((is_match, -scores))
    ranked = is_match[order]
    true_positives = np.cumsum(ranked)
    n_results = np.arange(len(ranked)) + 1
    return true_positives / n_results, true_positives / n_positives, scores[order]


def average_precision(recalls: np.ndarray, precisions: np.ndarray) -> float:
    """Σ (r_i − r_{i−1}) × p_i over the ranking (no interpolation); recalls must be sorted."""
    if len(recalls) and not np.all(recalls[:-1] <= recalls[1:]):
        raise ValueError("recalls must be sorted in increasing order")
    return float(((recalls - np.concatenate([[0], recalls[:-1]])) * precisions).sum())


def operating_point(
    precisions: np.ndarray, recalls: np.ndarray, thresholds: np.ndarray, required_precision: float
) -> tuple[float | None, float | None]:
    """(recall, threshold) of the highest recall whose precision is at least ``required_precision``."""
    valid = precisions >= required_precision
    if not valid.any():
        return None, None
    best = int(np.argmax(np.where(valid, recalls, -1.0)))
    return float(recalls[best]), float(thresholds[best])


def _recall_at_ranks(queries: np.ndarray, scores: np.ndarray, is_match: np.ndarray, n_positives: int) -> tuple[float, float]:
    # a true pair's rank counts every prediction of its query scoring at least as high (ties pessimistic)
    rank = pd.Series(scores).groupby(queries).rank(method="max", ascending=False).to_numpy() - 1
    true_ranks = rank[is_match]
    return float((true_ranks == 0).sum() / n_positives), float((true_ranks < 10).sum() / n_positives)


def evaluate(
    predictions: pd.DataFrame, ground_truth: pd.DataFrame, restrict_to_ground_truth_queries: bool = False
) -> Metrics:
    """Score predictions ``query_id,reference_id,score`` against a ground truth ``query_id,reference_id``.

    ``restrict_to_ground_truth_queries`` drops predictions for queries the ground-truth file does not
    list, as the competition platform did with the partial phase-1 ground truth.
    """
    if restrict_to_ground_truth_queries:
        predictions = predictions[predictions["query_id"].isin(ground_truth["query_id"])]
    positives = ground_truth[ground_truth["reference_id"] != ""]
    keys, positive_keys = pair_keys(predictions, positives)
    repeated = pd.Series(keys).duplicated().to_numpy()
    if repeated.any():
        row = predictions.iloc[int(np.flatnonzero(repeated)[0])]
        raise InputError(f"predictions contain the pair ({row['query_id']}, {row['reference_id']}) more than once")
    n_positives = len(positives)
    if n_positives == 0:
        raise InputError("the ground truth has no (query, reference) pair: nothing to measure recall against")
    is_match = np.isin(keys, positive_keys)
    scores = predictions["score"].to_numpy(dtype=np.float64)
    precisions, recalls, thresholds = precision_recall(is_match, scores, n_positives)
    recall_p90, threshold_p90 = operating_point(precisions, recalls, thresholds, REQUIRED_PRECISION)
    queries = pd.factorize(predictions["query_id"])[0]
    rank1, rank10 = _recall_at_ranks(queries, scores, is_match, n_positives)
    return Metrics(
        muap=average_precision(recalls, precisions),
        recall_at_p90=recall_p90,
        threshold_at_p90=threshold_p90,
        recall_at_rank1=rank1,
        recall_at_rank10=rank10,
        n_predictions=len(predictions),
        n_positives=n_positives,
        n_true_positives=int(is_match.sum()),
        n_queries_predicted=len(pd.unique(queries)),
        precisions=precisions,
        recalls=recalls,
        thresholds=thresholds,
    )


# ---------------------------------------------------------------------------- descriptor-track score


def score_descriptor_track(
    path: str | Path,
    ground_truth: pd.DataFrame,
    max_results: int | None = None,
    restrict_to_ground_truth_queries: bool = False,
    backend: str = "auto",
    quiet: bool = True,
) -> tuple[Metrics, pd.DataFrame]:
    """Score a descriptor-track HDF5 as the organisers did; returns the metrics and the predictions."""
    query_ids, query, reference_ids, reference = read_descriptor_track(path)
    predictions = descriptor_track_predictions(query_ids, query, reference_ids, reference, max_results, backend, quiet)
    return evaluate(predictions, ground_truth, restrict_to_ground_truth_queries), predictions
