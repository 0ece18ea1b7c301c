"""isc-pca: learn PCA-whitening on training descriptors, apply it to query and reference descriptors."""

from __future__ import annotations

import argparse

from isc.cli.common import check_outputs, float_between, positive_int, run_command
from isc.core.competition import DESCRIPTOR_TRACK_MAX_DIM
from isc.core.files import InputError
from isc.search.negatives import NegativeEmbeddings
from isc.search.normalisation import MAX_BETA
from isc.search.pca import PCAWhitening, apply_pca_files, learn_pca_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-pca",
        description="PCA-whitening + L2 normalisation of descriptor files. Learn it on the training split's "
        "descriptors (the competition allows statistics of the training set only), then apply the same file "
        "to the query and the reference descriptors.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    learn = commands.add_parser("learn", help="learn a PCA from a descriptor file",
                                description="Learn PCA-whitening from a descriptor file (e.g. training.h5).")
    learn.add_argument("train", help="descriptor file to learn from (HDF5 written by isc-extract, or the "
                       "organisers' vectors/image_names layout)")
    learn.add_argument("-o", "--output", required=True, metavar="PCA.npz", help="where to save the PCA")
    learn.add_argument("--dim", type=positive_int, default=DESCRIPTOR_TRACK_MAX_DIM,
                       help=f"output dimension (default {DESCRIPTOR_TRACK_MAX_DIM}, the descriptor track's limit)")
    learn.add_argument("--no-whiten", action="store_true", help="plain PCA projection, no whitening")
    learn.add_argument("--quiet", action="store_true", help="no message")
    apply = commands.add_parser("apply", help="whiten descriptor files with a learnt PCA",
                                description="Apply a learnt PCA to descriptor files (same ids, L2-normalised).")
    apply.add_argument("pca", help="PCA file written by isc-pca learn")
    apply.add_argument("inputs", nargs="+", metavar="IN.h5", help="descriptor files to whiten")
    apply.add_argument("-o", "--output", nargs="+", required=True, metavar="OUT.h5",
                       help="output files, one per input, in the same order")
    apply.add_argument("--negatives", metavar="TRAIN.h5", default=None,
                       help="negative-embedding subtraction (the descriptor track's counterpart of isc-search's score "
                       "normalisation): subtract from each whitened descriptor --neg-beta x the mean of its --neg-k "
                       "nearest descriptors of this training file (whitened alike), then L2-normalise; give the "
                       "query and reference files, not this one")
    apply.add_argument("--neg-beta", type=float_between(0, MAX_BETA), default=NegativeEmbeddings.beta,
                       help=f"weight of the subtracted training neighbours, 0 to {MAX_BETA:g} (default %(default)s)")
    apply.add_argument("--neg-k", type=positive_int, default=NegativeEmbeddings.k,
                       help="training neighbours averaged (default %(default)s)")
    apply.add_argument("--quiet", action="store_true", help="no messages")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "learn":
        check_outputs(inputs=[args.train], outputs=[args.output])
        pca = learn_pca_file(args.train, args.output, args.dim, whiten=not args.no_whiten)
        if not args.quiet:
            print(f"PCA{'-whitening' if pca.whiten else ''} {pca.mean.shape[0]} -> {pca.dim} dimensions learnt "
                  f"on {pca.attrs['n_train']} descriptors, saved to {args.output}")
        return 0
    if len(args.inputs) != len(args.output):
        raise InputError(f"{len(args.inputs)} input files but {len(args.output)} output files")
    negatives = [args.negatives] if args.negatives else []
    check_outputs(inputs=[args.pca, *args.inputs, *negatives], outputs=args.output)
    pca = PCAWhitening.load(args.pca)
    pairs = list(zip(args.inputs, args.output, strict=True))
    written = apply_pca_files(pca, pairs, args.negatives, NegativeEmbeddings(args.neg_beta, args.neg_k), args.quiet)
    for (source, target), rows in zip(pairs, written, strict=True):
        if not args.quiet:
            print(f"{source} -> {target}: {rows} descriptors of dimension {pca.dim}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
