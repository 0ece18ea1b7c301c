"""isc-find: the copies of your own images: a query folder against a reference folder, or one folder in itself."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from isc.cli.common import check_outputs, finite_float, positive_int, run_command
from isc.cli.options import (
    add_crop_views_option,
    add_grid_option,
    add_model_options,
    add_verify_options,
    check_grid,
    cut_views,
    extract_options,
    model_choice,
    scales_list,
    scales_text,
    verify_options,
)
from isc.extract.image_files import list_images
from isc.models import create_model, given_options
from isc.pipeline.find import (
    DEFAULT_CUT_VIEWS,
    DEFAULT_GRID,
    IN_PROCESS_DECODING,
    default_cache_dir,
    find_copies,
    verifies_by_default,
)
from isc.pipeline.groups import groups_of, groups_text, unreadable_path, write_matches
from isc.pipeline.thresholds import DEFAULT_THRESHOLDS, default_scales
from isc.search.matching import DEFAULT_K

FIND_BATCH_SIZE = 8  # small batches: the progress bar moves every 8 images, in the same time (docs/BENCHMARKS.md)
# warnings about what a run did as told, not about its result: --quiet leaves them out
INFORMATIONAL_WARNINGS = (r"k = \d+ is larger than", r".* descriptors are not L2-normalised")
# the sizes each model with thresholds is described at unless told, as --scales's help lists them
MEASURED_SCALES = ", ".join(f"{name} {scales_text(t.scales)}" for name, t in DEFAULT_THRESHOLDS.items())
# each model's default thresholds, as the epilog lists them
MEASURED = "\n".join(f"  {name}: {t.verified:g} verified, {t.plain:g} unverified"
                      + (f", {t.normalised:g} with --training" if t.normalised is not None else "")
                      + (f" (each image at sizes {scales_text(t.scales)})" if t.scales != (1.0,) else "")
                      for name, t in DEFAULT_THRESHOLDS.items())

EPILOG = f"""\
what it does: every image of the folders (searched recursively; ids are paths relative to the folder,
without suffix, or with it where two files share a stem: beach.jpg and beach.png) is described by the
model (default: sscd when installed), each image also by 5 crops (a pair scores its best view), at the sizes
of --scales (sscd's default: the image's and half of it, their descriptors averaged), once: the
descriptors are cached per folder, model, views and sizes in --cache (default $XDG_CACHE_HOME/isc/find/, else
~/.cache/isc/find/), whatever the output, and a re-run describes only the images added or changed since.
A folder of at most {IN_PROCESS_DECODING} images is decoded in isc-find's own process unless --workers is given
(starting the decoding processes costs more than decoding so few).
Each image keeps its --k nearest images of the other folder: two folders are searched both ways, each pair
with its better score, so that which folder comes first changes only which side of a pair is which. Then,
unless --no-verify (or with --training), each image's --verify-k best candidates, on either side, are checked
by local features (SIFT, a geometric fit) and re-scored: score + 0.2 x min(inliers, 10) / 10, the features
cached in --cache. The pairs scoring at least --threshold are written: by default the threshold measured for
the model, on verified or unverified scores. With --training the scores are normalised (s - 0.5 x the
similarity of the query to its 10th nearest training image) and lower, and the default is the normalised
one, unverified. The defaults, chosen on photo benchmarks (their precision and recall are in
docs/BENCHMARKS.md, "Copies in one's own folders"):
{MEASURED}
Any other model, a --checkpoint, a given --image-size or other --scales has no default: --threshold must be
given (a threshold measured for one model means another precision for another).

outputs: without -o the groups (connected components of the pairs, largest first) go to stdout, a block
of paths a group, blocks apart by an empty line, an exact copy followed by a tab and "same bytes as PATH"
or "same pixels as PATH". A .csv output lists the pairs (query_id,reference_id,score,query_path,
reference_path,exact, best first; exact: bytes, pixels or empty for an edited copy), and the unreadable
images (path,reason) in OUT.unreadable.csv; a .json output holds the groups (lists of paths), the pairs,
the settings and the unreadable images. In one folder each pair is listed once; an image never matches
itself, nor the same file under another path (a folder inside the other). An output inside an image
folder must not have an image suffix.

examples:
  isc-find queries/ references/ -o matches.csv --report matches.html
  isc-find photos/
  isc-find photos/ -o groups.json
  isc-find photos/ -o groups.json --training unrelated_photos/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-find",
        description="Find the copies (edited or not: crops, rotations, text, recompression, flips, padding, "
        "blur, ...) of images in folders of your own: each query's copies among the references, or the "
        "groups of copies within one folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folders", nargs="+", metavar="FOLDER",
                        help="QUERIES REFERENCES (two folders), or one FOLDER searched against itself")
    parser.add_argument("-o", "--output", metavar="OUT.csv|OUT.json",
                        help="the pairs as CSV, or (.json) the groups and the pairs (default: the groups on stdout)")
    parser.add_argument("--report", metavar="REPORT.html",
                        help="also write an HTML page showing the groups (one folder), the matches and the closest "
                        "pairs below the threshold, each image's path linked")
    parser.add_argument("--threshold", type=finite_float,
                        help="keep pairs scoring at least this, in (0, 1] (0, 1.2] verified (default: the one measured for "
                        f"the model, verified, unverified or with --training; {', '.join(DEFAULT_THRESHOLDS)} only, "
                        "on photo benchmarks, docs/BENCHMARKS.md)")
    parser.add_argument("--k", type=positive_int, default=DEFAULT_K,
                        help=f"nearest images of the other folder considered per image (default {DEFAULT_K})")
    parser.add_argument("--training", metavar="DIR",
                        help="a folder of unrelated images: normalises the scores by them (isc-search's default "
                        "normalisation); the threshold then applies to the normalised scores")
    parser.add_argument("--no-crops", action="store_true",
                        help="describe each image by its full view only (about 3 times less of the model's work "
                        "than the default cut crops, 6 times less than resized ones; fewer copies found that fill "
                        "only part of the other image)")
    add_grid_option(parser, DEFAULT_GRID, "with crops (not with --no-crops), describe each image")
    add_crop_views_option(parser, DEFAULT_CUT_VIEWS, "each image's")
    checking = parser.add_mutually_exclusive_group()
    checking.add_argument("--verify", action="store_true", default=None,
                          help="re-score the candidate pairs by local features (isc-verify's SIFT and geometric "
                          "check: score + 0.2 x min(inliers, 10) / 10; the model's verified default threshold "
                          "then); the default without --training")
    checking.add_argument("--no-verify", dest="verify", action="store_false",
                          help="no verification (the default with --training)")
    add_verify_options(parser.add_argument_group("verification"), prefix="verify-", per="per image, on either side",
                       deep=False)
    parser.add_argument("--cache", metavar="DIR",
                        help="where the descriptors are kept between runs, a sub-folder per image folder (default: "
                        f"{default_cache_dir()})")
    model = parser.add_argument_group("model")
    add_model_options(model, batch_size=FIND_BATCH_SIZE)
    model.add_argument("--scales", type=scales_list, metavar="S1,S2",
                       help="describe each image (each of its views) at these sizes relative to its size, their "
                       "descriptors averaged (default: the sizes the model's thresholds were measured at, "
                       f"{MEASURED_SCALES}; any other model 1)")
    model.add_argument("--checkpoint", metavar="PATH", help="weights saved by isc-train")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars, summary or warnings that do not question the result")
    return parser


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        if args.quiet:
            for message in INFORMATIONAL_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
        return find(args)


def find(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else None
    cache = Path(args.cache) if args.cache else default_cache_dir()
    sources = [*args.folders, *([args.training] if args.training else [])]
    lists = [source for source in sources if Path(source).is_file()]  # a list file: the images listed are read
    sidecar = unreadable_path(output) if output and output.suffix.lower() != ".json" else None
    check_outputs(inputs=[args.checkpoint, *lists], outputs=[output, args.report, sidecar], folders=[cache],
                  images=(path for source in sources
                          for path in list_images(source, suffix_on_clash=True).values()),  # listed if needed
                  image_folders=[source for source in sources if Path(source).is_dir()])
    check_grid(args.grid, not args.no_crops, "--grid", "crops: leave out --no-crops")
    model_name, why = model_choice(args)
    model = create_model(model_name, checkpoint=args.checkpoint, **given_options(image_size=args.image_size))
    scales = default_scales(model.name) if args.scales is None else tuple(args.scales)
    extraction = extract_options(args, grid=args.grid, scales=scales, cut_views=cut_views(
        args, not args.no_crops, DEFAULT_CUT_VIEWS, "crops: leave out --no-crops"))
    if why and not args.quiet:
        print(f"isc-find: no --model given, using {model_name}; {why}", file=sys.stderr)
    verifying = verifies_by_default(args.training) if args.verify is None else args.verify
    verification = verify_options(args, prefix="verify-") if verifying else None
    found = find_copies(args.folders, cache, model, extraction, threshold=args.threshold, training=args.training,
                        crops=not args.no_crops, k=args.k, quiet=args.quiet, verification=verification,
                        as_benchmarked=args.checkpoint is None and args.image_size is None)
    if output:
        write_matches(output, found.matches, found.paths, found.record, found.same_images)
    else:  # the groups alone on stdout, what the summary and warnings say on stderr
        text = groups_text(found.matches, found.paths, found.same_images)
        if text:
            print(text, flush=True)
    threshold = found.record["threshold"]
    summary = (f"{len(found.matches)} pairs scoring >= {threshold:g} ({model.name}, "
               f"{'query crops' if not args.no_crops else 'no crops'}"
               f"{', normalised by ' + args.training if args.training else ''}"
               f"{', verified by local features' if verifying else ''}) among "
               + (f"{found.record['queries']} images" if found.same_images
                  else f"{found.record['queries']} queries and {found.record['references']} references")
               + f", {found.record['described']} described this run, the others cached")
    if args.report:
        from isc.evaluate.matches_page import write_matches_page  # here: its imports would slow every run

        write_matches_page(args.report, found.matches.to_frame(), found.near_misses.to_frame(), lambda side, i: found.paths[side][i], summary,
                           groups=groups_of(found.matches, True) if found.same_images else None, quiet=args.quiet)
    unreadable = found.record["unreadable"]
    if unreadable and not (args.quiet and output):  # without an output file, this line is their only record
        where = f", listed in {sidecar or output}" if output else ": " + "; ".join(
            f"{path} ({reason})" for path, reason in unreadable.items())
        print(f"isc-find: warning: {len(unreadable)} unreadable image(s) left out{where}", file=sys.stderr)
    if not args.quiet:
        groups = f", {len(groups_of(found.matches, True))} groups" if found.same_images else ""
        written = f"; written to {output}" if output else ""
        print(f"isc-find: {summary}{groups}{written}" + (f", report {args.report}" if args.report else ""),
              file=sys.stdout if output else sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
