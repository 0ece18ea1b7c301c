"""isc-verify: re-score the best candidates of a predictions CSV by local-feature matching (SIFT + RANSAC)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

from isc.cli.common import (
    check_outputs,
    non_negative_float,
    positive_int,
    print_broken,
    run_command,
)
from isc.cli.options import PREDICTIONS_HELP, add_verify_options, verify_options
from isc.core.competition import split_folder
from isc.core.descriptors import provenance_path
from isc.core.files import InputError, NoImageRead
from isc.core.tables import read_ground_truth, read_predictions
from isc.extract.image_files import list_images, list_split_images
from isc.submit.manifest import read_provenance
from isc.verify.calibrate import Calibration, CrossFitted, cross_fit
from isc.verify.verification import (
    InlierBonus,
    calibration_conditions,
    calibration_path,
    default_cache,
    evidence_path,
    verify,
)

EPILOG = """\
the new score of a pair is score + WEIGHT * min(inliers, CAP) / CAP, or with --calibration the log-odds of a
logistic model over the score, the gap to the query's best score, the rank, the inliers, the inlier ratio and
the query's most inliers (isc-run fits one on copies it makes of training images; --calibrate-gt fits one on
labelled queries, and scores each of them by the fit on the other half); candidates beyond --k, and pairs with an unreadable image (listed, and flagged in the
evidence's error column), count as zero inliers.

files: OUT.csv (the re-scored predictions, by decreasing score), OUT.evidence.csv (query_id, reference_id,
score: the input's, rank: 0-based among the query's candidates, verified, matches: after the ratio test,
inliers, inlier_ratio, transform: the fitted model's matrix row by row, query pixels to reference pixels,
error, new_score) and OUT.csv.provenance.json (options, inputs, counts).

feature cache: one .npz per image (keypoints, uint8 SIFT descriptors) under CACHE/<options>/, keyed by id
and file stamp (size, modification and change time, inode, a digest of its first and last 4 KiB); an image
is described once, later runs (and a killed run run again) reuse it, a changed file is described again, and
a damaged entry counts as missing (described again, said once).

examples:
  isc-verify predictions.csv --data data/ -o verified.csv
  isc-verify predictions.csv --queries q/ --references r/ -o verified.csv --k 3 --geometry homography
  isc-verify phase1.csv --data data/ -o phase1_verified.csv --calibrate-gt public_ground_truth.csv \
      --calibration calibration.json       # fit on phase 1's labelled queries, save, use
  isc-verify phase2.csv --data data/ -o phase2_verified.csv --calibration calibration.json
  torchrun --nproc_per_node 4 -m isc.cli.verify predictions.csv --data data/ -o verified.csv
"""


def build_parser() -> argparse.ArgumentParser:
    bonus = InlierBonus()
    parser = argparse.ArgumentParser(
        prog="isc-verify",
        description="Geometric verification of candidate pairs: each query's --k best references are matched "
        "with SIFT features (Lowe's ratio test, then a RANSAC geometric model) and the predictions re-scored by "
        "their inliers. Resumable through the feature cache; all cores; under torchrun the queries are sharded "
        "across ranks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("predictions", help=PREDICTIONS_HELP)
    parser.add_argument("--data", metavar="ROOT",
                        help="dataset root holding query_images/ and reference_images/ (isc-download's layout)")
    parser.add_argument("--queries", metavar="DIR_OR_LIST", help="query images (any folder or list file, as "
                        "isc-extract --images reads it; default ROOT/query_images)")
    parser.add_argument("--references", metavar="DIR_OR_LIST", help="reference images (default ROOT/reference_images)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.csv",
                        help="re-scored predictions to write, with OUT.evidence.csv and OUT.csv.provenance.json")
    add_verify_options(parser)
    parser.add_argument("--cache", metavar="DIR", help="feature cache folder (default: isc-verify-cache/ beside "
                        "the output)")
    parser.add_argument("--weight", type=non_negative_float,
                        help=f"weight of the inlier bonus (default {bonus.weight:g})")
    parser.add_argument("--cap", type=positive_int, help=f"inliers at which the bonus is full (default {bonus.cap})")
    parser.add_argument("--calibration", metavar="FILE.json",
                        help="combine with this calibration instead of the inlier bonus; with --calibrate-gt, where "
                        "the fitted one is saved (default OUT.calibration.json)")
    parser.add_argument("--assume-same-model", action="store_true",
                        help="apply --calibration to predictions without a provenance sidecar, whose descriptor model "
                        "cannot be checked against the calibration's: scores of another model are re-scored wrongly")
    parser.add_argument("--calibrate-gt", metavar="GT.csv",
                        help="fit the combination on this run's pairs whose query the ground truth covers (such as "
                        "phase 1's public ground truth), save it and re-score with it; those queries are scored "
                        "cross-fitted: each by the combination fitted on the other half of them")
    parser.add_argument("--max-broken", type=non_negative_float, default=0.01, metavar="FRACTION",
                        help="warn when more than this fraction of the images is broken (default 0.01; 1: never). "
                        "When no image at all can be read, nothing is written and the exit status is 1")
    parser.add_argument("--strict", action="store_true", help="fail on the first broken image instead of "
                        "listing it")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    return parser


def _images(args: argparse.Namespace, split: str) -> tuple[dict[str, Path], Path | None]:
    """(the images of ``split``, the folder listed for them, None for a list file)."""
    given = args.queries if split == "query" else args.references
    if given:
        return list_images(given), Path(given) if Path(given).is_dir() else None
    if not args.data:
        raise InputError(f"the {split} images are needed: --data ROOT or --{'queries' if split == 'query' else 'references'}")
    return list_split_images(args.data, split), split_folder(args.data, split)


def run(args: argparse.Namespace) -> int:
    options = verify_options(args)
    if (args.calibration or args.calibrate_gt) and (args.weight is not None or args.cap is not None):
        raise InputError("--weight and --cap set the fixed inlier bonus, which a calibration replaces")
    if args.assume_same_model and not (args.calibration and not args.calibrate_gt):
        raise InputError("--assume-same-model applies a given --calibration (without --calibrate-gt)")
    combiner = InlierBonus(*[value for value in (args.weight, args.cap) if value is not None])
    output = Path(args.output)
    saved_calibration = Path(args.calibration) if args.calibration else calibration_path(output)
    source = provenance_path(args.predictions)
    search_record = read_provenance(source) if source.is_file() else None
    if search_record is not None and not isinstance(search_record, dict):
        raise InputError(f"{source}: not a provenance record (a JSON object is needed)")
    conditions = calibration_conditions(options, search_record)
    if args.calibration and not args.calibrate_gt:  # a bad calibration is refused before any work
        combiner = Calibration.load(args.calibration)
        combiner.check_conditions(conditions, args.calibration, args.assume_same_model)
    (queries, query_folder), (references, reference_folder) = _images(args, "query"), _images(args, "reference")
    check_outputs(inputs=[args.predictions, source, *([args.calibrate_gt] if args.calibrate_gt else []),
                          *([args.calibration] if args.calibration and not args.calibrate_gt else [])],
                  outputs=[output, evidence_path(output), provenance_path(output),
                           *([saved_calibration] if args.calibrate_gt else [])],
                  folders=[args.cache or default_cache(output)],
                  images=[*queries.values(), *references.values()], image_folders=[query_folder, reference_folder])
    predictions = read_predictions(args.predictions)
    fit = None
    if args.calibrate_gt:
        ground_truth = read_ground_truth(args.calibrate_gt)

        def fit(evidence: pd.DataFrame) -> CrossFitted:
            fitted = cross_fit(evidence, ground_truth, args.calibrate_gt, conditions)
            fitted.full.save(saved_calibration)
            return fitted
    try:
        result = verify(
            predictions, queries, references, output, options=options, cache=args.cache, combiner=combiner, fit=fit,
            strict=args.strict, max_broken=args.max_broken, quiet=args.quiet,
            record={"inputs": {"predictions": {"path": str(Path(args.predictions).resolve()),
                                               "bytes": Path(args.predictions).stat().st_size,
                                               "provenance": search_record},
                               "queries": str(args.queries or args.data), "references": str(args.references or args.data)}},
        )
    except NoImageRead as e:
        print(f"isc-verify: error: {e}", file=sys.stderr)
        return 1
    if result.rank != 0:
        return 0
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
        return 0
    if not args.quiet:
        print(f"{result.predictions} predictions of {result.queries} queries re-scored to {result.output} "
              f"(evidence {result.evidence}); {result.pairs} pairs verified at {result.pairs_per_second} pairs/s, "
              f"{result.described} of {result.images} images described ({result.cached} from the cache "
              f"{result.cache}, {result.cache_bytes_per_image} bytes per image)")
    if result.broken:
        print(f"{len(result.broken)} broken image(s), {result.failed_pairs} pair(s) unverified:")
        print_broken(result.broken, f"error column of {result.evidence}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
