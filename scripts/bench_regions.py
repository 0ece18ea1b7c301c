"""Region evidence and a second model's view as calibration features, against isc-run's default verification.

The candidates, their verification and the self-made copies are those of ``scripts/bench_quality.py --verify``
(sscd with query crops, 512-d as extracted, normalised: isc-run's default; each query's 10 best verified with
affine SIFT, the evidence reused from WORK/verify); the default row is the calibration fitted on those copies
over the default features. Each other row adds to the evidence of both the queries and the copies:

- ``region_similarity`` (:mod:`isc.verify.regions`): the pairs with at least N inliers cut to their matched regions,
  both cuts described by sscd (the search's model), their cosine; for N of --region-inliers;
- ``second_model_score`` (:func:`isc.verify.calibrate.pair_cosines`): the pair's cosine under --second-model's
  descriptors (one view per image, extracted once per split and cached in WORK);

and is calibrated on the copies exactly as the default (and, as an upper bound, on the ground truth of the other
half of the queries). Every score from ``isc.evaluate.metrics.evaluate``, every interval the paired bootstrap of
bench_quality (1,000 resamples of the queries) of the difference to the default. Then the cost: regions
described per query and their seconds, the second model's extraction seconds, projected to 50,000 queries.

    cp -r /work/data/workA /work/data/workA_h3
    python scripts/bench_regions.py --data /work/data/setA --work /work/data/workA_h3 --copies 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import (  # noqa: E402  (the script's own folder, as python scripts/... runs it)
    QUERIES_AT_SCALE,
    bootstrap_muap,
    crop_descriptors,
    cross_fitted_scores,
    descriptors,
    file_stem,
    self_made_evidence,
    verified_evidence,
)

from isc.core.tables import read_ground_truth  # noqa: E402
from isc.evaluate.metrics import evaluate  # noqa: E402
from isc.extract.extraction import ExtractOptions, extract, extraction_config, is_complete  # noqa: E402
from isc.extract.image_files import list_split_images, select_split_images  # noqa: E402
from isc.models import create_model  # noqa: E402
from isc.search.matching import search  # noqa: E402
from isc.search.normalisation import ScoreNorm  # noqa: E402
from isc.verify.calibrate import calibrate, copy_labels, pair_cosines  # noqa: E402
from isc.verify.regions import REGION_COLUMN, RegionDescriber, region_similarities  # noqa: E402

H100_IMAGES_PER_SECOND = 3_758  # timm:resnet50 @ 224 (sscd's network), nvJPEG + float16: docs/BENCHMARKS.md
SECOND = "second_model_score"


def with_regions(evidence: pd.DataFrame, images: dict[str, Path], min_inliers: int, work: Path, name: str,
                 quiet: bool) -> tuple[pd.DataFrame, int, float]:
    """The evidence with its ``region_similarity`` (sscd on CPU), the cuts described and the seconds it took."""
    start = time.perf_counter()
    similarity, cuts = region_similarities(
        evidence, images, min_inliers, RegionDescriber(create_model("sscd"), ExtractOptions(device="cpu")),
        work / "verify-cache" / "regions", work / "regions" / f"{name}_{min_inliers}.h5", quiet)
    return evidence.assign(**{REGION_COLUMN: similarity}), cuts, time.perf_counter() - start


def fewer_inliers(evidence: pd.DataFrame, min_inliers: int) -> pd.DataFrame:
    """Region evidence as a higher threshold would have made it: the rows under it at 0 (the cuts are the same)."""
    return evidence.assign(**{REGION_COLUMN: evidence[REGION_COLUMN].where(evidence["inliers"] >= min_inliers, 0.0)})


def second_model(args: argparse.Namespace, work: Path, copies: dict[str, Path]) -> tuple[dict, float]:
    """``{split or 'copies': (ids, descriptors)}`` of --second-model (one view per image) and its extraction
    seconds for the queries and references (what a run pays; the training images and copies are the calibration's)."""
    data, seconds = descriptors(args.data, args.phase, args.second_model, work, args.quiet)
    model = create_model(args.second_model)
    output = work / f"{file_stem(args.second_model)}_copies.h5"
    if not is_complete(output, copies, extraction_config(model)):
        extract(copies, output, model, device="cpu", quiet=args.quiet, resume=False)
    from isc.core.descriptors import read_descriptors

    ids, vectors, _ = read_descriptors(output)
    data["copies"] = (ids, vectors)
    return data, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root in the competition's layout")
    parser.add_argument("--work", type=Path, required=True, help="bench_quality's work folder (a copy of your own)")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=1)
    parser.add_argument("--k", type=int, default=10, help="candidates per query (default: %(default)s)")
    parser.add_argument("--copies", type=int, default=300, help="self-made copies the calibration is fitted on")
    parser.add_argument("--region-inliers", type=lambda s: sorted(int(x) for x in s.split(",")), default=[4, 8],
                        help="comma-separated inlier thresholds of the region rows (default: 4,8)")
    parser.add_argument("--second-model", default="sscd_distilled", help="the second model (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="verification processes (default: every core)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    work = args.work
    truth = read_ground_truth(args.data / ("ground_truth.csv" if args.phase == 1 else "ground_truth_phase2.csv"))
    print(f"{args.data}: phase {args.phase}, {len(truth)} queries ({(truth['reference_id'] != '').sum()} with a "
          f"match), k={args.k}, {args.copies} self-made copies", flush=True)

    name = "raw 512"  # isc-run's matching default: the candidates as extracted (bench_quality's source of that name)
    data = descriptors(args.data, args.phase, "sscd", work, args.quiet)[0]
    (rids, r), (tids, t) = data["reference"], data["training"]
    qids, q = crop_descriptors(args.data, args.phase, "sscd", work, args.quiet)

    def project(x: np.ndarray) -> np.ndarray:
        return x

    source = (project, qids, q, rids, r, tids, t)
    shortlist = search(qids, project(q), rids, project(r), k=args.k, training=project(t), norm=ScoreNorm(),
                       quiet=True)
    queries = select_split_images(list_split_images(args.data, "query"), "query", args.phase)
    references = list_split_images(args.data, "reference")
    training = list_split_images(args.data, "training")
    evidence, _ = verified_evidence(name, shortlist, queries, references, args, work, "affine")
    made = self_made_evidence(name, source, args, work, "affine")
    copies = {i: work / "copies" / f"{i}.jpg" for i in sorted(set(made["query_id"]))}

    lowest = args.region_inliers[0]
    evidence_r, cuts, region_seconds = with_regions(evidence, {**queries, **references}, lowest, work, "queries",
                                                    args.quiet)
    made_r, copy_cuts, copy_region_seconds = with_regions(made, {**copies, **references, **training}, lowest, work,
                                                          "copies", args.quiet)

    second, second_seconds = second_model(args, work, copies)
    (sq, sqx), (sr, srx), (st, stx) = second["query"], second["reference"], second["training"]
    evidence_s = evidence.assign(**{SECOND: pair_cosines(evidence, sq, sqx, sr, srx)})
    made_s = made.assign(**{SECOND: pair_cosines(made, *second["copies"], [*sr, *st], np.vstack([srx, stx]))})

    weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=1000)
    rows: list[tuple[str, pd.DataFrame, pd.DataFrame, int]] = [("default: score and SIFT evidence", evidence, made, 0)]
    for n in args.region_inliers:
        seen = fewer_inliers(evidence_r, n)
        # two cuts per pair with a region (a cosine of exactly 0 is a pair without one)
        rows.append((f"+ region similarity, ≥ {n} inliers", seen, fewer_inliers(made_r, n),
                     2 * int((seen[REGION_COLUMN] != 0).sum())))
    rows.append((f"+ {args.second_model} cosine", evidence_s, made_s, 0))
    top = args.region_inliers[-1]
    rows.append((f"+ region ≥ {top} + {args.second_model}", fewer_inliers(evidence_r, top).assign(
        **{SECOND: evidence_s[SECOND]}), fewer_inliers(made_r, top).assign(**{SECOND: made_s[SECOND]}), rows[-2][3]))
    baseline = None
    print("\n| features | calibrated on | µAP | recall@P90 | µAP − default (95% bootstrap) | regions described per "
          "query |")
    print("|---|---|---:|---:|---|---:|", flush=True)
    for label, seen, copies_seen, described in rows:
        fitted = calibrate(copies_seen, copy_labels(copies_seen), fitted_on="self-made copies")
        for calibrated_on, scores in ((f"{args.copies} self-made copies", fitted.scores(seen)),
                                      ("ground truth (2 folds)", cross_fitted_scores(seen, truth))):
            predictions = seen[["query_id", "reference_id"]].assign(score=scores)
            metrics = evaluate(predictions, truth)
            resampled = bootstrap_muap(predictions, truth, weights)
            baseline = resampled if baseline is None else baseline
            difference = resampled - baseline
            low, high = np.percentile(difference, [2.5, 97.5])
            p90 = "-" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.3f}"
            print(f"| {label} | {calibrated_on} | {metrics.muap:.3f} | {p90} | {np.mean(difference):+.3f} "
                  f"[{low:+.3f}, {high:+.3f}] | {described / len(queries):.2f} |", flush=True)

    n_queries = len(queries)
    print(f"\nRegions (≥ {lowest} inliers): {cuts:,} cuts for {n_queries:,} queries ({cuts / n_queries:.2f} per query) "
          f"in {region_seconds:.0f} s; {copy_cuts:,} for the {len(copies)} copies in {copy_region_seconds:.0f} s "
          f"(loading sscd, decoding, cutting, describing on 2 shared CPU cores).")
    at_scale = cuts / n_queries * QUERIES_AT_SCALE
    print(f"At {QUERIES_AT_SCALE:,} queries: {at_scale:,.0f} cuts, {at_scale / H100_IMAGES_PER_SECOND:.0f} s of "
          f"sscd on one H100 at {H100_IMAGES_PER_SECOND:,} images/s (plus their decoding and cutting; "
          f"{region_seconds / max(cuts, 1) * 1e3:.0f} ms a cut here, every stage and the model's loading on 2 cores).")
    images = len(queries) + len(references)
    print(f"{args.second_model}: {second_seconds:.0f} s to extract the queries, references and training images "
          f"({images + len(training):,} images, when extracted by this run; nan: cached by another) on 2 shared CPU "
          f"cores; at the competition's size {QUERIES_AT_SCALE + 1_000_000:,} more images through a second network, "
          f"{(QUERIES_AT_SCALE + 1_000_000) / H100_IMAGES_PER_SECOND / 60:.0f} min on one H100 at the ResNet-50 rate.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
