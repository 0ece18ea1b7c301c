"""isc-report: one self-contained HTML page showing what a matcher finds, misses and confuses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from isc.cli.common import check_outputs, non_negative_int, positive_int, run_command
from isc.cli.options import add_input_options, read_inputs
from isc.core.descriptors import provenance_path
from isc.evaluate.report import GALLERY_SIZE, THUMBNAIL_SIZE, build_report, write_report, write_summary_png


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-report",
        description="Error report of a matching-track predictions CSV: µAP, recall at 90% precision, the "
        "precision-recall curve, score histograms of true and false pairs, and galleries of the highest-scoring "
        "false matches, the missed ground-truth pairs and random true matches. One HTML file with every image "
        "embedded (no network needed to view it).",
    )
    add_input_options(parser)
    parser.add_argument("--data", required=True, metavar="ROOT",
                        help="dataset folder holding query_images/<id>.<suffix> and reference_images/<id>.<suffix>, "
                        "or the images themselves (ROOT/<id>.<suffix>), any suffix isc-extract reads (a missing "
                        "image is drawn as a grey tile)")
    parser.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="HTML file to write")
    parser.add_argument("--png", metavar="SUMMARY.png",
                        help="also write a summary image: headline numbers, precision-recall curve, score histograms")
    parser.add_argument("--gallery-size", type=non_negative_int, default=GALLERY_SIZE,
                        help=f"at most this many pairs per gallery: the highest-scoring false matches, a random "
                        f"sample of the missed and of the true pairs (default {GALLERY_SIZE})")
    parser.add_argument("--thumbnail-size", type=positive_int, default=THUMBNAIL_SIZE,
                        help=f"longest side of the embedded thumbnails in pixels (default {THUMBNAIL_SIZE})")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the gallery sampling (default 0)")
    parser.add_argument("--evidence", metavar="EVIDENCE.csv",
                        help="isc-verify's evidence of the predictions: each pair shown gets its inlier count and "
                        "each verified one its inlier matches drawn as lines, found again with the options recorded "
                        "in PREDICTIONS.provenance.json (default: PREDICTIONS.evidence.csv beside the predictions, "
                        "when there is one)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary line")
    return parser


def _evidence(args: argparse.Namespace) -> tuple:
    """(isc-verify's evidence of the predictions, the options it was found with), or (None, None)."""
    from isc.verify.verification import evidence_path, read_evidence, recorded_options

    path = args.evidence or evidence_path(args.predictions)
    if not args.evidence and not Path(path).is_file():
        return None, None
    record = provenance_path(args.predictions)
    return read_evidence(path), recorded_options(json.loads(record.read_text()) if record.is_file() else {})


def run(args: argparse.Namespace) -> int:
    check_outputs(inputs=[args.predictions, args.gt, args.evidence], outputs=[args.output, args.png],
                  image_folders=[args.data])
    predictions, ground_truth = read_inputs(args)
    evidence, verify_options = _evidence(args)
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
        evidence=evidence,
        verify_options=verify_options,
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
