"""Copies that never reach the candidates, and the calibration's cost (issue 29): candidate recall at k = 10, 20,
30, 100; adaptive depth of verification (isc.verify.adaptive); more query views (a grid, isc.extract.decode.grid_boxes);
the calibration on fewer copies, copies verified at a smaller k, copies without crops.

Every list comes from ``isc.search.matching.search`` (sscd with query crops, normalised as isc-run does), every
verification from ``isc.verify.verification.verify`` (features cached in WORK/verify-cache), every score from
``isc.evaluate.metrics.evaluate``; each µAP row has its difference to isc-run's matching default (512-d candidates
as extracted, the first 10 verified, the calibration fitted on --copies self-made copies) paired over 1,000
bootstrap resamples of the queries (bench_quality's helpers).

    python scripts/bench_candidates.py --data SET --work WORK --copies 300 [--tables recall,adaptive,views,calibration]

The views table adds a grid of views of half the side to the queries' (--grid 3: 3 x 3 and its 2 x 2 corners;
--grid 2: 2 x 2 alone) and scores each verified list with the calibration of the default's copies and with one
fitted on copies described with the same views (isc-run --query-grid).

Every depth is read from one run of isc.verify.adaptive verifying each query's first 10 candidates and down to
30 for those with fewer than 16 inliers on each (the copies likewise): a run verifying fewer pairs has the same
evidence for those it verifies, the others' zero (``within_depth``, :func:`adaptive`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import (  # noqa: E402
    bootstrap_muap,
    candidate_sources,
    cpu_seconds,
    reference_ranks,
    self_made_copies,
    self_made_evidence,
    verified_evidence,
    view_descriptors,
    within_depth,
)

from isc.core.tables import read_ground_truth  # noqa: E402
from isc.evaluate.metrics import evaluate  # noqa: E402
from isc.extract.decode import grid_boxes  # noqa: E402
from isc.extract.image_files import list_split_images, select_split_images  # noqa: E402
from isc.search.matching import search  # noqa: E402
from isc.search.normalisation import ScoreNorm  # noqa: E402
from isc.verify.adaptive import without_evidence  # noqa: E402
from isc.verify.calibrate import calibrate, copy_labels  # noqa: E402

RECALL_DEPTHS = (10, 20, 30, 100)
K, DEEP_K = 10, 30  # isc-run's verified candidates, and the adaptive depth measured
DEEP_INLIERS = (4, 8, 16)  # thresholds of "no geometric evidence" measured
DEFAULT = "raw 512"  # isc-run's matching track: the descriptors as extracted
COPY_COUNTS = (50, 100, 150, 200)  # fewer copies than --copies for the calibration's curve
COPY_DEPTHS = (1, 3, 5)  # copies verified at a smaller k
QUERIES_AT_SCALE, CORES_AT_SCALE = 50_000, 16


def adaptive(evidence: pd.DataFrame, k: int, deep_k: int, min_inliers: int) -> pd.DataFrame:
    """The evidence as isc.verify.adaptive would have it from a run verifying at least ``deep_k`` deep: the first
    ``k`` of every query, down to ``deep_k`` for the queries without ``min_inliers`` inliers among those."""
    deeper = set(without_evidence(evidence[evidence["rank"] < k], min_inliers))
    kept = (evidence["rank"] < k) | (evidence["query_id"].isin(deeper) & (evidence["rank"] < deep_k))
    return evidence.assign(verified=evidence["verified"] & kept,
                           **{column: evidence[column].where(kept, 0) for column in ("matches", "inliers",
                                                                                   "inlier_ratio")})


class Table:
    """µAP rows with their paired bootstrap difference to the first row scored."""

    def __init__(self, truth: pd.DataFrame, columns: str) -> None:
        self.truth, self.baseline = truth, None
        self.weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=1000)
        print(f"\n| {columns} | µAP | recall@P90 | µAP − default (95% bootstrap) |")
        print("|---" * (columns.count("|") + 1) + "|---:|---:|---|", flush=True)

    def row(self, label: str, predictions: pd.DataFrame) -> None:
        metrics = evaluate(predictions, self.truth)
        resampled = bootstrap_muap(predictions, self.truth, self.weights)
        self.baseline = resampled if self.baseline is None else self.baseline
        low, high = np.percentile(resampled - self.baseline, [2.5, 97.5])
        p90 = "-" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.3f}"
        print(f"| {label} | {metrics.muap:.3f} | {p90} | {np.mean(resampled - self.baseline):+.3f} "
              f"[{low:+.3f}, {high:+.3f}] |", flush=True)


def calibrated(evidence: pd.DataFrame, copies: pd.DataFrame) -> pd.DataFrame:
    """The predictions of ``evidence`` re-scored by the calibration fitted on the self-made ``copies``' evidence."""
    fitted = calibrate(copies, copy_labels(copies), fitted_on="self-made copies")
    return evidence[["query_id", "reference_id"]].assign(score=fitted.scores(evidence))


def recall_table(lists: dict[str, pd.DataFrame], truth: pd.DataFrame) -> None:
    print("\n| candidates (sscd + query crops, normalised) | " + " | ".join(f"k = {k}" for k in RECALL_DEPTHS) + " |")
    print("|---|" + "---:|" * len(RECALL_DEPTHS), flush=True)
    for name, predictions in lists.items():
        rank = reference_ranks(predictions, truth)
        print(f"| {name} | " + " | ".join(f"{np.mean(rank <= k):.3f}" for k in RECALL_DEPTHS) + " |", flush=True)


def deep_runs(args: argparse.Namespace, work: Path, source: tuple, top: pd.DataFrame, queries: dict,
              references: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(the queries' evidence, adaptive to DEEP_K below max(DEEP_INLIERS), the copies' likewise, the queries' run
    counts)."""
    deep = {"k": K, "deep_k": DEEP_K, "deep_inliers": max(DEEP_INLIERS)}
    evidence, stats = verified_evidence(f"{DEFAULT} adaptive", top, queries, references, args, work, "affine", **deep)
    copies = self_made_evidence(f"{DEFAULT} adaptive", source, args, work, "affine", **deep)
    return evidence, copies, stats


def adaptive_table(evidence: pd.DataFrame, copies: pd.DataFrame, truth: pd.DataFrame, per_pair: float,
                   per_image: float) -> None:
    """µAP and pairs verified of isc-run's default, of its list kept 30 deep, and of adaptive depth."""
    first = evidence[evidence["rank"] < K]
    table = Table(truth, "candidates kept | verified | pairs verified (queries) | pairs verified (copies)")

    def row(label: str, seen: pd.DataFrame, made: pd.DataFrame) -> None:
        scored = calibrated(seen, made)
        table.row(f"{label} | {int(seen['verified'].sum()):,} | {int(made['verified'].sum()):,}", scored)
        if seen["rank"].max() >= K:  # the competition's 500,000 rows are 10 a query: the best 10 after re-scoring
            best = scored.sort_values(["query_id", "score"], ascending=[True, False], kind="stable")
            table.row(f"{K} best after re-scoring of: {label} | {int(seen['verified'].sum()):,} | "
                      f"{int(made['verified'].sum()):,}", best.groupby("query_id", sort=False).head(K))

    row(f"{K} | first {K} (isc-run's default)", first, copies[copies["rank"] < K])
    row(f"{DEEP_K} | first {K}", within_depth(evidence, K), within_depth(copies, K))
    base = int(first["verified"].sum())
    extra = {}
    for threshold in DEEP_INLIERS:
        seen, made = adaptive(evidence, K, DEEP_K, threshold), adaptive(copies, K, DEEP_K, threshold)
        extra[f"where < {threshold} inliers"] = int(seen["verified"].sum()) - base
        deeper = len(without_evidence(first, threshold))
        row(f"{DEEP_K} | first {K}, to {DEEP_K} where < {threshold} inliers ({deeper} of "
            f"{first['query_id'].nunique()} queries)", seen, made)
    queries = first["query_id"].nunique()
    print(f"\nExtra work at {QUERIES_AT_SCALE:,} queries on {CORES_AT_SCALE} cores (one core's CPU time, {per_pair * 1e3:.1f} "
          f"ms a pair, {per_image * 1e3:.0f} ms an image, every extra candidate a new reference described):")
    extra["every query"] = (DEEP_K - K) * queries
    for which, pairs in extra.items():
        at_scale = pairs / queries * QUERIES_AT_SCALE
        print(f"- deeper {which}: {pairs / queries:.2f} extra pairs a query, {at_scale:,.0f} pairs, "
              f"{at_scale * (per_pair + per_image) / CORES_AT_SCALE / 60:.1f} min", flush=True)


def grid_variants(crop_ids: list[str], crops: np.ndarray, grid_ids: list[str], grid: np.ndarray,
                  per_side: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """The view sets of the views table, (image id per view, descriptors) each: the default's full view and crops,
    with the grid's 2 x 2 corners added, with a 3 x 3 grid added and the 3 x 3 grid alone (``per_side`` 3), or
    with the 2 x 2 grid added (``per_side`` 2)."""
    if per_side == 2:
        return {"full + 5 crops (default)": (crop_ids, crops),
                "+ 2 x 2 of 1/2": (crop_ids + grid_ids, np.vstack([crops, grid]))}
    corners = np.isin(np.arange(len(grid_ids)) % 9, [0, 2, 6, 8])  # 3 x 3 of 1/2: its corners are 2 x 2
    return {"full + 5 crops (default)": (crop_ids, crops),
            "+ 2 x 2 of 1/2": (crop_ids + [g for g, c in zip(grid_ids, corners, strict=True) if c],
                               np.vstack([crops, grid[corners]])),
            "+ 3 x 3 of 1/2 (overlapping)": (crop_ids + grid_ids, np.vstack([crops, grid])),
            "3 x 3 of 1/2 alone (no full view, no crops)": (grid_ids, grid)}


def grid_views(images: dict, name: str, args: argparse.Namespace, work: Path) -> tuple[list[str], np.ndarray, float]:
    """(image id per view, descriptors, seconds) of the --grid x --grid views of half the side of ``images``."""
    start = time.perf_counter()
    ids, grid = view_descriptors(images, name, "sscd", work, args.quiet, full=False,
                                 boxes=lambda width, height: grid_boxes(width, height, 0.5, args.grid),
                                 tag="grid" if args.grid == 3 else f"grid{args.grid}x")
    return ids, grid, time.perf_counter() - start


def views_table(args: argparse.Namespace, work: Path, source: tuple, copies: pd.DataFrame, truth: pd.DataFrame,
                queries: dict, references: dict) -> None:
    """Candidate recall and verified µAP of the query crops with a grid of views added; each verified row
    re-scored by the calibration of the default's copies, and by one fitted on copies described with the same
    views."""
    project, crop_ids, crops, rids, r, _, t = source
    grid_ids, grid, seconds = grid_views(queries, f"query{args.phase}", args, work)
    copy_crop_ids, copy_crops = view_descriptors(self_made_copies(source, args, work), "copies", "sscd", work,
                                                 args.quiet)
    copy_grid_ids, copy_grid, copy_seconds = grid_views(self_made_copies(source, args, work), "copies", args, work)
    variants = grid_variants(crop_ids, crops, grid_ids, grid, args.grid)
    copy_variants = grid_variants(copy_crop_ids, copy_crops, copy_grid_ids, copy_grid, args.grid)
    print(f"\nGrid views: {len(grid_ids):,} ({len(grid_ids) // len(queries)} a query) described in {seconds:.0f} s, "
          f"the copies' {len(copy_grid_ids):,} in {copy_seconds:.0f} s (0 when cached)")
    lists = {name: search(ids, project(x), rids, project(r), k=max(RECALL_DEPTHS), training=project(t),
                          norm=ScoreNorm(), quiet=True) for name, (ids, x) in variants.items()}
    recall_table(lists, truth)
    table = Table(truth, "query views | views a query | verified, calibration fitted on")
    first = copies[copies["rank"] < K]
    rows = []
    for name, predictions in lists.items():  # the default's verified row first: the baseline
        label = name.split(" (")[0]
        top = predictions.groupby("query_id", sort=False).head(K)
        evidence, _ = verified_evidence(f"{DEFAULT} views {label}", top, queries, references, args, work, "affine")
        same = first if name == next(iter(variants)) else self_made_evidence(
            f"{DEFAULT} views {label}", source, args, work, "affine", views=copy_variants[name], k=K)
        rows.append((name, evidence, same))
    for name, evidence, same in rows:
        views = len(variants[name][0]) // len(queries)
        table.row(f"{name} | {views} | first {K}, the default's copies (6 views)", calibrated(evidence, first))
        if same is not first:
            table.row(f"{name} | {views} | first {K}, copies described with the same views", calibrated(evidence, same))
    for name, predictions in lists.items():
        table.row(f"{name} | {len(variants[name][0]) // len(queries)} | none",
                  predictions.groupby("query_id", sort=False).head(K))


def calibration_table(args: argparse.Namespace, work: Path, source: tuple, evidence: pd.DataFrame,
                      copies: pd.DataFrame, truth: pd.DataFrame) -> None:
    """µAP of isc-run's default re-scored by calibrations fitted on fewer copies, copies verified less deep, and
    copies described without crops."""
    first, made = evidence[evidence["rank"] < K], copies[copies["rank"] < K]
    table = Table(truth, "calibration fitted on | copies | copies' pairs verified | copies' views")
    count = made["query_id"].nunique()
    table.row(f"copies, first {K} verified (isc-run's default) | {count} | {int(made['verified'].sum()):,} | 6",
              calibrated(first, made))
    ids = sorted(made["query_id"].unique())
    for n in (n for n in COPY_COUNTS if n < count):
        chosen = set(np.random.default_rng(1).choice(ids, n, replace=False).tolist())
        subset = made[made["query_id"].isin(chosen)]
        table.row(f"fewer copies | {n} | {int(subset['verified'].sum()):,} | 6", calibrated(first, subset))
    for k in COPY_DEPTHS:
        shallow = within_depth(made, k)
        table.row(f"copies, first {k} verified | {count} | {int(shallow['verified'].sum()):,} | 6",
                  calibrated(first, shallow))
    plain = self_made_evidence(f"{DEFAULT} without crops", source, args, work, "affine", crops=False, k=K)
    table.row(f"copies without crops, first {K} verified | {count} | {int(plain['verified'].sum()):,} | 1",
              calibrated(first, plain))
    for k in COPY_DEPTHS:
        shallow = within_depth(plain, k)
        table.row(f"copies without crops, first {k} verified | {count} | {int(shallow['verified'].sum()):,} | 1",
                  calibrated(first, shallow))
    for k in (K, 3):  # fewer copies without crops
        shallow = within_depth(plain, k)
        for n in (n for n in COPY_COUNTS if n < count):
            subset = shallow[shallow["query_id"].isin(set(np.random.default_rng(1).choice(ids, n, replace=False)))]
            table.row(f"copies without crops, first {k} verified | {n} | {int(subset['verified'].sum()):,} | 1",
                      calibrated(first, subset))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root in the competition's layout")
    parser.add_argument("--work", type=Path, required=True, help="bench_quality's work folder (descriptors, caches)")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=1)
    parser.add_argument("--copies", type=int, default=300, help="self-made copies of the calibration (default 300)")
    parser.add_argument("--workers", type=int, default=None, help="verification processes (default: every core)")
    parser.add_argument("--tables", default="recall,adaptive,views,calibration",
                        help="comma-separated tables to print (default: %(default)s)")
    parser.add_argument("--grid", type=int, choices=(2, 3), default=3,
                        help="the views table's grid: 3 (3 x 3 of half the side and its 2 x 2 corners) or 2 (2 x 2 only)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.k = K  # bench_quality's helpers: the candidates kept per query
    tables = set(args.tables.split(","))
    truth = read_ground_truth(args.data / ("ground_truth.csv" if args.phase == 1 else "ground_truth_phase2.csv"))
    print(f"{args.data}: phase {args.phase}, {len(truth)} queries ({(truth['reference_id'] != '').sum()} copies)")
    sources = candidate_sources(args, args.work)
    lists = {name: search(qids, project(q), rids, project(r), k=max(RECALL_DEPTHS), training=project(t),
                          norm=ScoreNorm(), quiet=True)
             for name, (project, qids, q, rids, r, _, t) in sources.items()}
    if "recall" in tables:
        recall_table(lists, truth)
    if not tables & {"adaptive", "views", "calibration"}:
        return 0
    queries = select_split_images(list_split_images(args.data, "query"), "query", args.phase)
    references = list_split_images(args.data, "reference")
    top = lists[DEFAULT].groupby("query_id", sort=False).head(DEEP_K)
    evidence, copies, _ = deep_runs(args, args.work, sources[DEFAULT], top, queries, references)
    if "adaptive" in tables:
        deeper = top[(top.groupby("query_id", sort=False).cumcount() >= K).to_numpy()]
        per_image, per_pair = cpu_seconds(deeper, {**references, **queries}, "affine")
        adaptive_table(evidence, copies, truth, per_pair, per_image)
    if "views" in tables:
        views_table(args, args.work, sources[DEFAULT], copies, truth, queries, references)
    if "calibration" in tables:
        calibration_table(args, args.work, sources[DEFAULT], evidence, copies, truth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
