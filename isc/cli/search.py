"""isc-search: match query descriptors against reference descriptors, or export a kNN graph."""

from __future__ import annotations

import argparse
from pathlib import Path

from isc.cli.common import check_outputs, positive_int, run_command
from isc.cli.options import add_phase_option, add_search_options, search_options
from isc.core.descriptors import provenance_path, read_descriptor_classes, read_descriptors
from isc.core.files import InputError
from isc.search.knn_graph import knn_graph, knn_graph_paths, write_knn_graph
from isc.search.matching import SearchOptions, search_files

GRAPH_K = 80  # --knn-graph's default k

MEMORY_NOTE = """\
memory: the references are held in RAM as float32 (n x d x 4 bytes: 1M x 256 = 1 GB), plus a
normalised copy if they were not L2-normalised, and the training descriptors likewise; queries are
searched in blocks (50k x 256 = 51 MB). Backend torch on a GPU holds a reference block of up to 4M
rows in float32 and float16 (1M x 256: 1.5 GB) and a 2 GB block of float16 scores; faiss-gpu holds
the references, float32, sharded over all visible GPUs (1 GB in all for 1M x 256) and limits k to 2048.
torch on the CPU is exact but slower than faiss-cpu.

score normalisation (--training): s'(q, r) = s(q, r) - B * agg(s(q, t_i)), t_i the A-th to B-th
nearest training descriptors of q (--norm-neighbors A:B, 1-based, inclusive); the isc2021 baseline
used --norm-beta 2 --norm-neighbors 10:10, SSCD --norm-beta 1 --norm-neighbors 1:3; the default,
--norm-beta 0.5 --norm-neighbors 10:10, scored best on photos (docs/BENCHMARKS.md; the best range may move
with a larger training set).

the query and reference files may hold several views (crops) of each image, the same id repeated, when
their attribute views_per_id says so (isc-extract --crops): each pair then scores its best (query view,
reference view), each view normalised on its own; every query still keeps k distinct references.

the query, reference and training files must come from the same model (their attributes are compared
as isc-submit does; files without model attributes, such as the organisers' own layout, only get a
warning). Beside the CSV, <output>.provenance.json records the options, each input's path, size and
model attributes, and the toolkit version; isc-submit matching copies it into the manifest.

examples:
  isc-search --query q.h5 --reference r.h5 --training t.h5 -o predictions.csv
  isc-search --query q.h5 --reference r.h5 --index IVF4096,PQ32 --nprobe 64 -o predictions.csv
  isc-search --query queries.h5 --reference r.h5 --training t.h5 --phase 2 -o predictions_phase2.csv
  isc-search --knn-graph r.h5 -o graph/ --k 80
"""


def build_parser() -> argparse.ArgumentParser:
    defaults = SearchOptions()
    parser = argparse.ArgumentParser(
        prog="isc-search",
        description="k-nearest-neighbour search of query descriptors among reference descriptors (inner "
        "product of L2-normalised descriptors, exact unless --index), with optional score normalisation "
        "by a training set; writes a matching-track predictions CSV query_id,reference_id,score. "
        "With --knn-graph, exports the kNN graph of one descriptor file instead.",
        epilog=MEMORY_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--query", metavar="Q.h5",
                        help="query descriptor file (from isc-extract, or the organisers' vectors/image_names layout)")
    parser.add_argument("--reference", metavar="R.h5", help="reference descriptor file")
    parser.add_argument("--training", metavar="T.h5",
                        help="training descriptor file: turns score normalisation on (off without it)")
    parser.add_argument("-o", "--output", required=True,
                        help="predictions CSV to write, with its provenance <output>.provenance.json (with "
                        "--knn-graph: the output folder)")
    add_phase_option(parser, "search only the queries of this competition phase; refused when the query file "
                     "has none")
    add_search_options(parser)
    parser.add_argument("--max-results", type=positive_int, default=defaults.max_results,
                        help=f"keep the best N (query, reference) pairs over all queries (default "
                        f"{defaults.max_results}, the matching track's limit)")
    parser.add_argument("--index", metavar="FAISS_STRING",
                        help="approximate search with a FAISS index (e.g. IVF1024,Flat or IVF1024,PQ32), trained "
                        "on the training descriptors if given, else the references; prints its recall@k "
                        "against the exact search on 1000 queries")
    parser.add_argument("--nprobe", type=positive_int, default=defaults.nprobe,
                        help=f"IVF lists visited per query (default {defaults.nprobe})")
    parser.add_argument("--knn-graph", metavar="DESC.h5",
                        help=f"export the kNN graph of this descriptor file against itself, its --k nearest (here "
                        f"by default {GRAPH_K}), into the folder -o: "
                        "<name>.npz (ids, neighbours, similarities), features/<name>.bin and "
                        "knns/<name>/faiss_k_<k>.npz (learn-to-cluster's layout), and labels/<name>.meta "
                        "when the file has classes (isc-extract --images over one folder per class)")
    parser.add_argument("--ignore-attribute", action="append", default=[], metavar="KEY",
                        help="descriptor attribute not compared between the files (repeatable); per-run ones "
                        "(split, timings, paths, isc_version, ...) are never compared")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.knn_graph:
        return run_knn_graph(args)
    if not args.query or not args.reference:
        raise InputError("--query and --reference are required (or --knn-graph DESC.h5)")
    if args.normalize_references and not args.training:
        raise InputError("--normalize-references needs --training")
    options = search_options(args, max_results=args.max_results, index=args.index, nprobe=args.nprobe)
    check_outputs(inputs=[args.query, args.reference, args.training],
                  outputs=[args.output, provenance_path(args.output)])
    _, record = search_files(args.query, args.reference, args.output, args.training, options, phase=args.phase,
                             ignore_attributes=args.ignore_attribute, quiet=args.quiet)
    if not args.quiet:
        phase = f" (phase {args.phase})" if args.phase else ""
        found = record["predictions"]
        print(f"{found['rows']} predictions for {found['queries']} queries{phase} written to {args.output}")
    return 0


def run_knn_graph(args: argparse.Namespace) -> int:
    name, k = Path(args.knn_graph).stem, GRAPH_K if args.k is None else args.k
    check_outputs(inputs=[args.knn_graph], outputs=knn_graph_paths(args.output, name, k).values(),
                  folders=[args.output])
    ids, descriptors, _ = read_descriptors(args.knn_graph)
    classes = read_descriptor_classes(args.knn_graph)
    neighbours, similarities = knn_graph(descriptors, k, args.backend, args.quiet)
    paths = write_knn_graph(args.output, name, ids, descriptors, neighbours, similarities, classes)
    if not args.quiet:
        print(f"kNN graph of {len(ids)} descriptors, k = {neighbours.shape[1]}: " + ", ".join(map(str, paths)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
