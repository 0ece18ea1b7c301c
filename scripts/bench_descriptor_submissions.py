"""Descriptor-track submissions (isc-run's or isc-submit's HDF5) scored as the organisers scored them, each with
its µAP difference to the first, paired over bootstrap resamples of the queries as bench_quality does (mean
[2.5%, 97.5%]): e.g. isc-run's descriptor track with and without its descriptor ensemble, on the same set.

    python scripts/bench_descriptor_submissions.py --gt SET/ground_truth.csv BASE.h5 OTHER.h5 ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import paired_cells  # noqa: E402

from isc.core.descriptors import read_descriptor_track  # noqa: E402
from isc.core.tables import read_ground_truth  # noqa: E402
from isc.search.capped_search import descriptor_track_predictions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", type=Path, nargs="+", help="descriptor-track files; the first is the baseline")
    parser.add_argument("--gt", type=Path, required=True, help="the ground truth of the submissions' phase")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    args = parser.parse_args(argv)
    truth = read_ground_truth(args.gt)
    weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)),
                                                   size=args.resamples)
    print("| submission | dimensions | µAP | recall@P90 | µAP − first (95% bootstrap) |")
    print("|---|---:|---:|---:|---|")
    baseline = None
    for path in args.submissions:
        query_ids, query, reference_ids, reference = read_descriptor_track(path)
        predictions = descriptor_track_predictions(query_ids, query, reference_ids, reference)
        resampled, cells = paired_cells(predictions, truth, weights, baseline)
        baseline = resampled if baseline is None else baseline
        print(f"| {path} | {query.shape[1]} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
