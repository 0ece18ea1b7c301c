"""Adaptive depth of verification: each query's first ``k`` candidates verified, and further down to ``deep_k``
only for the queries none of whose first ``k`` shows geometric evidence (fewer than ``deep_inliers`` inliers).

A copy whose reference ranks beyond ``k`` can only be found by verifying deeper, but verifying every query
deeper multiplies the pairs; a query whose first candidates already hold a match needs no more. Input: one
rank's candidate pairs (``query_id, reference_id, score, rank``) and a function verifying a set of them
(:func:`isc.verify.verification.verify`'s shard step); output: the evidence of the pairs verified and the
merged counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from isc.verify.local_features import VerifyOptions

if TYPE_CHECKING:
    import pandas as pd  # imported where used: isc-find imports this module and needs no tables unverified

# pairs -> (their evidence: the pairs plus inliers and more; counts, as isc.verify.workers.shard_evidence)
ShardRun = Callable[["pd.DataFrame"], tuple["pd.DataFrame", dict]]


def verified_depth(options: VerifyOptions) -> int:
    """The deepest rank (exclusive) any query may be verified to: ``deep_k``, else ``k``."""
    return options.deep_k if options.deep_k is not None else options.k


def without_evidence(evidence: pd.DataFrame, min_inliers: int) -> list[str]:
    """The queries of ``evidence`` none of whose pairs has ``min_inliers`` inliers or more, sorted."""
    best = evidence.groupby("query_id")["inliers"].max()
    return sorted(best.index[best < min_inliers])


def deeper_pairs(pairs: pd.DataFrame, evidence: pd.DataFrame, options: VerifyOptions) -> pd.DataFrame:
    """The pairs of ranks ``k`` to ``deep_k - 1`` of the queries whose first ``k`` (``evidence``) show no evidence."""
    wanted = set(without_evidence(evidence, options.deep_inliers))
    rank = pairs["rank"]
    return pairs[(rank >= options.k) & (rank < verified_depth(options)) & pairs["query_id"].isin(wanted)]


def _merged(first: dict, second: dict) -> dict:
    """The counts of two verification runs over one rank's pairs as one run's."""
    return {"images": sorted(set(first["images"]) | set(second["images"])),
            "described": set(first["described"]) | set(second["described"]),
            "cache_bytes": {**first["cache_bytes"], **second["cache_bytes"]},
            "broken": {**first["broken"], **second["broken"]},
            **{key: first[key] + second[key] for key in ("features_seconds", "matching_seconds", "pairs", "matched")}}


def evidence_in_depth(pairs: pd.DataFrame, options: VerifyOptions, run: ShardRun) -> tuple[pd.DataFrame, dict]:
    """The evidence of each query's first ``k`` pairs of ``pairs`` and, with ``deep_k``, of the deeper pairs of the
    queries without evidence (:func:`deeper_pairs`), sorted by query and rank; the counts of both runs merged."""
    evidence, counts = run(pairs[pairs["rank"] < options.k])
    if options.deep_k is None or evidence.empty:
        return evidence, counts
    deeper = deeper_pairs(pairs, evidence, options)
    if deeper.empty:
        return evidence, counts
    more, more_counts = run(deeper)
    import pandas as pd  # loaded already with the evidence

    both = pd.concat([evidence, more]).sort_values(["query_id", "rank"], kind="stable")
    return both, _merged(counts, more_counts)
