"""isc-synth: generate a synthetic mini DISC21 in the competition's layout, from a seed and with no network."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from isc.cli.common import check_outputs, non_negative_float, non_negative_int, positive_int, run_command
from isc.synth.dataset import SynthOptions, generate_dataset
from isc.synth.photos import PhotoOptions


def build_parser() -> argparse.ArgumentParser:
    defaults = SynthOptions()
    parser = argparse.ArgumentParser(
        prog="isc-synth",
        description="Write a synthetic dataset in the layout of the ISC 2021 competition: "
        "{query,reference,training}_images/<id>.jpg, {split}_metadata.csv (true MD5s), ground_truth.csv "
        "(phase-1 queries Q00000..) and ground_truth_phase2.csv (phase-2 queries Q50000..). Base images are "
        "procedural; queries are DISC21-style edits of some references (the others edit images found nowhere "
        "else). The same seed always gives the same bytes.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder to write; must be new, empty, or a previous isc-synth output (then overwritten)")
    parser.add_argument("--seed", type=non_negative_int, default=defaults.seed, help="random seed (default: %(default)s)")
    parser.add_argument("--references", type=non_negative_int, default=defaults.references, help="number of reference images (default: %(default)s)")
    parser.add_argument("--queries", type=non_negative_int, default=defaults.queries, help="number of phase-1 queries (default: %(default)s)")
    parser.add_argument("--phase2-queries", type=non_negative_int, default=defaults.phase2_queries,
                        help="number of phase-2 queries, ids from Q50000 (default: %(default)s)")
    parser.add_argument("--training", type=non_negative_int, default=defaults.training, help="number of training images (default: %(default)s)")
    parser.add_argument("--min-size", type=positive_int, default=defaults.min_size,
                        help="smallest long side of a base image in pixels, at least 8 (default: %(default)s)")
    parser.add_argument("--max-size", type=positive_int, default=defaults.max_size,
                        help="largest long side of a base image in pixels; queries may reach twice it (default: %(default)s)")
    parser.add_argument("--match-fraction", type=non_negative_float, default=defaults.match_fraction,
                        help="fraction of the queries of each phase that copy a reference (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes drawing images (default: one per CPU core); the output does not depend on it")
    photos = parser.add_argument_group(
        "base images from real photos",
        "cut the references, training images and distractor queries from photos (and drawings) instead of "
        "drawing them: non-overlapping tiles, only detailed ones, each photo feeding one split, each tile and "
        "drawing used once (see scripts/fetch_photos.py for a free offline source)")
    photos.add_argument("--photos", metavar="DIR", default=None, help="folder of photos (searched recursively)")
    photos.add_argument("--drawings", metavar="DIR", default=None,
                        help="folder of drawings (PNG clip art), composed on plain backgrounds to fill what the "
                        "photos cannot give")
    photos.add_argument("--tile-size", type=positive_int, default=512,
                        help="side of the square tiles cut from the photos, in the photos' pixels (default: %(default)s)")
    photos.add_argument("--max-tiles-per-photo", type=positive_int, default=12,
                        help="at most this many tiles of one photo (default: %(default)s)")
    photos.add_argument("--min-detail", type=non_negative_int, default=300,
                        help="keep a tile or drawing when a 64x64 grey JPEG of it takes at least this many bytes "
                        "more than a flat one: drops sky, gradients, blur (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return parser


def run(args: argparse.Namespace) -> int:
    check_outputs(inputs=[args.photos, args.drawings], folders=[args.out_dir])
    base_images = None
    if args.photos is not None or args.drawings is not None:
        base_images = PhotoOptions(
            photos=None if args.photos is None else Path(args.photos),
            drawings=None if args.drawings is None else Path(args.drawings),
            tile_size=args.tile_size, max_tiles_per_photo=args.max_tiles_per_photo, min_detail=args.min_detail)
    start = time.perf_counter()
    options = SynthOptions(seed=args.seed, references=args.references, queries=args.queries,
                           phase2_queries=args.phase2_queries, training=args.training, min_size=args.min_size,
                           max_size=args.max_size, match_fraction=args.match_fraction)
    summary = generate_dataset(args.out_dir, options, base_images=base_images, workers=args.workers, quiet=args.quiet)
    if not args.quiet:
        print(f"{args.out_dir}: {summary['references']} references, {summary['training']} training images, "
              f"{summary['queries']} phase-1 queries ({summary['matches']} copies of a reference), "
              f"{summary['phase2_queries']} phase-2 queries ({summary['phase2_matches']} copies) "
              f"in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
