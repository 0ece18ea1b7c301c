"""isc-submit: check and write the files to upload, for the matching and the descriptor track."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from isc.cli.common import check_outputs, non_negative_int, positive_int, run_command
from isc.cli.options import add_backend_option, add_phase_option
from isc.core.competition import MATCHING_TRACK_MAX_ROWS
from isc.core.descriptors import provenance_path
from isc.core.tables import read_ground_truth, write_predictions
from isc.evaluate.metrics import Metrics
from isc.search.capped_search import RESULTS_PER_QUERY
from isc.submit.descriptors import split_file_paths, submit_descriptors
from isc.submit.manifest import (
    SUBMISSIONS_DIR_ENV,
    default_submission_path,
    default_submissions_dir,
    manifest_path,
)
from isc.submit.matching import submit_matching
from isc.submit.scoring import record_evaluation, score_submission

if TYPE_CHECKING:
    import pandas as pd

EPILOG = """\
examples:
  isc-submit matching predictions.csv --phase 1
  isc-submit descriptors --query q.h5 --reference r.h5 --phase 1 --gt ground_truth.csv
  isc-submit descriptors --query q2.h5 --reference r.h5 --phase 2 --phase1-reference r.h5
  isc-submit descriptors --query q.h5 --reference r.h5 --phase 1 --split-files isc2021_descriptors
  isc-submit descriptors --query q.h5 --reference r.h5 --phase 1 \\
      --expected-queries data/query_metadata.csv --expected-references data/reference_metadata.csv
  isc-submit score submissions/phase1_descriptors.h5 --gt ground_truth.csv

Each file written gets a manifest <file>.manifest.json beside it: md5, counts, phase, track, the
descriptors' or predictions' provenance, this command line, the toolkit version and the UTC time.
"""


def _add_common(parser: argparse.ArgumentParser, track: str) -> None:
    add_phase_option(parser, "competition phase", required=True)
    parser.add_argument(
        "-o", "--output", metavar="OUT", help=f"file to write (default: <submissions dir>/phase<P>_{track})"
    )
    parser.add_argument(
        "--submissions-dir",
        metavar="DIR",
        help=f"folder of the default output (default: ${SUBMISSIONS_DIR_ENV} or ./submissions)",
    )
    parser.add_argument(
        "--expected-queries",
        metavar="FILE",
        help="check queries against this metadata CSV (image_id,...) or list of ids (one a line) "
        "instead of the competition's 50,000 of the phase; ids of the other phase are ignored",
    )
    parser.add_argument(
        "--expected-references",
        metavar="FILE",
        help="check references against this metadata CSV or list of ids instead of R000000-R999999",
    )
    parser.add_argument(
        "--max-listed",
        type=non_negative_int,
        default=20,
        metavar="N",
        help="violations listed when the file is invalid (default 20, 0 = all); the first of "
        "each kind is always listed, the rest counted",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the path written (and scores)")


def _add_scoring(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-results",
        type=positive_int,
        metavar="N",
        help=f"pairs kept over all queries (default {RESULTS_PER_QUERY} x the number of queries, "
        "as the organisers did)",
    )
    parser.add_argument(
        "--restrict-to-gt-queries",
        action="store_true",
        help="drop pairs of queries absent from the ground truth after the cut, as the competition "
        "platform did with the public phase-1 ground truth (first 25,000 queries)",
    )
    add_backend_option(parser)
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def _add_descriptors_command(commands: argparse._SubParsersAction) -> None:
    """``isc-submit descriptors``: the descriptor track's file from a query and a reference descriptor file."""
    descriptors = commands.add_parser(
        "descriptors",
        help="write the descriptor-track HDF5 from a query and a reference descriptor file",
        description="Descriptor track: writes query, reference, query_ids, reference_ids (float32, ids sorted) "
        "after checking: at most 256 dimensions, the same on both sides; every query of the phase and every "
        "reference present exactly once; no query of the other phase; query and reference descriptors made by "
        "the same model (same attributes); with --phase1-reference, the references identical to phase 1's. "
        "The file is read back and compared before it is put in place.",
    )
    descriptors.add_argument(
        "--query", required=True, metavar="Q.h5", help="query descriptor file (isc-extract)"
    )
    descriptors.add_argument("--reference", required=True, metavar="R.h5", help="reference descriptor file")
    _add_common(descriptors, "descriptors.h5")
    descriptors.add_argument(
        "--phase1-reference",
        metavar="R1.h5",
        help="phase 2: the phase-1 reference descriptor file (or the phase-1 descriptor-track "
        "submission, with its manifest); the references must be identical to it and both "
        "files must carry its model and whitening attributes",
    )
    descriptors.add_argument(
        "--ignore-attribute",
        action="append",
        default=[],
        metavar="KEY",
        help="descriptor attribute not compared between files (repeatable); per-run ones "
        "(split, timings, paths, isc_version, ...) are never compared",
    )
    descriptors.add_argument(
        "--split-files",
        metavar="DIR",
        help="also write DIR/query.h5 and DIR/reference.h5 in the organisers' per-split layout (datasets "
        "vectors and image_names, as isc2021's write_hdf5_descriptors), for their scripts",
    )
    descriptors.add_argument(
        "--gt", metavar="GT.csv", help="also score the written file against this ground truth"
    )
    _add_scoring(descriptors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-submit",
        description="Check a submission against every rule of the competition and write the file to upload, "
        "with a manifest. Valid: exit 0 and the path written is printed. Invalid: exit 2, every violation "
        "listed (with its line), and nothing written.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{matching,descriptors,score}")

    matching = commands.add_parser(
        "matching",
        help="check a predictions CSV and copy it, unchanged but for a missing header row, into the submissions folder",
        description="Matching track: the header is exactly query_id,reference_id,score, or absent (the file "
        "starting with a prediction, as the organisers' isc2021 scripts write it); at most "
        f"{MATCHING_TRACK_MAX_ROWS:,} rows; ids well formed; query ids of the phase; reference ids "
        "R000000-R999999 (or of --expected-references); finite scores; no (query, reference) pair twice. "
        "The file is copied byte for byte, the header row put first when it has none.",
    )
    matching.add_argument("predictions", help="predictions CSV query_id,reference_id,score (from isc-search, or "
                          "the organisers' scripts)")
    _add_common(matching, "matching.csv")
    matching.add_argument(
        "--provenance",
        action="append",
        default=[],
        metavar="FILE",
        help="JSON file, or descriptor HDF5 whose attributes describe the model, to record in the "
        "manifest (repeatable; default: PREDICTIONS.provenance.json if it exists)",
    )

    _add_descriptors_command(commands)

    score = commands.add_parser(
        "score",
        help="score a descriptor-track HDF5 locally, as the organisers did",
        description="Exact L2 search keeping the closest (query, reference) pairs over all queries (10 per query "
        "on average), score = -squared distance, then µAP against the ground truth.",
    )
    score.add_argument(
        "submission", help="descriptor-track HDF5 (query, reference, query_ids, reference_ids)"
    )
    score.add_argument("--gt", required=True, metavar="GT.csv", help="ground-truth CSV query_id,reference_id")
    score.add_argument(
        "--write-predictions", metavar="CSV", help="also write the predictions that were scored"
    )
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_scoring(score)
    return parser


def _info(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _print_metrics(args: argparse.Namespace, metrics: Metrics) -> None:
    if args.json:
        print(json.dumps(metrics.summary()))
        return
    p90 = "not reached" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.5f}"
    print(f"µAP                : {metrics.muap:.5f}")
    print(f"recall at P90      : {p90}")
    print(
        f"predictions        : {metrics.n_predictions} for {metrics.n_queries_predicted} queries, "
        f"{metrics.n_true_positives} correct of {metrics.n_positives}"
    )


def _score(args: argparse.Namespace, path: str | Path, ground_truth: pd.DataFrame) -> Metrics:
    metrics, predictions = score_submission(
        path, "descriptors", ground_truth, restrict_to_gt_queries=args.restrict_to_gt_queries,
        max_results=args.max_results, backend=args.backend, quiet=args.quiet)
    if getattr(args, "write_predictions", None):
        write_predictions(args.write_predictions, predictions)
    return metrics


def _output(args: argparse.Namespace, track: str) -> Path:
    """-o, else the track's file of the phase in --submissions-dir (default: :func:`default_submissions_dir`)."""
    folder = args.submissions_dir or default_submissions_dir()
    return Path(args.output) if args.output else default_submission_path(folder, track, args.phase)


def run_matching(args: argparse.Namespace) -> int:
    out = _output(args, "matching")
    sidecar = provenance_path(args.predictions)
    check_outputs(
        inputs=[args.predictions, sidecar, args.expected_queries, args.expected_references, *args.provenance],
        outputs=[out, manifest_path(out)],
    )
    path = submit_matching(args.predictions, args.phase, out, args.expected_queries, args.expected_references,
                           args.provenance, args.max_listed)
    print(path)
    _info(args, f"manifest: {manifest_path(path)}")
    return 0


def run_descriptors(args: argparse.Namespace) -> int:
    out = _output(args, "descriptors")
    split_files = [] if args.split_files is None else list(split_file_paths(args.split_files).values())
    check_outputs(
        inputs=[args.query, args.reference, args.phase1_reference, args.expected_queries, args.expected_references,
                args.gt],
        outputs=[out, manifest_path(out), *split_files],
        folders=[args.split_files],
    )
    if args.phase == 2 and not args.phase1_reference:
        warnings.warn("phase 2 without --phase1-reference: the reuse of the phase-1 references is not checked",
                      stacklevel=1)
    path = submit_descriptors(args.query, args.reference, args.phase, out, args.expected_queries,
                              args.expected_references, args.phase1_reference, args.ignore_attribute, args.max_listed,
                              args.split_files)
    print(path)
    _info(args, f"manifest: {manifest_path(path)}")
    if split_files:
        _info(args, f"organisers' per-split files: {', '.join(map(str, split_files))}")
    if args.gt:
        ground_truth = read_ground_truth(args.gt)
        metrics = _score(args, path, ground_truth)
        record_evaluation(path, metrics, ground_truth, args.gt)
        _print_metrics(args, metrics)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "matching":
        return run_matching(args)
    if args.command == "descriptors":
        return run_descriptors(args)
    check_outputs(inputs=[args.submission, args.gt], outputs=[args.write_predictions])
    _print_metrics(args, _score(args, args.submission, read_ground_truth(args.gt)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
