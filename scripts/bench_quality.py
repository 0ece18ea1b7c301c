"""Quality of descriptor models and matching options on one dataset: µAP and recall at 90% precision.

Every model's descriptors come from the toolkit's own extraction (``isc.extract.extract``, cached as HDF5
files in --work and reused while the images and the model are unchanged), every matching row from
``isc.search.search``, every score from ``isc.metrics.evaluate``, on the same queries, references and
ground truth. One Markdown table row per (model, matching): no score normalisation, then for each β of
--betas and neighbour range of --neighbors the score normalised by the training set (the query's bias
only, as SSCD's evaluation; with --normalize-references also the reference's).

    isc-synth /work/photoset --photos photos/ --drawings drawings/ ...        # see docs/BENCHMARKS.md
    python scripts/bench_quality.py --data /work/photoset --models efficientnet_lite0,pdq,sscd,sscd_distilled
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from isc.extract import extract, extraction_config, is_complete, list_split_images, select_split_images
from isc.io import atomic_path, read_descriptors, read_ground_truth
from isc.metrics import evaluate
from isc.models import create_model
from isc.search import knn, parse_neighbor_range, search

SPLITS = ("query", "reference", "training")


def descriptors(root: Path, phase: int, model_name: str, work: Path, quiet: bool) -> tuple[dict, float]:
    """``{split: (ids, descriptors)}`` of one model and the seconds its extraction took (recorded when cached)."""
    model = create_model(model_name)
    config = extraction_config(model)
    timings_path = work / "extract_seconds.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    out, seconds = {}, 0.0
    for split in SPLITS:
        images = list_split_images(root, split)
        if split == "query":
            images = select_split_images(images, split, phase)
        path = work / f"{model_name.replace(':', '_').replace('/', '_')}_{split}{phase if split == 'query' else ''}.h5"
        if not is_complete(path, images, config):
            start = time.perf_counter()
            extract(images, path, model, device="cpu", quiet=quiet, resume=False)
            timings[path.name] = time.perf_counter() - start
            with atomic_path(timings_path) as tmp:
                tmp.write_text(json.dumps(timings, indent=1, sort_keys=True))
        ids, vectors, _ = read_descriptors(path, split)
        # unit length here, once: PDQ's ±1 hashes are not (the ranking is the same)
        out[split] = (ids, vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
        seconds += timings.get(path.name, float("nan"))
    return out, seconds


def near_duplicates(ids: list[str], vectors: np.ndarray, threshold: float) -> list[tuple[float, str, str]]:
    """(similarity, id, id) of the pairs of distinct images at least ``threshold`` alike, most alike first."""
    scores, neighbours = knn(vectors, vectors, min(6, len(ids)), "ip", quiet=True)
    pairs: dict[tuple[str, str], float] = {}  # each pair once, though found from both ends
    for i in range(len(ids)):
        for score, j in zip(scores[i], neighbours[i], strict=True):
            if j != i and score >= threshold:
                key = tuple(sorted((ids[i], ids[int(j)])))
                pairs[key] = max(pairs.get(key, -1.0), float(score))
    return sorted(((score, a, b) for (a, b), score in pairs.items()), reverse=True)


def matchings(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(label, search options) of every matching row."""
    rows = [("raw", {})]
    for beta in args.betas:
        for text in args.neighbors:
            neighbors = parse_neighbor_range(text)
            rows.append((f"norm β={beta:g} n={text}", {"norm_beta": beta, "norm_neighbors": neighbors}))
            if args.normalize_references:
                rows.append((f"norm β={beta:g} n={text} +refs",
                             {"norm_beta": beta, "norm_neighbors": neighbors, "normalize_references": True}))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root in the competition's layout (isc-synth)")
    parser.add_argument("--models", default="efficientnet_lite0,pdq,sscd,sscd_distilled",
                        help="comma-separated names for isc.models.create_model (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder caching the descriptor files (default: DATA.bench_quality next to the dataset)")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=1, help="queries and ground truth of this phase")
    parser.add_argument("--k", type=int, default=10, help="references kept per query (default: %(default)s)")
    parser.add_argument("--betas", type=lambda s: [float(x) for x in s.split(",") if x], default=[1.0],
                        help="comma-separated β of the normalised rows; empty for none (default: 1)")
    parser.add_argument("--neighbors", type=lambda s: [x for x in s.split(",") if x], default=["1:3"],
                        help="comma-separated training neighbour ranges A:B of the normalised rows (default: 1:3)")
    parser.add_argument("--normalize-references", action="store_true", help="also rows normalising the references")
    parser.add_argument("--duplicates", type=float, default=None, metavar="SIMILARITY",
                        help="also list, per model, the reference pairs at least this similar: near-duplicates "
                        "among the references mean the dataset is wrong, not the model")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    work = args.work or args.data.with_name(args.data.name + ".bench_quality")
    work.mkdir(parents=True, exist_ok=True)
    truth_file = args.data / ("ground_truth.csv" if args.phase == 1 else "ground_truth_phase2.csv")
    truth = read_ground_truth(truth_file)

    print(f"{args.data}: phase {args.phase}, {len(truth)} queries ({(truth['reference_id'] != '').sum()} with a "
          f"match), k={args.k}", flush=True)
    print("| model | matching | µAP | recall@P90 | recall@1 | extract (s) | search (s) |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for model_name in args.models.split(","):
        data, extract_seconds = descriptors(args.data, args.phase, model_name, work, args.quiet)
        (query_ids, query), (reference_ids, reference), (_, training) = (data[s] for s in SPLITS)
        if args.duplicates is not None:
            pairs = near_duplicates(reference_ids, reference, args.duplicates)
            listed = ", ".join(f"{a}-{b} {s:.2f}" for s, a, b in pairs[:10])
            print(f"{model_name}: {len(pairs)} reference pairs with similarity >= {args.duplicates}"
                  + (f" ({listed}{', ...' if len(pairs) > 10 else ''})" if pairs else ""), file=sys.stderr, flush=True)
        for label, options in matchings(args):
            start = time.perf_counter()
            predictions = search(query_ids, query, reference_ids, reference, k=args.k,
                                 training=training if options else None, quiet=True, **options)
            search_seconds = time.perf_counter() - start
            metrics = evaluate(predictions, truth)
            p90 = "-" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.3f}"
            print(f"| {model_name} | {label} | {metrics.muap:.3f} | {p90} | {metrics.recall_at_rank1:.3f} | "
                  f"{extract_seconds:.0f} | {search_seconds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
