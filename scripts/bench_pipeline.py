"""The whole pipeline on the mini dataset: `isc-run --demo` step by step, then what its two choices are
worth (PCA-whitening learnt on the training descriptors, score normalisation by the training set).

Prints three tables: the run's steps with their seconds, phase-1 µAP of the four combinations, and
phase-1 µAP against the number of training images used for normalisation (``--training-limit``), all
computed from the descriptor files the run wrote. Run it again on the same folder to time the
second, skipping run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from isc.core.descriptors import read_descriptors
from isc.core.tables import read_ground_truth
from isc.evaluate.metrics import evaluate
from isc.extract.extraction import ExtractOptions
from isc.pipeline.demo import DEMO_IMAGE_SIZE, run_demo
from isc.pipeline.run import RunConfig
from isc.search.matching import search


def ablation(descriptors: Path, ground_truth: Path, pca_dim: int) -> list[tuple[str, str, float, float | None]]:
    """(descriptors, search, µAP, recall at P90) of phase 1, raw or whitened, with and without normalisation."""
    gt = read_ground_truth(ground_truth)
    rows = []
    for label, suffix in (("raw", ""), (f"PCA-whitened to {pca_dim}", f"_pca{pca_dim}")):
        query_ids, query, _ = read_descriptors(descriptors / f"query_phase1{suffix}.h5")
        reference_ids, reference, _ = read_descriptors(descriptors / f"reference{suffix}.h5")
        training = read_descriptors(descriptors / f"training{suffix}.h5")[1]
        for normalised in (False, True):
            predictions = search(query_ids, query, reference_ids, reference,
                                 training=training if normalised else None, quiet=True)
            metrics = evaluate(predictions, gt)
            rows.append((f"{label} ({query.shape[1]}-d)", "normalised" if normalised else "plain",
                         metrics.muap, metrics.recall_at_p90))
    return rows


def training_size(descriptors: Path, ground_truth: Path, sizes: list[int]) -> list[tuple[int, float]]:
    """Phase-1 µAP of the raw descriptors normalised by the first N training images (``--training-limit``)."""
    gt = read_ground_truth(ground_truth)
    query_ids, query, _ = read_descriptors(descriptors / "query_phase1.h5")
    reference_ids, reference, _ = read_descriptors(descriptors / "reference.h5")
    training = read_descriptors(descriptors / "training.h5")[1]
    return [(n, evaluate(search(query_ids, query, reference_ids, reference, training=training[:n], quiet=True),
                         gt).muap) for n in sizes if n <= len(training)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("work", help="work folder (kept: a second run times the skipping run)")
    parser.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    began = time.perf_counter()
    config = RunConfig(work=Path(args.work), image_size=args.image_size, extraction=ExtractOptions(device=args.device),
                       submissions=Path(args.work) / "submissions", quiet=True)
    summary = run_demo(config)
    wall = time.perf_counter() - began
    print("| step | what | images | seconds | result |\n|---|---|---:|---:|---|")
    for step in summary.steps:
        print(f"| {step.stage} | {step.target} | {'' if step.images is None else step.images} | "
              f"{step.seconds:.1f} | {step.result} |")
    print(f"\nwall time including start-up: {wall:.1f} s\n")

    print("| phase-1 descriptors | search | µAP | recall at P90 |\n|---|---|---:|---:|")
    for label, how, muap, p90 in ablation(Path(args.work) / "descriptors", Path(args.work) / "mini" / "ground_truth.csv",
                                          config.pca_dim):
        print(f"| {label} | {how} | {muap:.4f} | {'–' if p90 is None else f'{p90:.4f}'} |")

    print("\n| training images for normalisation (raw descriptors) | phase-1 µAP |\n|---:|---:|")
    for n, muap in training_size(Path(args.work) / "descriptors", Path(args.work) / "mini" / "ground_truth.csv",
                                 [10, 30, 100, 300, 600]):
        print(f"| {n:,} | {muap:.4f} |")


if __name__ == "__main__":
    main()
