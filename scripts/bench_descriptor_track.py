"""The descriptor track's levers against isc-run's descriptor default: µAP as the organisers score a descriptor
submission (each query and reference one vector of at most 256 dimensions, an exact L2 search, the
10 × n_queries closest pairs), each row with its difference to the default paired over bootstrap resamples
of the queries (mean [2.5%, 97.5%]).

The default: `sscd` of each image's full view, PCA-whitened to 256 (--dim) on the training descriptors. The levers:
database-side augmentation of the references and α-query expansion with them (isc.search.expansion; both
against the ISC 2021 rules, which describe each query and reference on its own: measured, never a
default), negative-embedding subtraction (isc.search.negatives), with the training set smoothed by DBA as
the track's winner did, several models concatenated before the PCA (isc.search.pca.concatenate_descriptors)
and a query's six views (full view and 5 crops) pooled into its one descriptor (isc.search.pooling).
Descriptors come from bench_quality's caches in --work (extracted there when missing), so a copy of the
work folder of `bench_quality.py --verify` holds what the default, pooling and negatives need (link its
crops folder rather than copy it: a copy changes the crops' change times and they are described again); the
other models of --models are extracted for the ensembles, whose pooled rows pool sscd's views alone. The lever's own seconds (CPU, this machine) are printed
beside each row.

    python scripts/bench_descriptor_track.py --data setA --work workA_copy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import crop_descriptors, descriptors, paired_cells  # noqa: E402

from isc.core.competition import DESCRIPTOR_TRACK_MAX_DIM, SPLITS  # noqa: E402
from isc.core.tables import read_ground_truth  # noqa: E402
from isc.search.capped_search import descriptor_track_predictions  # noqa: E402
from isc.search.expansion import Expansion, database_side_augmentation, query_expansion  # noqa: E402
from isc.search.negatives import NegativeEmbeddings, subtract_negative_embeddings  # noqa: E402
from isc.search.pca import concatenate_descriptors, learn_pca  # noqa: E402
from isc.search.pooling import ViewPooling, pool_views  # noqa: E402


@dataclass(frozen=True)
class Lever:
    """One row: which descriptors, and which levers applied in the order of :func:`transform`."""

    label: str
    models: tuple[str, ...] = ("sscd",)
    weights: tuple[float, ...] = (1.0,)
    pooling: ViewPooling | None = None  # the query's views pooled (sscd's part only)
    pool_whitened: bool = True  # pooled after the whitening (each view whitened), else before it
    negatives: NegativeEmbeddings | None = None
    smoothed_negatives: Expansion | None = None  # the training set smoothed by DBA before it serves as negatives
    dba: Expansion | None = None  # the references
    qe: Expansion | None = None  # the queries, with the (augmented) references
    seconds: dict[str, float] = field(default_factory=dict, compare=False)


def in_order(ids: list[str], x: np.ndarray, wanted: list[str]) -> np.ndarray:
    """The rows of ``x`` (one per id of ``ids``) in the order of ``wanted``."""
    row = {i: n for n, i in enumerate(ids)}
    return x[[row[i] for i in wanted]]


def transform(lever: Lever, data: dict, views: tuple[list[str], np.ndarray] | None,
              dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, reference) descriptors of the descriptor-track file ``lever`` makes, float32 [n, dim]."""
    clock = time.process_time

    def timed(name: str, began: float) -> None:
        lever.seconds[name] = lever.seconds.get(name, 0.0) + clock() - began

    qids = data["sscd"]["query"][0]
    sscd_query = data["sscd"]["query"][1]
    pooled_raw = None
    if lever.pooling is not None and not lever.pool_whitened:
        began = clock()
        pooled_raw = in_order(*pool_views(*views, lever.pooling), qids)
        timed("pooling", began)

    def joined(split: str, sscd_part: np.ndarray | None = None) -> np.ndarray:
        parts = [sscd_part if (m == "sscd" and sscd_part is not None) else data[m][split][1] for m in lever.models]
        return parts[0] if len(parts) == 1 else concatenate_descriptors(parts, list(lever.weights))

    began = clock()
    training = joined("training")
    pca = learn_pca(training, dim)
    query = pca.apply(joined("query", pooled_raw if pooled_raw is not None else sscd_query))
    reference, training = pca.apply(joined("reference")), pca.apply(training)
    timed("PCA", began)
    if lever.pooling is not None and lever.pool_whitened:
        began = clock()
        crop_ids, crops = views
        if len(lever.models) > 1:  # each view joined with the other models' full view, then whitened
            row = {qid: i for i, qid in enumerate(qids)}
            others = [data[m]["query"][1][[row[c] for c in crop_ids]] for m in lever.models[1:]]
            crops = concatenate_descriptors([crops, *others], list(lever.weights))
        query = in_order(*pool_views(crop_ids, pca.apply(crops), lever.pooling), qids)
        timed("pooling", began)
    if lever.negatives is not None:
        began = clock()
        negatives = training
        if lever.smoothed_negatives is not None:
            negatives = database_side_augmentation(training, lever.smoothed_negatives)
        query, reference = (subtract_negative_embeddings(x, negatives, lever.negatives.beta, lever.negatives.k)
                            for x in (query, reference))
        timed("negatives", began)
    if lever.dba is not None:
        began = clock()
        reference = database_side_augmentation(reference, lever.dba)
        timed("DBA", began)
    if lever.qe is not None:
        began = clock()
        query = query_expansion(query, reference, lever.qe)
        timed("QE", began)
    return query, reference


def levers(models: list[str]) -> list[Lever]:
    """Every row: the default, each lever alone, then together."""
    lyakaap = NegativeEmbeddings(0.35, 10)
    rows = [Lever("isc-run's default: sscd full view, PCA-whitened")]
    for k in (1, 2, 3):
        rows.append(Lever(f"a. DBA of the references k={k} α=3", dba=Expansion(k, 3.0)))
    for k in (1, 2, 3):
        rows.append(Lever(f"a. αQE with the references k={k} α=3", qe=Expansion(k, 3.0)))
    rows.append(Lever("a. DBA k=1 + αQE k=1, α=3", dba=Expansion(1, 3.0), qe=Expansion(1, 3.0)))
    rows.append(Lever("a. DBA k=2 + αQE k=2, α=3", dba=Expansion(2, 3.0), qe=Expansion(2, 3.0)))
    ensembles = [("sscd", m) for m in models] + ([("sscd", *models)] if len(models) > 1 else [])
    for ensemble in ensembles:
        for weight in (0.5, 1.0):
            weights = (1.0, *[weight] * (len(ensemble) - 1))
            rows.append(Lever(f"b. {'+'.join(ensemble)} weights {','.join(f'{w:g}' for w in weights)}, PCA",
                              models=ensemble, weights=weights))
    for pooling in (ViewPooling("mean"), ViewPooling("gem", 3.0)):
        name = "mean" if pooling.method == "mean" else f"GeM p={pooling.p:g}"
        rows.append(Lever(f"c. 6 views pooled ({name}) after whitening", pooling=pooling))
        rows.append(Lever(f"c. 6 views pooled ({name}) before whitening", pooling=pooling, pool_whitened=False))
    for beta, k in ((0.25, 3), (0.35, 10), (0.5, 10)):
        rows.append(Lever(f"d. negatives β={beta:g} k={k}", negatives=NegativeEmbeddings(beta, k)))
    rows.append(Lever("d. negatives β=0.35 k=10, training smoothed by DBA k=2 α=3 (the winner's)",
                      negatives=lyakaap, smoothed_negatives=Expansion(2, 3.0)))
    mean = ViewPooling("mean")
    rows.append(Lever("c+d. pooled (mean) + negatives β=0.35 k=10", pooling=mean, negatives=lyakaap))
    for ensemble in ensembles:
        weights = (1.0, *[0.5] * (len(ensemble) - 1))
        rows.append(Lever(f"b+c. {'+'.join(ensemble)} 0.5 + pooled (mean)", models=ensemble, weights=weights,
                          pooling=mean))
        rows.append(Lever(f"b+c+d. {'+'.join(ensemble)} 0.5 + pooled (mean) + negatives β=0.35 k=10",
                          models=ensemble, weights=weights, pooling=mean, negatives=lyakaap))
    if "sscd_distilled" in models:  # the best ensemble with the other levers that did not lose
        pair = ("sscd", "sscd_distilled")
        rows.append(Lever("b+d. sscd+sscd_distilled 1,1 + negatives β=0.25 k=3", models=pair, weights=(1.0, 1.0),
                          negatives=NegativeEmbeddings(0.25, 3)))
        rows.append(Lever("b+a. sscd+sscd_distilled 1,1 + αQE k=1 α=3", models=pair, weights=(1.0, 1.0),
                          qe=Expansion(1, 3.0)))
    rows.append(Lever("c+d+a. pooled (mean) + negatives β=0.35 k=10 + DBA k=1 + αQE k=1", pooling=mean,
                      negatives=lyakaap, dba=Expansion(1, 3.0), qe=Expansion(1, 3.0)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root in the competition's layout")
    parser.add_argument("--work", type=Path, required=True,
                        help="bench_quality's cache folder (a copy of it: descriptors missing there are added)")
    parser.add_argument("--models", default="efficientnet_lite0,sscd_distilled",
                        help="comma-separated models concatenated with sscd; empty for none (default: %(default)s)")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=1, help="queries and ground truth of this phase")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=DESCRIPTOR_TRACK_MAX_DIM,
                        help="the PCA's dimensions (default: %(default)s, the track's limit; less for a tiny trial set)")
    parser.add_argument("--only", type=lambda text: tuple(text.split(",")), default=("",),
                        help="comma-separated label starts (a., b., c., d., b+c., ...): only those rows and the default")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    truth = read_ground_truth(args.data / ("ground_truth.csv" if args.phase == 1 else "ground_truth_phase2.csv"))
    models = [m for m in args.models.split(",") if m]
    data = {}
    for model in ["sscd", *models]:
        loaded = descriptors(args.data, args.phase, model, args.work, args.quiet)[0]
        data[model] = {split: loaded[split] for split in SPLITS}
    rows = levers(models)
    rows = rows[:1] + [lever for lever in rows[1:] if lever.label.startswith(args.only)]
    # the query crops' descriptors only where a row pools them
    views = crop_descriptors(args.data, args.phase, "sscd", args.work, args.quiet) \
        if any(lever.pooling for lever in rows) else None
    timings = json.loads((args.work / "extract_seconds.json").read_text()) \
        if (args.work / "extract_seconds.json").is_file() else {}
    sizes = {split: len(data["sscd"][split][0]) for split in SPLITS}
    print(f"{args.data}: phase {args.phase}, {len(truth)} queries ({(truth['reference_id'] != '').sum()} with a "
          f"match), {sizes['reference']} references, {sizes['training']} training images, PCA to {args.dim}; extraction seconds "
          f"recorded: {json.dumps({k: round(v) for k, v in timings.items()})}", flush=True)
    weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)),
                                                   size=args.resamples)
    print("| configuration | µAP | recall@P90 | µAP − default (95% bootstrap) | lever CPU s |")
    print("|---|---:|---:|---|---|", flush=True)
    baseline = None
    for lever in rows:
        query, reference = transform(lever, data, views, args.dim)
        assert query.shape[1] <= DESCRIPTOR_TRACK_MAX_DIM and query.dtype == reference.dtype == np.float32
        predictions = descriptor_track_predictions(data["sscd"]["query"][0], query, data["sscd"]["reference"][0],
                                                   reference)
        resampled, cells = paired_cells(predictions, truth, weights, baseline)
        baseline = resampled if baseline is None else baseline
        cost = ", ".join(f"{name} {s:.1f}" for name, s in lever.seconds.items() if name != "PCA")
        print(f"| {lever.label} | {cells} | {cost or '-'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
