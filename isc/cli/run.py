"""isc-run: download → extract → whiten → search → eval → submit in one command, resumable."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from isc.cli.common import check_outputs, float_between, non_negative_int, positive_int, run_command
from isc.cli.options import (
    Parser,
    add_crop_views_option,
    add_grid_option,
    add_model_options,
    add_retry_options,
    add_s3_options,
    add_scales_option,
    add_search_options,
    add_verify_options,
    check_grid,
    cut_views,
    download_options,
    extract_options,
    model_choice,
    search_options,
    verify_options,
)
from isc.core.competition import PHASES, REGION_CHOICES, SPLITS, split_folder
from isc.core.files import InputError
from isc.download import s3
from isc.pipeline.config import RunConfig, planned_outputs
from isc.pipeline.demo import DEMO_IMAGE_SIZE, run_demo
from isc.pipeline.run import Pipeline
from isc.search.descriptor_track import DescriptorTrack
from isc.search.negatives import NegativeEmbeddings
from isc.search.normalisation import MAX_BETA
from isc.search.pooling import POOLINGS, ViewPooling
from isc.submit.manifest import SUBMISSIONS_DIR_ENV, default_submissions_dir
from isc.verify.calibrate import Calibration

EPILOG = """\
examples:
  isc-run --demo demo/                       # synthetic mini dataset, local S3 server, both phases
  isc-run work/ --region eu --gt data/public_ground_truth.csv --restrict-to-gt-queries
  isc-run work/ --data /datasets/disc21 --checkpoint runs/sscd/last.pt --device cuda

Every step is skipped when its outputs are complete (downloads verified by MD5, descriptor files
holding every image with this model, derived files made from the same inputs with the same settings,
as FILE.made-from.json records): an interrupted run, re-run with the same arguments, goes on where it
stopped; a step whose settings or inputs changed is made again and its line says why. The summary
table is also written to WORK/run_summary.json.
"""


def add_calibration_options(verification: Parser) -> None:
    """The calibration of verified scores (fitted on self-made copies, or given) and the regions' evidence."""
    verification.add_argument("--calibration", metavar="FILE.json",
                              help="combine score and evidence with this calibration (isc-verify --calibrate-gt) "
                              "instead of one fitted on edited copies of training images")
    verification.add_argument("--calibration-copies", type=non_negative_int, default=RunConfig.calibration_copies,
                              help="training images copied with random edits to fit the calibration on "
                              "(default: %(default)s, at most half the training images)")
    verification.add_argument("--calibration-k", type=positive_int, default=RunConfig.calibration_k,
                              help="candidates verified per copy (default: as many as per query, --verify-k)")
    verification.add_argument("--calibration-crops", action=argparse.BooleanOptionalAction,
                              default=RunConfig.calibration_crops,
                              help="describe the copies with crops where the queries have them (default: off, their full "
                              "view alone: the same µAP on two photo sets for half the calibration's work)")
    verification.add_argument("--region-inliers", type=non_negative_int, default=RunConfig.verify.region_inliers,
                              metavar="N", help="pairs with at least N inliers also get the regions that match cut "
                              "from both images and described by the model, their cosine a feature of the "
                              "calibration (default %(default)s; 0: off)")


def add_descriptor_track_options(parser: argparse.ArgumentParser) -> None:
    """The descriptor track's pooling and negatives, read back by :func:`descriptor_track`."""
    track = parser.add_argument_group("the descriptor track's one vector per image (docs/BENCHMARKS.md, "
                                      "\"The descriptor track's levers\")")
    track.add_argument("--descriptor-models", dest="ensemble", type=weighted_models, metavar="MODEL:WEIGHT,...",
                       help="other models that describe every image (full view, at --image-size when given; "
                       "descriptors/<MODEL>/), their descriptors joined to the --model's, each L2-normalised and weighted "
                       "(the --model's weight 1), before the PCA-whitening of the descriptor track; the matching track is "
                       "unchanged; 'none': the --model's alone (default: sscd_distilled:0.5 with --model sscd where "
                       "installed, else none; gain and cost in docs/BENCHMARKS.md)")
    track.add_argument("--descriptor-pooling", choices=("none", *POOLINGS), default="none",
                       help="each query's descriptor as its whitened views (full view and 5 crops, --query-crops) "
                       "pooled by their mean or signed GeM, then L2-normalised (default: %(default)s: its full view)")
    track.add_argument("--descriptor-gem-p", type=float_between(1, 100), default=ViewPooling.p,
                       help="the GeM power of --descriptor-pooling gem (default: %(default)s)")
    track.add_argument("--descriptor-negatives", action=argparse.BooleanOptionalAction, default=False,
                       help="subtract from each query and reference descriptor --descriptor-neg-beta x the mean of its "
                       "--descriptor-neg-k nearest training descriptors, then L2-normalise: the ISC 2021 winner's recipe "
                       "(default: off)")
    track.add_argument("--descriptor-neg-beta", type=float_between(0, MAX_BETA), default=0.35,
                       help="weight of the subtracted training neighbours (default: %(default)s)")
    track.add_argument("--descriptor-neg-k", type=positive_int, default=10,
                       help="training neighbours averaged (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-run",
        description="Run the whole pipeline for one data root and one model: download the three splits "
        "(MD5-verified), extract descriptors (queries one file per phase), learn PCA-whitening on the training "
        "descriptors, search each phase's queries against the references with score normalisation, score them "
        "when a ground truth is given, and write the matching-track and descriptor-track submissions of "
        "phase 1 and phase 2 with their manifests.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("work", metavar="WORK", help="work folder: data/, descriptors/, predictions, run summary")
    parser.add_argument("--demo", action="store_true",
                        help="generate the synthetic mini dataset into WORK/mini (once), serve it from a local S3 "
                        "server on loopback and run everything on it, scored against its ground truth; submissions "
                        f"go to WORK/submissions, the image size defaults to {DEMO_IMAGE_SIZE}")
    source = parser.add_argument_group("images")
    source.add_argument("--data", metavar="ROOT", help="use the images already under ROOT/<split>_images/ "
                        "instead of downloading into WORK/data")
    source.add_argument("--region", choices=REGION_CHOICES,
                        help=f"bucket to download from (default: {s3.DownloadOptions.region}; auto: the fastest)")
    add_s3_options(source)
    add_retry_options(source)
    source.add_argument("--limit", type=positive_int, metavar="N",
                        help="only the first N images of each split, for a trial")
    source.add_argument("--training-limit", type=positive_int, metavar="N",
                        help="only the first N training images, which learn the whitening and normalise the scores "
                        "(e.g. 100000 instead of 1M: a tenth of the training downloads and extraction)")
    source.add_argument("--download-workers", type=positive_int, default=s3.DownloadOptions.workers,
                        help="parallel downloads (default: %(default)s)")
    model = parser.add_argument_group("descriptors")
    add_model_options(model)
    model.add_argument("--checkpoint", metavar="PATH", help="weights: an isc-train checkpoint or a TorchScript file")
    model.add_argument("--pca-dim", type=non_negative_int, default=256,
                       help="PCA-whitening to this many dimensions, learnt on the training descriptors; 0: none "
                       "(the descriptor track then needs a model of at most 256 dimensions) (default: %(default)s)")
    model.add_argument("--query-crops", action=argparse.BooleanOptionalAction, default=True,
                       help="for the matching track, describe each query again as its full view and 5 crops (the "
                       "corners and the centre, 2/3 of each side; descriptors/query_phase<P>_crops.h5), each pair "
                       "scored by its best view: 6x the query extraction work, gain in docs/BENCHMARKS.md; the "
                       "descriptor track keeps one row per query (default: on)")
    model.add_argument("--reference-crops", action=argparse.BooleanOptionalAction, default=False,
                       help="for the matching track, describe each reference as its full view and 5 crops too "
                       "(descriptors/reference_crops.h5; reference.h5 is then its full views, for the descriptor "
                       "track), each pair scored by its best (query view, reference view): 6x the reference "
                       "extraction and index; gain and cost in docs/BENCHMARKS.md (default: off)")
    add_grid_option(model, RunConfig.extraction.grid, "with --query-crops, describe each query (and, with "
                    "--calibration-crops, each of the calibration's copies)", flag="--query-grid")
    add_scales_option(model, RunConfig.extraction.scales, "describe every image (each view of one, the "
                      "calibration's copies and the matched regions too; every model of the descriptor ensemble)")
    add_crop_views_option(model, RunConfig.extraction.cut_views, "the queries' (with --calibration-crops the "
                          "calibration's copies', with --reference-crops the references')")
    add_descriptor_track_options(parser)
    search = parser.add_argument_group("search, scoring and submission")
    add_search_options(search)
    model.add_argument("--matching-whitened", action="store_true",
                       help="search the matching track in the PCA-whitened descriptors too (by default it searches "
                       "them as extracted: on photos they hold more copies among each query's candidates; "
                       "docs/BENCHMARKS.md)")
    verification = parser.add_argument_group("verification of the matching track's candidates (isc-verify)")
    verification.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                              help="verify each query's best candidates by SIFT matching and re-score them "
                              "(predictions_phase<P>_verified.csv; default: on)")
    add_verify_options(verification, prefix="verify-")
    add_calibration_options(verification)
    search.add_argument("--phases", type=int, nargs="+", default=list(PHASES), choices=PHASES,
                        help="phases to submit (default: both, where their query images exist)")
    search.add_argument("--gt", action="append", default=[], metavar="CSV",
                        help="ground truth (query_id,reference_id) to score with; its queries say the phase; "
                        "repeatable")
    search.add_argument("--restrict-to-gt-queries", action="store_true",
                        help="score only the queries the ground truth lists (the public phase-1 ground truth "
                        "covers Q00000-Q24999)")
    search.add_argument("--submissions-dir", metavar="DIR",
                        help=f"where submissions go (default: ${SUBMISSIONS_DIR_ENV} or ./submissions; "
                        "WORK/submissions with --demo)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or step lines")
    return parser


def weighted_models(text: str) -> tuple[tuple[str, float], ...]:
    """The option type of --descriptor-models: ``MODEL:WEIGHT,...`` (a model's name may hold colons), or none."""
    if text.strip().lower() in ("", "none"):
        return ()
    parts = []
    for part in text.split(","):
        name, _, weight = part.strip().rpartition(":")
        try:
            parts.append((name, float(weight)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not MODEL:WEIGHT (a number): {part.strip()[:100]!r}") from None
    return tuple(parts)


def descriptor_track(args: argparse.Namespace) -> DescriptorTrack:
    """The descriptor track's options from the flags."""
    pooling = None if args.descriptor_pooling == "none" else ViewPooling(args.descriptor_pooling, args.descriptor_gem_p)
    negatives = NegativeEmbeddings(args.descriptor_neg_beta, args.descriptor_neg_k) if args.descriptor_negatives else None
    return DescriptorTrack(pooling, negatives, args.ensemble)


def run(args: argparse.Namespace) -> int:
    if args.demo and args.data:
        raise InputError("--demo serves its own mini dataset: leave out --data")
    work = Path(args.work)
    check_grid(args.grid, args.query_crops, "--query-grid", "query crops: leave out --no-query-crops")
    model_name, why = model_choice(args)
    if why:
        logging.getLogger("isc.cli.run").info("no --model given, using %s; %s", model_name, why)
    submissions = Path(args.submissions_dir) if args.submissions_dir else (
        work / "submissions" if args.demo else default_submissions_dir())
    # the stages' options, as their own commands build them: a bad one (a device, say) is refused before --demo
    # generates its dataset
    config = RunConfig(
        work=work, data=Path(args.data) if args.data else None, download=download_options(args, args.download_workers),
        limit=args.limit, training_limit=args.training_limit, model=model_name, checkpoint=args.checkpoint,
        image_size=args.image_size or (DEMO_IMAGE_SIZE if args.demo else None),
        extraction=extract_options(args, grid=args.grid, scales=tuple(args.scales), cut_views=cut_views(
            args, args.query_crops or args.reference_crops, RunConfig.extraction.cut_views,
            "query or reference crops: leave out --no-query-crops or give --reference-crops")),
        pca_dim=args.pca_dim, search=search_options(args, device=args.device), descriptor_track=descriptor_track(args),
        query_crops=args.query_crops,
        reference_crops=args.reference_crops, phases=sorted(set(args.phases)),
        ground_truth=[Path(p) for p in args.gt], restrict_to_gt_queries=args.restrict_to_gt_queries,
        submissions=submissions, quiet=args.quiet, matching_whitened=args.matching_whitened,
        verify=replace(verify_options(args, prefix="verify-"), region_inliers=args.region_inliers) if args.verify
        else None,
        calibration=Path(args.calibration) if args.calibration else None, calibration_copies=args.calibration_copies,
        calibration_k=args.calibration_k, calibration_crops=args.calibration_crops,
    )
    check_outputs(inputs=[args.checkpoint, *args.gt, args.calibration], outputs=planned_outputs(config),
                  folders=[work, submissions],
                  image_folders=[split_folder(args.data, split) for split in SPLITS] if args.data else ())
    if args.calibration:  # a bad file refused now, not after the steps before the calibration
        Calibration.load(args.calibration)
    summary = run_demo(config) if args.demo else Pipeline(config).run()
    if args.json:
        print(json.dumps({"steps": [vars(step) for step in summary.steps], "metrics": summary.metrics,
                          "left_over": summary.left_over}))
    else:
        print(summary.table())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
