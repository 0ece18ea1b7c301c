"""isc-eval: score a matching-track predictions CSV against a ground truth."""

from __future__ import annotations

import argparse
import json

from isc.cli.common import run_command
from isc.io import read_ground_truth, read_predictions
from isc.metrics import evaluate, plot_precision_recall


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-eval",
        description="Micro-average precision (µAP) and recall at 90% precision of a matching-track "
        "predictions CSV, computed exactly as the ISC 2021 organisers' scorer does.",
    )
    parser.add_argument("predictions", help="predictions CSV with header query_id,reference_id,score")
    parser.add_argument("--gt", required=True, help="ground-truth CSV query_id,reference_id (empty reference_id: no match)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--plot", metavar="PR.png", help="also write the precision-recall curve to this image")
    parser.add_argument(
        "--restrict-to-gt-queries",
        action="store_true",
        help="ignore predictions for queries absent from the ground-truth file, as the competition platform "
        "did with the public phase-1 ground truth (first 25,000 queries)",
    )
    parser.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="keep the best score of a repeated (query, reference) pair instead of rejecting the file "
        "(the organisers' scorer rejects it)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    predictions = read_predictions(args.predictions, duplicates="keep-best" if args.allow_duplicates else "error")
    ground_truth = read_ground_truth(args.gt)
    metrics = evaluate(predictions, ground_truth, restrict_to_ground_truth_queries=args.restrict_to_gt_queries)
    if args.plot:
        plot_precision_recall(metrics, args.plot)
    if args.json:
        print(json.dumps(metrics.summary()))
        return 0
    p90 = "not reached" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.5f}"
    print(f"µAP                : {metrics.muap:.5f}")
    print(f"recall at P90      : {p90}")
    if metrics.threshold_at_p90 is not None:
        print(f"threshold at P90   : {metrics.threshold_at_p90:.6g}")
    print(f"recall at rank 1   : {metrics.recall_at_rank1:.5f}")
    print(f"recall at rank 10  : {metrics.recall_at_rank10:.5f}")
    print(f"predictions        : {metrics.n_predictions} for {metrics.n_queries_predicted} queries, "
          f"{metrics.n_true_positives} correct")
    print(f"ground-truth pairs : {metrics.n_positives}")
    if args.plot:
        print(f"precision-recall curve written to {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
