"""isc-synth: generate a synthetic mini DISC21 in the competition's layout, from a seed and with no network."""

from __future__ import annotations

import argparse
import time

from isc.cli.common import check_outputs, non_negative_float, non_negative_int, positive_int, run_command
from isc.synth import generate_dataset


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--references", type=non_negative_int, default=600, help="number of reference images (default: %(default)s)")
    parser.add_argument("--queries", type=non_negative_int, default=300, help="number of phase-1 queries (default: %(default)s)")
    parser.add_argument("--phase2-queries", type=non_negative_int, default=100,
                        help="number of phase-2 queries, ids from Q50000 (default: %(default)s)")
    parser.add_argument("--training", type=non_negative_int, default=600, help="number of training images (default: %(default)s)")
    parser.add_argument("--min-size", type=positive_int, default=200,
                        help="smallest long side of a base image in pixels, at least 8 (default: %(default)s)")
    parser.add_argument("--max-size", type=positive_int, default=400,
                        help="largest long side of a base image in pixels; queries may reach twice it (default: %(default)s)")
    parser.add_argument("--match-fraction", type=non_negative_float, default=0.5,
                        help="fraction of the queries of each phase that copy a reference (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes drawing images (default: one per CPU core); the output does not depend on it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return parser


def run(args: argparse.Namespace) -> int:
    check_outputs(folders=[args.out_dir])
    start = time.perf_counter()
    summary = generate_dataset(
        args.out_dir, seed=args.seed, references=args.references, queries=args.queries,
        phase2_queries=args.phase2_queries, training=args.training, min_size=args.min_size, max_size=args.max_size,
        match_fraction=args.match_fraction, workers=args.workers, quiet=args.quiet,
    )
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
