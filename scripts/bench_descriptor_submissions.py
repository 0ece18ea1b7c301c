"""Submissions of either track (isc-run's or isc-submit's: a descriptor-track HDF5, a matching-track CSV) scored as
the organisers scored them, each with its µAP difference to its track's first file, paired over the same bootstrap
resamples of the queries as bench_quality does (mean [2.5%, 97.5%]): e.g. isc-run's submissions with and without
a lever, on the same set.

    python scripts/bench_descriptor_submissions.py --gt SET/ground_truth.csv BASE.h5 OTHER.h5 ...
    python scripts/bench_descriptor_submissions.py --gt SET/ground_truth.csv BASE.csv OTHER.csv BASE.h5 OTHER.h5 ...
    python scripts/bench_descriptor_submissions.py --gt SET/ground_truth.csv --per-query 10 BASE.csv OTHER.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import paired_cells  # noqa: E402

from isc.core.descriptors import read_descriptor_track  # noqa: E402
from isc.core.tables import read_ground_truth, read_predictions  # noqa: E402
from isc.search.capped_search import descriptor_track_predictions  # noqa: E402
from isc.verify.verification import ranked_candidates  # noqa: E402


def scored_predictions(path: Path, per_query: int | None = None) -> tuple[str, str, pd.DataFrame]:
    """The track of the submission ``path`` (a CSV: matching, else descriptors), its dimensions ('-' for a
    matching file) and the predictions the organisers scored it by; ``per_query``: a matching file's best rows
    of each query only (ties by reference id; None: all)."""
    if path.suffix.lower() == ".csv":
        predictions = read_predictions(path)
        if per_query is not None:
            predictions = ranked_candidates(predictions, per_query).drop(columns="rank")
        return "matching", "-", predictions
    query_ids, query, reference_ids, reference = read_descriptor_track(path)
    return "descriptors", str(query.shape[1]), descriptor_track_predictions(query_ids, query, reference_ids, reference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", type=Path, nargs="+",
                        help="descriptor-track (HDF5) and matching-track (CSV) files; each track's first is its baseline")
    parser.add_argument("--gt", type=Path, required=True, help="the ground truth of the submissions' phase")
    parser.add_argument("--per-query", type=int, metavar="N",
                        help="score each matching file's N best rows of each query only, as a submission of 50,000 "
                             "queries holds at most 10 (default: every row)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        truth = read_ground_truth(args.gt)
        if args.per_query is not None and args.per_query < 1:
            raise ValueError(f"--per-query must be at least 1, got {args.per_query}")
        # every file read before the first row is printed
        scored = [(path, *scored_predictions(path, args.per_query)) for path in args.submissions]
    except (OSError, ValueError) as e:  # InputError is a ValueError
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)),
                                                   size=args.resamples)
    print("| submission | track | dimensions | µAP | recall@P90 | µAP − its track's first (95% bootstrap) |")
    print("|---|---|---:|---:|---:|---|")
    baselines: dict[str, np.ndarray] = {}
    for path, track, dimensions, predictions in scored:
        resampled, cells = paired_cells(predictions, truth, weights, baselines.get(track))
        baselines.setdefault(track, resampled)
        print(f"| {path} | {track} | {dimensions} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
