"""Reference views against their cost: matching-track µAP with each reference described as its full view
and 5 crops (``isc-extract --crops`` on the references) or as its full view alone, queries with crops in both.

Descriptors come from the toolkit's own extraction (``isc.extract.extraction.extract``, SSCD on the CPU, cached as HDF5
files in --work and reused while the images and the model are unchanged); the plain training descriptors,
for whitening and score normalisation, through ``bench_quality.descriptors``. Every row is
``isc.search.matching.search`` scored by ``isc.evaluate.metrics.evaluate``; the last column is the µAP difference that
reference views make, paired over 1,000 bootstrap resamples of the queries (mean [2.5%, 97.5%]).
The cost: the seconds each crops extraction took (recorded when it ran), and the index size (rows × d × 4 bytes).

    python scripts/bench_reference_views.py --data photoset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import bootstrap_muap, descriptors, unit  # noqa: E402

from isc.core.descriptors import read_descriptors  # noqa: E402
from isc.core.files import write_json
from isc.core.tables import read_ground_truth
from isc.evaluate.metrics import evaluate  # noqa: E402
from isc.extract.extraction import extract, extraction_config, is_complete  # noqa: E402
from isc.extract.image_files import list_split_images, select_split_images  # noqa: E402
from isc.models import create_model  # noqa: E402
from isc.search.matching import search
from isc.search.normalisation import ScoreNorm  # noqa: E402
from isc.search.pca import learn_pca  # noqa: E402

MODEL = "sscd"


def crops_descriptors(root: Path, split: str, phase: int, work: Path, quiet: bool) -> tuple[list[str], np.ndarray, float]:
    """(ids, one per view, unit descriptors, extraction seconds) of a split's images as full view + 5 crops."""
    model = create_model(MODEL)
    images = list_split_images(root, split)
    if split == "query":
        images = select_split_images(images, split, phase)
    path = work / f"{MODEL}_{split}{phase if split == 'query' else ''}_views.h5"
    timings_path = work / "extract_seconds.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if not is_complete(path, images, extraction_config(model, crops=True)):
        start = time.perf_counter()
        extract(images, path, model, device="cpu", crops=True, quiet=quiet)
        timings[path.name] = time.perf_counter() - start
        write_json(timings_path, timings, indent=1, sort_keys=True)
    ids, vectors, _ = read_descriptors(path, split, views=True)
    return ids, unit(vectors), timings.get(path.name, float("nan"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root in the competition's layout (isc-synth)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder caching the descriptor files (default: DATA.reference_views next to the dataset)")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=1, help="queries and ground truth of this phase")
    parser.add_argument("--k", type=int, default=10, help="references kept per query (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    work = args.work or args.data.with_name(args.data.name + ".reference_views")
    work.mkdir(parents=True, exist_ok=True)
    truth = read_ground_truth(args.data / ("ground_truth.csv" if args.phase == 1 else "ground_truth_phase2.csv"))

    plain, _ = descriptors(args.data, args.phase, MODEL, work, args.quiet)
    query_ids, query, query_seconds = crops_descriptors(args.data, "query", args.phase, work, args.quiet)
    view_ids, views, views_seconds = crops_descriptors(args.data, "reference", args.phase, work, args.quiet)
    timings = json.loads((work / "extract_seconds.json").read_text())
    plain_seconds = timings.get(f"{MODEL}_reference.h5", float("nan"))
    (reference_ids, reference), training = plain["reference"], plain["training"][1]
    n_views = len(view_ids) // len(reference_ids)
    print(f"{args.data}: phase {args.phase}, {len(truth)} queries ({(truth['reference_id'] != '').sum()} with a "
          f"match), {len(reference_ids)} references, k={args.k}; {MODEL} on 2 x86 cores (shared): references "
          f"{plain_seconds:.0f} s plain, {views_seconds:.0f} s with {n_views} views each; queries with crops "
          f"{query_seconds:.0f} s; index {reference.nbytes / 1e6:.1f} MB plain, {views.nbytes / 1e6:.1f} MB with views")

    pca = learn_pca(training, 256)
    descriptor_sets = {"sscd 512": (query, reference, views, training),
                       "sscd PCA-whitened 256": (pca.apply(query), pca.apply(reference), pca.apply(views),
                                                 pca.apply(training))}
    weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=1000)
    print("| descriptors (query crops) | score normalisation | reference views | µAP | recall@P90 | recall@1 | "
          "search (s) | µAP on − off (95% bootstrap) |")
    print("|---|---|---|---:|---:|---:|---:|---|", flush=True)
    for name, (q, r, v, t) in descriptor_sets.items():
        for label, norm in (("none", None), ("β=0.5 n=10:10", ScoreNorm(0.5, (10, 10)))):
            options = {} if norm is None else {"training": t, "norm": norm}
            off = None
            for on, (ids, refs) in enumerate(((reference_ids, r), (view_ids, v))):
                start = time.perf_counter()
                predictions = search(query_ids, q, ids, refs, k=args.k, quiet=True, **options)
                seconds = time.perf_counter() - start
                metrics = evaluate(predictions, truth)
                resampled = bootstrap_muap(predictions, truth, weights)
                off = resampled if off is None else off
                low, high = np.percentile(resampled - off, [2.5, 97.5])
                gain = f"{np.mean(resampled - off):+.3f} [{low:+.3f}, {high:+.3f}]" if on else ""
                p90 = "-" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.3f}"
                print(f"| {name} | {label} | {f'{n_views} per reference' if on else 'off'} | {metrics.muap:.3f} | "
                      f"{p90} | {metrics.recall_at_rank1:.3f} | {seconds:.2f} | {gain} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
