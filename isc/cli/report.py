"""isc-report: one self-contained HTML page showing what a matcher finds, misses and confuses."""

from __future__ import annotations

import argparse

from isc.cli.common import run_command
from isc.io import read_ground_truth, read_predictions
from isc.report import GALLERY_SIZE, THUMBNAIL_SIZE, build_report, write_report, write_summary_png


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-report",
        description="Error report of a matching-track predictions CSV: µAP, recall at 90% precision, the "
        "precision-recall curve, score histograms of true and false pairs, and galleries of the highest-scoring "
        "false matches, the missed ground-truth pairs and random true matches. One HTML file with every image "
        "embedded (no network needed to view it).",
    )
    parser.add_argument("predictions", help="predictions CSV with header query_id,reference_id,score")
    parser.add_argument("--gt", required=True, help="ground-truth CSV query_id,reference_id (empty reference_id: no match)")
    parser.add_argument("--data", required=True, metavar="ROOT",
                        help="dataset folder holding query_images/<id>.jpg and reference_images/<id>.jpg "
                        "(a missing image is drawn as a grey tile)")
    parser.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="HTML file to write")
    parser.add_argument("--png", metavar="SUMMARY.png",
                        help="also write a summary image: headline numbers, precision-recall curve, score histograms")
    parser.add_argument("--gallery-size", type=int, default=GALLERY_SIZE,
                        help=f"at most this many pairs per gallery: the highest-scoring false matches, a random "
                        f"sample of the missed and of the true pairs (default {GALLERY_SIZE})")
    parser.add_argument("--thumbnail-size", type=int, default=THUMBNAIL_SIZE,
                        help=f"longest side of the embedded thumbnails in pixels (default {THUMBNAIL_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the gallery sampling (default 0)")
    parser.add_argument(
        "--restrict-to-gt-queries",
        action="store_true",
        help="ignore predictions for queries absent from the ground-truth file, as the competition platform "
        "did with the public phase-1 ground truth",
    )
    parser.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="keep the best score of a repeated (query, reference) pair instead of rejecting the file",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary line")
    return parser


def run(args: argparse.Namespace) -> int:
    predictions = read_predictions(args.predictions, duplicates="keep-best" if args.allow_duplicates else "error")
    ground_truth = read_ground_truth(args.gt)
    report = build_report(
        predictions,
        ground_truth,
        args.data,
        gallery_size=args.gallery_size,
        thumbnail_size=args.thumbnail_size,
        seed=args.seed,
        restrict_to_ground_truth_queries=args.restrict_to_gt_queries,
        source=str(args.predictions),
        quiet=args.quiet,
    )
    write_report(report, args.output)
    if args.png:
        write_summary_png(report, args.png)
    if not args.quiet:
        m = report.metrics
        p90 = "not reached" if m.recall_at_p90 is None else f"{m.recall_at_p90:.4f}"
        print(f"µAP {m.muap:.4f}, recall@P90 {p90}; report written to {args.output}"
              + (f", summary to {args.png}" if args.png else ""))
        if report.missing_images:
            print(f"images not found under {args.data} (drawn as grey tiles): {len(report.missing_images)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
