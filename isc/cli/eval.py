"""isc-eval: score a matching-track predictions CSV against a ground truth.

Also the reading of the inputs that isc-report shares: the options of the predictions file, the
500,000-row limit of the track and the warning about queries the ground truth does not list.
"""

from __future__ import annotations

import argparse
import json
import warnings
from typing import TYPE_CHECKING

from isc.cli.common import check_outputs, run_command
from isc.io import MATCHING_TRACK_MAX_ROWS, read_ground_truth, read_predictions
from isc.metrics import evaluate, image_format, plot_precision_recall

if TYPE_CHECKING:
    import pandas as pd

PREDICTIONS_HELP = "predictions CSV query_id,reference_id,score, with or without its header row (the organisers' "\
    "isc2021 scripts write none)"


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """The predictions argument and the options of how it is read and scored (isc-eval and isc-report)."""
    parser.add_argument("predictions", help=PREDICTIONS_HELP)
    parser.add_argument("--gt", required=True, help="ground-truth CSV query_id,reference_id (empty reference_id: no match)")
    parser.add_argument(
        "--restrict-to-gt-queries",
        action="store_true",
        help="ignore predictions for queries absent from the ground-truth file, as the competition platform "
        "did with the public phase-1 ground truth (first 25,000 queries); without it they count as false "
        "positives, with a warning",
    )
    parser.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="keep the best score of a repeated (query, reference) pair instead of rejecting the file "
        "(the organisers' scorer rejects it)",
    )
    parser.add_argument(
        "--no-row-limit",
        action="store_true",
        help=f"read a file of more than {MATCHING_TRACK_MAX_ROWS:,} rows, the matching track's limit (the "
        "organisers' scorer refuses such a file)",
    )


def read_inputs(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, ground truth) as the options of :func:`add_input_options` say; warns, in one line, when
    predictions of queries absent from the ground truth will count as false positives."""
    predictions = read_predictions(
        args.predictions,
        duplicates="keep-best" if args.allow_duplicates else "error",
        max_rows=None if args.no_row_limit else MATCHING_TRACK_MAX_ROWS,
    )
    ground_truth = read_ground_truth(args.gt)
    absent = ~predictions["query_id"].isin(ground_truth["query_id"])
    if absent.any() and not args.restrict_to_gt_queries:
        warnings.warn(
            f"{args.predictions}: {absent.sum():,} predictions of {predictions.loc[absent, 'query_id'].nunique():,} "
            f"queries absent from the ground truth {args.gt} count as false positives "
            "(--restrict-to-gt-queries ignores them, as the competition platform did)",
            stacklevel=1,
        )
    return predictions, ground_truth


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-eval",
        description="Micro-average precision (µAP) and recall at 90% precision of a matching-track "
        "predictions CSV, computed exactly as the ISC 2021 organisers' scorer does.",
    )
    add_input_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--plot", metavar="PR.png",
                        help="also write the precision-recall curve to this image (format from the suffix: "
                        ".png, .pdf, .svg, ...)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print the metrics only, not the line naming the image written (warnings still show)")
    return parser


def run(args: argparse.Namespace) -> int:
    check_outputs(inputs=[args.predictions, args.gt], outputs=[args.plot])
    if args.plot:
        image_format(args.plot)  # an unknown suffix is refused before the scoring, not after
    predictions, ground_truth = read_inputs(args)
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
    if args.plot and not args.quiet:
        print(f"precision-recall curve written to {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
