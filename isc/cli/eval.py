"""isc-eval: score a matching-track predictions CSV against a ground truth."""

from __future__ import annotations

import argparse
import json

from isc.cli.common import check_outputs, run_command
from isc.cli.options import add_input_options, read_inputs
from isc.evaluate.metrics import evaluate
from isc.evaluate.plots import image_format, plot_precision_recall


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
