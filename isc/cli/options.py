"""Option definitions shared by two commands (a stage's and ``isc-run``, or isc-eval and isc-report), each
with the function that reads it back, as the stage's options object where it has one (:class:`ExtractOptions`,
:class:`DownloadOptions`, :class:`SearchOptions`, :class:`VerifyOptions`): written once, so that both take the
same names, types, defaults and help, and build the same checked object."""

from __future__ import annotations

import argparse
import warnings
from typing import TYPE_CHECKING

from isc.cli.common import float_between, int_between, non_negative_int, positive_float, positive_int
from isc.core.competition import MATCHING_TRACK_MAX_ROWS, PHASE_QUERY_RANGES, PHASES
from isc.core.files import InputError, SettingError
from isc.core.tables import read_ground_truth, read_predictions

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from isc.download.s3 import DownloadOptions
    from isc.extract.extraction import ExtractOptions
    from isc.search.matching import SearchOptions
    from isc.search.normalisation import ScoreNorm
    from isc.verify.local_features import VerifyOptions

# each adder imports its stage's module itself: isc-download, which shares the S3 options, must not load torch
Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def add_model_options(parser: Parser, batch_size: int | None = None) -> None:
    """The model and how it runs: --model, --image-size, --batch-size (default ``batch_size``, else the
    extraction's), --device, --workers (isc-extract's and isc-run's)."""
    from isc.extract.extraction import DEFAULT_BATCH_SIZE
    from isc.models import MAX_IMAGE_SIZE
    from isc.models.registry import DEFAULT_MODEL, PREFERRED_MODEL, models_help, pixel_models

    batch_size = batch_size or DEFAULT_BATCH_SIZE

    parser.add_argument("--model", default=None,
                        help=f"{models_help()} (default: the checkpoint's model, else {PREFERRED_MODEL} when "
                        f"installed, else {DEFAULT_MODEL})")
    parser.add_argument("--image-size", type=int_between(1, MAX_IMAGE_SIZE),
                        help=f"input size in pixels, 8 to {MAX_IMAGE_SIZE} (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help=f"images per batch (default {batch_size})")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available; one GPU per "
                        "rank under torchrun)")
    parser.add_argument("--workers", type=non_negative_int,
                        help="reading threads (torchvision decoder; 0 means 1) or decoding processes (pil decoder; 0: "
                        "decode in the main process) (default: up to 16 threads or 8 processes; every core for a "
                        f"model that takes uint8 pixels: {pixel_models()} of a uint8 graph)")


CROP_VIEW_CHOICES = ("resized", "cut")  # --crop-views: each view resized to the model's size, or cut from the full view


def check_grid(grid: int, crops: bool, grid_flag: str, crops_needed: str) -> None:
    """InputError where grid views are asked for without crops: the grid views follow an image's full view and
    crops, so one without the other is refused rather than silently ignored (isc-extract, isc-find, isc-run)."""
    if grid and not crops:
        raise InputError(f"{grid_flag} needs {crops_needed} (the grid views follow an image's full view and crops)")


def cut_views(args: argparse.Namespace, crops: bool, default: bool, crops_needed: str) -> bool:
    """:attr:`ExtractOptions.cut_views` as --crop-views (:func:`add_crop_views_option`) says, ``default`` where
    not given; InputError where given without crops (refused, like a grid, rather than ignored)."""
    if args.crop_views is None:
        return default
    if not crops:
        raise InputError(f"--crop-views needs {crops_needed} (it says how the crops are made)")
    return args.crop_views == "cut"


def add_crop_views_option(parser: Parser, default_cut: bool, what: str) -> None:
    """--crop-views (read back as ``args.crop_views``, None where not given): how the crops and grid views of
    ``what`` are made (:attr:`ExtractOptions.cut_views`)."""
    default = CROP_VIEW_CHOICES[default_cut]
    parser.add_argument("--crop-views", choices=CROP_VIEW_CHOICES, default=None,
                        help=f"how {what} crops (and grid views) are made: 'cut' from the full view as resized, "
                        "at its scale (a crop of 2/3 of the image has 2/3 of its side: about half the model's work "
                        "of 'resized'; attribute cut_views), or 'resized', each decoded and resized to the model's "
                        f"view size; quality and cost in docs/BENCHMARKS.md (default: {default})")


def add_grid_option(parser: Parser, default: int, what: str, flag: str = "--grid") -> None:
    """The grid views of an image described with crops (:attr:`ExtractOptions.grid`, read back as ``args.grid``):
    ``--grid`` (isc-extract, isc-find), ``--query-grid`` (isc-run)."""
    parser.add_argument(flag, dest="grid", type=non_negative_int, default=default, metavar="N",
                        help=f"{what} also as N x N views of half its side, each its own row after the crops "
                        "(attribute grid_views): 2, its four quarters, for a copy pasted into a corner or cut "
                        "off-centre that the 2/3 crops miss; 0: none; gain and cost in docs/BENCHMARKS.md "
                        f"(default: {default})")


def scales_list(text: str) -> list[float]:
    """The option type of test-time scales: comma-separated positive numbers."""
    try:
        return [positive_float(s) for s in text.split(",")]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive numbers ({e})") from None


def scales_text(scales: Sequence[float]) -> str:
    """Test-time scales as ``--scales`` takes them: ``1,0.5``."""
    return ",".join(f"{s:g}" for s in scales)


def add_scales_option(parser: Parser, default: Sequence[float], what: str) -> None:
    """``--scales`` (:attr:`ExtractOptions.scales`, read back as ``args.scales``): each image described at these
    sizes relative to the image size, its descriptors averaged."""
    parser.add_argument("--scales", type=scales_list, default=list(default), metavar="S1,S2",
                        help=f"{what} at these sizes relative to the image size, their descriptors averaged "
                        f"(test-time augmentation; default {scales_text(default)})")


def model_choice(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(model name, why it was chosen) of the options :func:`add_model_options` added: ``--model`` as given (why
    None); with neither --model nor --checkpoint, the default model and why (which the command reports)."""
    if args.model or args.checkpoint:
        return args.model, None
    from isc.models import default_model

    return default_model()


def extract_options(args: argparse.Namespace, **settings: object) -> ExtractOptions:
    """The :class:`ExtractOptions` of the options :func:`add_model_options` added (batch size, device, workers)
    and the command's other ``settings``; InputError when they are bad (a bad device included)."""
    from isc.extract.extraction import ExtractOptions

    return ExtractOptions(batch_size=args.batch_size, device=args.device, workers=args.workers, **settings)


def phase_ranges() -> str:
    """The competition's phases and their query ids, for a --phase option's help."""
    return ", ".join(f"{phase}: Q{lo:05d}-Q{hi:05d}" for phase, (lo, hi) in PHASE_QUERY_RANGES.items())


def add_phase_option(parser: Parser, what: str, required: bool = False) -> None:
    """--phase, one of the competition's phases, for ``what`` (isc-extract's, isc-search's and isc-submit's)."""
    parser.add_argument("--phase", type=int, choices=PHASES, required=required, help=f"{what} ({phase_ranges()})")


def http_url(text: str) -> str:
    """The option type of an endpoint: an http:// or https:// URL with a host."""
    import urllib.parse

    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {text[:100]!r}")
    return text


def add_s3_options(parser: Parser) -> None:
    """Where the buckets are and how to sign: --endpoint-url, --profile (isc-download's and isc-run's)."""
    parser.add_argument("--endpoint-url", metavar="URL", type=http_url,
                        help="S3 endpoint of a mirror or a local server (default: AWS, or $AWS_ENDPOINT_URL); "
                        "path-style addressing is used")
    parser.add_argument("--profile", help="sign requests with this AWS profile (default: anonymous, unsigned "
                        "requests, unless $AWS_PROFILE is set); the competition's buckets are public")


def add_retry_options(parser: Parser) -> None:
    """How long to wait for the S3 endpoint, and how often to try: --attempts, --timeout (isc-download's and
    isc-run's)."""
    from isc.download import s3

    parser.add_argument("--attempts", type=positive_int, default=s3.DEFAULT_ATTEMPTS,
                        help="tries per request (listing, metadata, each file), with exponential backoff, on 5xx or "
                        "throttling answers, timeouts, dropped connections and MD5 mismatches "
                        f"(default {s3.DEFAULT_ATTEMPTS})")
    parser.add_argument("--timeout", type=positive_float, default=s3.DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="wait at most this long for a connection, or for the next bytes of an answer, before "
                        f"trying again; an answer still under {s3.MIN_BYTES_PER_SECOND // 1024} kB/s after this long "
                        f"has stalled and is tried again too (default {s3.DEFAULT_TIMEOUT:g})")


def download_options(args: argparse.Namespace, workers: int, **settings: object) -> DownloadOptions:
    """The :class:`DownloadOptions` of --region (when None, the default region), the options of
    :func:`add_s3_options` and :func:`add_retry_options`, ``workers`` parallel downloads and the command's other
    ``settings``; InputError when they are bad."""
    from isc.download.s3 import DownloadOptions

    region = {} if args.region is None else {"region": args.region}
    return DownloadOptions(**region, endpoint_url=args.endpoint_url, profile=args.profile, workers=workers,
                           attempts=args.attempts, timeout=args.timeout, **settings)


def add_backend_option(parser: Parser) -> None:
    """--backend, the nearest-neighbour search's (isc-search's, isc-run's and isc-submit's)."""
    from isc.search.knn import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto (default): torch on a GPU if CUDA is available, else faiss-gpu if the installed "
                        "faiss has GPU support, else faiss-cpu")


def add_search_options(parser: Parser) -> None:
    """What a search keeps and how: --k, --backend and the score normalisation (isc-search's and isc-run's),
    read back by :func:`search_options`."""
    from isc.search.matching import DEFAULT_K

    parser.add_argument("--k", type=positive_int,
                        help=f"references kept per query (default {DEFAULT_K}); reduced, with a warning, to the "
                        "number of references")
    add_backend_option(parser)
    add_score_norm_options(parser)


def search_options(args: argparse.Namespace, **settings: object) -> SearchOptions:
    """The :class:`SearchOptions` of the options :func:`add_search_options` added and the command's other
    ``settings``; InputError when they are bad."""
    from isc.search.matching import SearchOptions

    k = {} if args.k is None else {"k": args.k}
    return SearchOptions(**k, backend=args.backend, norm=score_norm(args), **settings)


def add_score_norm_options(parser: Parser) -> None:
    """The score-normalisation options, isc-search's and isc-run's, read back by :func:`score_norm`."""
    from isc.search.normalisation import AGGREGATIONS, MAX_BETA, ScoreNorm

    default = ScoreNorm()
    first, last = default.neighbors
    parser.add_argument("--norm-beta", type=float_between(0, MAX_BETA), default=default.beta,
                        help=f"normalisation weight B, 0 to {MAX_BETA:g} (similarities are within -1..1) (default {default.beta:g})")
    parser.add_argument("--norm-neighbors", default=f"{first}:{last}", metavar="A:B",
                        help=f"training neighbours used for normalisation, 1-based inclusive range (default "
                        f"{first}:{last}: the {last}th nearest alone)")
    parser.add_argument("--norm-agg", choices=AGGREGATIONS, default=default.agg,
                        help="aggregate the neighbours' similarities by their mean (default) or min")
    parser.add_argument("--normalize-references", action="store_true",
                        help="also subtract B * agg of each reference's training neighbours")


def score_norm(args: argparse.Namespace) -> ScoreNorm:
    """The :class:`ScoreNorm` of the options :func:`add_score_norm_options` added; InputError when they are bad."""
    from isc.search.normalisation import ScoreNorm, parse_neighbour_range

    return ScoreNorm(args.norm_beta, parse_neighbour_range(args.norm_neighbors), args.norm_agg,
                     args.normalize_references)


# the VerifyOptions fields that add_verify_options gives a flag: --FIELD, or --verify-FIELD beside other stages
VERIFY_FLAGS = ("k", "features", "max_features", "max_side", "ratio", "geometry", "threshold", "mirror", "workers")
# adaptive depth: isc-verify's and isc-run's only (isc-find picks its pairs from both sides' best candidates)
DEEP_FLAGS = ("deep_k", "deep_inliers")


def add_verify_options(parser: Parser, prefix: str = "", per: str = "per query", deep: bool = True) -> None:
    """How candidate pairs are verified, read back by :func:`verify_options`: isc-verify's --k, --features, --max-features,
    --max-side, --ratio, --geometry, --threshold, --mirror, --workers, --deep-k, --deep-inliers; with ``prefix`` ``verify-`` isc-run's and isc-find's
    --verify-k, ..., --verify-workers, beside their search's --k and --threshold and their extraction's --workers.
    ``per``: what each ``k`` candidates belong to, for the help; ``deep``: with --deep-k and --deep-inliers."""
    from isc.verify.local_features import GEOMETRIES, LOCAL_FEATURES, VerifyOptions

    default = VerifyOptions()
    flag = f"--{prefix}"
    parser.add_argument(f"{flag}k", type=positive_int, default=default.k,
                        help=f"candidates verified {per}, by decreasing score (default {default.k})")
    parser.add_argument(f"{flag}features", choices=LOCAL_FEATURES, default=default.features,
                        help="sift: OpenCV's SIFT descriptors compared as they are; rootsift: compared as RootSIFT "
                        f"(L1-normalised, square-rooted; the same cached features) (default {default.features})")
    parser.add_argument(f"{flag}max-features", type=positive_int, default=default.max_features,
                        help=f"SIFT keypoints per image (default {default.max_features})")
    parser.add_argument(f"{flag}max-side", type=positive_int, default=default.max_side,
                        help=f"long side in pixels the image is shrunk to before SIFT (default {default.max_side})")
    parser.add_argument(f"{flag}ratio", type=positive_float, default=default.ratio,
                        help=f"Lowe's ratio test, in (0, 1] (default {default.ratio:g})")
    parser.add_argument(f"{flag}geometry", choices=GEOMETRIES, default=default.geometry,
                        help="affine: rotation, scale and translation (default); homography: RANSAC homography; "
                        "magsac: homography by USAC MAGSAC++")
    parser.add_argument(f"{flag}threshold", type=positive_float, default=default.threshold,
                        help=f"RANSAC reprojection error in pixels of the resized images (default {default.threshold:g})")
    parser.add_argument(f"{flag}mirror", action=argparse.BooleanOptionalAction, default=default.mirror,
                        help="also match each query mirrored left-right and keep the match with more inliers: "
                        f"flipped copies verified, for twice the matching (default {'on' if default.mirror else 'off'})")
    parser.add_argument(f"{flag}workers", type=non_negative_int,
                        help="SIFT processes (0: this one; default every core, shared by the ranks of a machine)")
    if not deep:
        return
    parser.add_argument(f"{flag}deep-k", type=positive_int, metavar="N",
                        help=f"verify further, down to the N best candidates, each query whose first {flag}k all "
                        f"show fewer than {flag}deep-inliers inliers (default: no query deeper)")
    parser.add_argument(f"{flag}deep-inliers", type=positive_int, default=default.deep_inliers, metavar="N",
                        help=f"inliers a candidate needs for its query not to be verified deeper with {flag}deep-k "
                        f"(default {default.deep_inliers})")


def verify_options(args: argparse.Namespace, prefix: str = "") -> VerifyOptions:
    """The :class:`VerifyOptions` of the options :func:`add_verify_options` added with ``prefix``; a bad one is a
    SettingError naming the flag's destination, which the command says as its flag."""
    from isc.verify.local_features import VerifyOptions

    dest = prefix.replace("-", "_")
    try:
        return VerifyOptions(**{name: getattr(args, dest + name) for name in (*VERIFY_FLAGS, *DEEP_FLAGS)
                                if hasattr(args, dest + name)})
    except SettingError as e:  # the field's flag is the prefixed one
        raise SettingError(dest + e.setting, e.problem) from None


PREDICTIONS_HELP = "predictions CSV query_id,reference_id,score, with or without its header row (the organisers' "\
    "isc2021 scripts write none)"


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """The predictions argument and the options of how it is read and scored (isc-eval's and isc-report's)."""
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
