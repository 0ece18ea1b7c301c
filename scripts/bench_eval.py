"""Time the scorer: 500,000 predictions for 50,000 queries, as in a full matching-track submission.

Prints a table: reading the CSVs, scoring, and the whole isc-eval command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.tables import read_ground_truth, read_predictions, write_ground_truth, write_predictions
from isc.evaluate.metrics import evaluate


def make_files(folder: Path, n_queries: int, n_predictions: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    query_ids = np.array([f"Q{i:05d}" for i in range(n_queries)])
    truth = rng.integers(0, 1_000_000, n_queries)
    has_match = rng.random(n_queries) < 0.2  # about the public ground truth's share of matched queries
    gt = pd.DataFrame({"query_id": query_ids,
                       "reference_id": np.where(has_match, [f"R{r:06d}" for r in truth], "")})
    per_query = n_predictions // n_queries
    queries = np.repeat(np.arange(n_queries), per_query)
    references = rng.integers(0, 1_000_000, len(queries))
    first = np.arange(0, len(queries), per_query)
    references[first] = np.where(rng.random(n_queries) < 0.7, truth, references[first])
    references[first + 1] = (references[first] + 1) % 1_000_000  # never repeat a pair
    scores = rng.random(len(queries)) + (references == truth[queries]) * 0.5
    predictions = pd.DataFrame({"query_id": query_ids[queries],
                                "reference_id": [f"R{r:06d}" for r in references], "score": scores})
    predictions = predictions.drop_duplicates(["query_id", "reference_id"])
    gt_path, predictions_path = folder / "gt.csv", folder / "predictions.csv"
    write_ground_truth(gt_path, gt)
    write_predictions(predictions_path, predictions)
    return gt_path, predictions_path


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--predictions", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, predictions_path = make_files(Path(tmp), args.queries, args.predictions)
        t_read, predictions = best_of(args.repeats, lambda: read_predictions(predictions_path))
        t_gt, gt = best_of(args.repeats, lambda: read_ground_truth(gt_path))
        t_eval, metrics = best_of(args.repeats, lambda: evaluate(predictions, gt))
        t_cli, _ = best_of(max(1, args.repeats // 2), lambda: subprocess.run(
            [sys.executable, "-m", "isc.cli.eval", str(predictions_path), "--gt", str(gt_path), "--json"],
            check=True, capture_output=True))
    print(f"{len(predictions):,} predictions, {args.queries:,} queries, µAP {metrics.muap:.4f} (best of {args.repeats})")
    print("| step | seconds |")
    print("| --- | ---: |")
    for name, seconds in [("read predictions CSV (validated)", t_read), ("read ground-truth CSV", t_gt),
                          ("score: µAP, recall@P90, recall@rank", t_eval), ("read + score", t_read + t_gt + t_eval),
                          ("`isc-eval --json` end to end (process start included)", t_cli)]:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
