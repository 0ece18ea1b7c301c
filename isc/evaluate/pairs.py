"""The pair tables of an error analysis: predictions labelled against the ground truth, the galleries'
choices (the highest-scoring false matches, the missed pairs, random samples) and isc-verify's evidence
joined to them; used by the report, isc-find's page and the error-analysis notebook."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from isc.core.tables import pair_keys

GALLERY_SIZE = 16


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


def with_evidence(pairs: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` with isc-verify's ``verified``, ``inliers`` and ``error`` of each (False, 0, '' when absent)."""
    columns = evidence[["query_id", "reference_id", "verified", "inliers", "error"]]
    joined = pairs.drop(columns=["verified", "inliers", "error"], errors="ignore").merge(
        columns, on=["query_id", "reference_id"], how="left")
    return joined.assign(verified=joined["verified"].eq(True),
                         inliers=joined["inliers"].fillna(0).astype(np.int64), error=joined["error"].fillna(""))


@dataclass
class Gallery:
    title: str
    description: str
    pairs: pd.DataFrame  # query_id, reference_id, score, rank (+ columns the captions use)
    total: int  # how many pairs the category holds before sampling
