"""Screen a calibration feature or a verification variant on a finished ``isc-run``, without running it again.

The calibration is refitted on the run's own self-made copies (``WORK/calibration/copies_verified.evidence.csv``)
exactly as ``isc.verify.calibrate.calibrate`` fits it, once as the run fitted it and once per row with one change,
and each fit scores the run's verified queries (``WORK/predictions_phase<P>_verified.evidence.csv``). Rows:

- ``as fitted``: the evidence as the run wrote it (the baseline of every interval);
- ``+ NAME``: one more feature computed from the evidence (:data:`EXTRA_FEATURES`: interactions and indicators);
- ``query mirrored``: every verified pair matched again with the query mirrored too (``isc-verify --mirror``:
  the verification's own engine), the features read from the run's cache (``WORK/verify-cache``, the queries'
  mirrors added to it), the region similarity kept as the run described it;
- ``query mirrored where its best pair has < N inliers``: the same, the mirrored matches taken only for the queries
  none of whose pairs has N inliers or more (the mirror tried only where the query, as it is, matches nothing).

µAP and recall at P90 by ``isc.evaluate.metrics.evaluate``; the last column is the difference to ``as fitted``
paired over 1,000 bootstrap resamples of the queries (``bench_quality.paired_cells``: mean [2.5%, 97.5%]). A row
that gains here is worth a run of ``isc-run`` with it, on both photo sets.

    python scripts/bench_calibration_refit.py WORK --data SET --gt SET/ground_truth.csv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import paired_cells  # noqa: E402

from isc.core.tables import read_ground_truth  # noqa: E402
from isc.extract.image_files import list_images, list_split_images  # noqa: E402
from isc.verify.calibrate import copy_labels, evidence_features, fit_logistic, pair_features  # noqa: E402
from isc.verify.local_features import VerifyOptions  # noqa: E402
from isc.verify.verification import evidence_path, read_evidence, recorded_options  # noqa: E402
from isc.verify.workers import shard_evidence  # noqa: E402

MIRROR_BELOW = (8, 16)  # the mirror tried only for queries whose best pair has fewer inliers than this
MATCH_COLUMNS = ("matches", "inliers", "inlier_ratio", "reference_coverage")  # what matching a pair again changes


def _log_inliers(evidence: pd.DataFrame) -> np.ndarray:
    return np.log1p(evidence["inliers"].to_numpy(np.float64))


def _most_inliers(evidence: pd.DataFrame) -> np.ndarray:
    best = evidence.groupby("query_id", sort=False)["inliers"].transform("max").to_numpy()
    return ((evidence["inliers"].to_numpy() == best) & (best > 0)).astype(np.float64)


# one more column of a pair's features, from its evidence alone
EXTRA_FEATURES: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {
    "log inliers x log rank": lambda e: _log_inliers(e) * np.log1p(e["rank"].to_numpy(np.float64)),
    "the query's most inliers": _most_inliers,
    "8 inliers or more": lambda e: (e["inliers"].to_numpy() >= 8).astype(np.float64),
    "log inliers squared": lambda e: _log_inliers(e) ** 2,
    "score x log inliers": lambda e: e["score"].to_numpy(np.float64) * _log_inliers(e),
}


def refit_scores(copies: pd.DataFrame, queries: pd.DataFrame,
                 extra: Callable[[pd.DataFrame], np.ndarray] | None = None) -> pd.DataFrame:
    """The queries' pairs scored by a calibration fitted on the copies' evidence (as ``calibrate`` fits it),
    with ``extra`` as one more feature."""
    names = evidence_features(copies)

    def features(evidence: pd.DataFrame) -> np.ndarray:
        columns = pair_features(evidence, names)
        return columns if extra is None else np.column_stack([columns, extra(evidence)])

    fitted = features(copies)
    mean, std = fitted.mean(axis=0), fitted.std(axis=0)
    std[std < 1e-12] = 1.0
    weights, bias = fit_logistic((fitted - mean) / std, copy_labels(copies))
    scores = (features(queries) - mean) / std @ weights + bias
    return queries[["query_id", "reference_id"]].assign(score=scores)


def mirrored_evidence(evidence: pd.DataFrame, paths: Mapping[str, Path], cache: Path,
                      options: VerifyOptions) -> pd.DataFrame:
    """The evidence with every verified pair matched again with its query mirrored too, by the verification's own
    engine (:func:`isc.verify.workers.shard_evidence` with ``mirror``), the features read from ``cache`` (the
    queries' mirrors added to it)."""
    verified = evidence["verified"].to_numpy()
    redone, _ = shard_evidence(evidence.loc[verified, ["query_id", "reference_id"]], paths, cache,
                               replace(options, mirror=True), os.cpu_count() or 1, strict=False, label=" (mirrored)",
                               quiet=True)
    columns = [column for column in MATCH_COLUMNS if column in evidence.columns]
    matched = evidence.assign(**{column: 0.0 for column in columns})
    matched.loc[verified, columns] = redone[columns].to_numpy(np.float64)
    return matched


def unmatched_pairs(evidence: pd.DataFrame, below: int) -> np.ndarray:
    """Per pair: whether none of its query's pairs has ``below`` inliers or more."""
    return evidence.groupby("query_id", sort=False)["inliers"].transform("max").to_numpy() < below


def mirrored_where_few(evidence: pd.DataFrame, mirrored: pd.DataFrame, below: int) -> pd.DataFrame:
    """The evidence with the mirrored matches (:func:`mirrored_evidence`, same rows) taken only for the queries
    none of whose pairs has ``below`` inliers or more (:func:`unmatched_pairs`): the mirror tried only where the
    query, as it is, matches no candidate."""
    few = unmatched_pairs(evidence, below)
    columns = [column for column in MATCH_COLUMNS if column in evidence.columns]
    adapted = evidence.astype({column: np.float64 for column in columns})
    adapted.loc[few, columns] = mirrored.loc[few, columns].to_numpy(np.float64)
    return adapted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="a finished isc-run's work folder (verified, calibrated on copies)")
    parser.add_argument("--data", type=Path, required=True, help="the run's dataset root (its query images)")
    parser.add_argument("--gt", type=Path, required=True, help="the phase's ground truth")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=1)
    parser.add_argument("--no-mirror", action="store_true", help="leave out the mirrored row (no matching again)")
    args = parser.parse_args(argv)

    verified = args.work / f"predictions_phase{args.phase}_verified.csv"
    queries = read_evidence(evidence_path(verified))
    copies = read_evidence(evidence_path(args.work / "calibration" / "copies_verified.csv"))
    record = json.loads(Path(f"{verified}.provenance.json").read_text(encoding="utf-8"))
    options = recorded_options(record)
    truth = read_ground_truth(args.gt)
    truth = truth[truth["query_id"].isin(set(queries["query_id"]))].reset_index(drop=True)
    weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=1000)

    rows = {"as fitted": refit_scores(copies, queries)}
    rows |= {f"+ {name}": refit_scores(copies, queries, extra) for name, extra in EXTRA_FEATURES.items()}
    if not args.no_mirror:
        paths = {**list_split_images(args.data, "query"), **list_split_images(args.data, "reference"),
                 **list_split_images(args.data, "training"), **list_images(args.work / "calibration" / "copies")}
        cache = args.work / "verify-cache"
        mirrored_copies = mirrored_evidence(copies, paths, cache, options)
        mirrored_queries = mirrored_evidence(queries, paths, cache, options)
        rows["query mirrored"] = refit_scores(mirrored_copies, mirrored_queries)
        for below in MIRROR_BELOW:
            rows[f"query mirrored where its best pair has < {below} inliers"] = refit_scores(
                mirrored_where_few(copies, mirrored_copies, below), mirrored_where_few(queries, mirrored_queries, below))
            share = unmatched_pairs(queries, below).mean()
            print(f"mirrored where the best pair has < {below} inliers: {share:.1%} of the pairs matched mirrored too")
    print(f"{args.work}: phase {args.phase}, {len(queries):,} pairs of {queries['query_id'].nunique():,} queries, "
          f"calibration refitted on {len(copies):,} pairs of self-made copies")
    print("| row | µAP | recall@P90 | µAP − as fitted (95% bootstrap) |")
    print("|---|---:|---:|---|")
    baseline = None
    for name, predictions in rows.items():
        resampled, cells = paired_cells(predictions, truth, weights, baseline)
        baseline = resampled if baseline is None else baseline
        print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
