"""Quality of descriptor models and matching options on one dataset: µAP and recall at 90% precision.

Every model's descriptors come from the toolkit's own extraction (``isc.extract.extraction.extract``, cached as HDF5
files in --work and reused while the images and the model are unchanged), every matching row from
``isc.search.matching.search``, every score from ``isc.evaluate.metrics.evaluate``, on the same queries, references and
ground truth. One Markdown table row per (model, matching): no score normalisation, then for each β of
--betas and neighbour range of --neighbors the score normalised by the training set (the query's bias
only, as SSCD's evaluation; with --normalize-references also the reference's).

    isc-synth photoset --photos photos/ --drawings drawings/ ...        # see docs/BENCHMARKS.md
    python scripts/bench_quality.py --data photoset --models efficientnet_lite0,pdq,sscd,sscd_distilled

With --recipe, instead one row per option beyond SSCD's recipe (score normalisation grid, query crops,
negative-embedding subtraction, PCA-whitening or truncation to 256, ensembles), each with its difference
to sscd raw and a 95% bootstrap interval over the queries (docs/BENCHMARKS.md, "Beating SSCD's recipe").

With --verify, instead the tables of local-feature verification (isc.verify.verification): candidate recall of sscd with
query crops, as extracted, PCA-whitened and their union, at k = 1 to 100; µAP of each query's first 1, 3, 10
candidates verified with each geometry and combined with the global score by the fixed inlier bonus or by the
logistic model of isc.verify.calibrate, fitted on ground truth (two folds over the queries) or on --copies self-made
copies of training images, each with its bootstrap difference to isc-run's matching default; and the cost
projected to 50,000 queries (docs/BENCHMARKS.md, "Verifying candidate pairs").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.competition import SPLITS
from isc.core.descriptors import read_descriptors
from isc.core.files import atomic_path, write_json
from isc.core.tables import read_ground_truth
from isc.evaluate.metrics import evaluate
from isc.extract.decode import crop_boxes
from isc.extract.extraction import extract, extraction_config, is_complete
from isc.extract.image_files import list_split_images, select_split_images
from isc.models import create_model
from isc.search.knn import knn
from isc.search.matching import search
from isc.search.negatives import subtract_negative_embeddings
from isc.search.normalisation import ScoreNorm, parse_neighbour_range
from isc.search.pca import concatenate_descriptors, learn_pca


def file_stem(model_name: str) -> str:
    """A model name as a file name's start (``timm:resnet50`` -> ``timm_resnet50``)."""
    return model_name.replace(":", "_").replace("/", "_")


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
        path = work / f"{file_stem(model_name)}_{split}{phase if split == 'query' else ''}.h5"
        if not is_complete(path, images, config):
            start = time.perf_counter()
            extract(images, path, model, device="cpu", quiet=quiet, resume=False)
            timings[path.name] = time.perf_counter() - start
            write_json(timings_path, timings, indent=1, sort_keys=True)
        ids, vectors, _ = read_descriptors(path, split)
        # unit length here, once: PDQ's ±1 hashes are not (the ranking is the same)
        out[split] = (ids, unit(vectors))
        seconds += timings.get(path.name, float("nan"))
    return out, seconds


def crop_descriptors(root: Path, phase: int, model_name: str, work: Path, quiet: bool) -> tuple[list[str], np.ndarray]:
    """Query ids, each repeated once per view (the full image and its :func:`isc.extract.decode.crop_boxes`), and the views'
    unit-length descriptors: the several-rows-per-query input of :func:`isc.search.matching.search`."""
    queries = select_split_images(list_split_images(root, "query"), "query", phase)
    return view_descriptors(queries, f"query{phase}", model_name, work, quiet)


def view_descriptors(images: dict[str, Path], name: str, model_name: str, work: Path, quiet: bool,
                     boxes: Callable[[int, int], list] = crop_boxes, tag: str = "crops",
                     full: bool = True) -> tuple[list[str], np.ndarray]:
    """:func:`crop_descriptors` of any images ``{id: path}``, the crops and descriptors cached under ``name``;
    ``boxes``: (width, height) -> the views' boxes, other than the crops under another ``tag``; ``full``: with
    the full image as the first view."""
    from PIL import Image

    folder = work / f"{tag}{name.removeprefix('query')}"
    folder.mkdir(exist_ok=True)
    views = {}
    for qid, path in images.items():
        if full:
            views[f"{qid}.c0"] = path
        cut = None
        for n in range(1, 1 + len(boxes(64, 64))):
            target = folder / f"{qid}.c{n}.jpg"
            if not target.is_file():
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    cut = cut or boxes(*image.size)
                    with atomic_path(target) as tmp:
                        image.crop(cut[n - 1]).save(tmp, format="JPEG", quality=95)
            views[f"{qid}.c{n}"] = target
    model = create_model(model_name)
    output = work / f"{file_stem(model_name)}_{name}_{tag}.h5"
    if not is_complete(output, views, extraction_config(model)):
        extract(views, output, model, device="cpu", quiet=quiet, resume=False)
    ids, vectors, _ = read_descriptors(output)
    return [i.rsplit(".c", 1)[0] for i in ids], unit(vectors)


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
            neighbors = parse_neighbour_range(text)
            rows.append((f"norm β={beta:g} n={text}", {"norm": ScoreNorm(beta, neighbors)}))
            if args.normalize_references:
                rows.append((f"norm β={beta:g} n={text} +refs", {"norm": ScoreNorm(beta, neighbors, references=True)}))
    return rows


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def bootstrap_muap(predictions: pd.DataFrame, truth: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    """µAP of ``predictions`` on each resample of the queries: ``weights`` [resamples, queries of ``truth``]
    counts each query's copies (ties in score are ranked in file order here, so it may differ from
    :func:`evaluate` in the third decimal)."""
    row = {qid: i for i, qid in enumerate(truth["query_id"])}
    positive = set(zip(truth["query_id"], truth["reference_id"], strict=True))
    ranked = predictions.sort_values("score", ascending=False, kind="stable")
    queries = np.array([row[q] for q in ranked["query_id"]])
    correct = np.array([pair in positive for pair in zip(ranked["query_id"], ranked["reference_id"], strict=True)])
    w = weights[:, queries]
    precision = np.cumsum(w * correct, axis=1) / np.maximum(np.cumsum(w, axis=1), 1)  # 0 where no copy yet
    n_positives = weights[:, (truth["reference_id"] != "").to_numpy()].sum(axis=1)
    return (w * correct * precision).sum(axis=1) / n_positives


def paired_cells(predictions: pd.DataFrame, truth: pd.DataFrame, weights: np.ndarray,
                 baseline: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The resamples of ``predictions``' µAP (:func:`bootstrap_muap`) and a table's cells: µAP, recall at P90 and
    the difference to ``baseline``'s resamples (None: to itself), mean [2.5%, 97.5%]."""
    metrics = evaluate(predictions, truth)
    resampled = bootstrap_muap(predictions, truth, weights)
    difference = resampled - (resampled if baseline is None else baseline)
    low, high = np.percentile(difference, [2.5, 97.5])
    p90 = "-" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.3f}"
    return resampled, f"{metrics.muap:.3f} | {p90} | {np.mean(difference):+.3f} [{low:+.3f}, {high:+.3f}]"


def recipe_configurations(sets: dict, track: str) -> list[tuple[str, dict, dict]]:
    """(label, {split: (ids, descriptors)}, search options) of every configuration of the recipe table."""
    (qids, q), (rids, r), (_, t) = sets["sscd"]
    rows = []
    if track == "matching":
        rows.append(("sscd 512, raw", sets["sscd"], {}))  # the baseline of the bootstrap column
        for beta in (0.25, 0.5, 0.75, 1.0):
            for text in ("1:1", "1:3", "1:10", "10:10"):
                for refs in (False, True):
                    options = {"norm": ScoreNorm(beta, parse_neighbour_range(text), references=refs)}
                    rows.append((f"sscd 512, norm β={beta:g} n={text}{' +refs' if refs else ''}", sets["sscd"], options))
        pca = learn_pca(t, 256)  # isc-run's matching track: whitened descriptors, then normalised scores
        whitened = [(qids, pca.apply(q)), (rids, pca.apply(r)), (None, pca.apply(t))]
        rows.append(("sscd PCA-whitened 256, raw", whitened, {}))
        for beta, text in ((0.25, "10:10"), (0.5, "1:3"), (0.5, "10:10"), (1.0, "1:3"), (1.0, "10:10")):
            rows.append((f"sscd PCA-whitened 256, norm β={beta:g} n={text}", whitened,
                         {"norm": ScoreNorm(beta, parse_neighbour_range(text))}))
        best = {"norm": ScoreNorm(0.5, (10, 10))}
        # several descriptors per query: the matching track only (the descriptor track takes one per image)
        (cq, crops), _, _ = sets["sscd+crops"]
        crops_whitened = [(cq, pca.apply(crops)), *whitened[1:]]
        rows += [("sscd+crops PCA-whitened 256, raw", crops_whitened, {}),
                 ("sscd+crops PCA-whitened 256, norm β=0.5 n=10:10", crops_whitened, best)]
        for name in ("sscd+crops", "ensemble sscd+sscd_distilled", "ensemble sscd+lite0", "ensemble all three",
                     "average sscd,sscd_distilled"):
            if name in sets:
                rows += [(f"{name}, raw", sets[name], {}), (f"{name}, norm β=0.5 n=10:10", sets[name], best)]
        return rows
    pca = learn_pca(t, 256)
    whitened = [(qids, pca.apply(q)), (rids, pca.apply(r)), (None, pca.apply(t))]
    truncated = [(qids, unit(q[:, :256])), (rids, unit(r[:, :256])), (None, unit(t[:, :256]))]
    plain = learn_pca(t, 256, whiten=False)
    rows += [("sscd 512 (over the limit), raw", sets["sscd"], {}), ("sscd truncated to 256", truncated, {}),
             ("sscd PCA 256 (no whitening)", [(i, plain.apply(x)) for i, x in sets["sscd"]], {}),
             ("sscd PCA-whitened 256", whitened, {})]

    def negatives(parts, beta, k):
        return [(ids, subtract_negative_embeddings(x, parts[2][1], beta, k)) for ids, x in parts[:2]] + [parts[2]]

    for beta in (0.25, 0.5, 0.75):
        for k in (1, 3, 10):
            rows.append((f"sscd PCA-whitened 256 + negatives β={beta:g} k={k}", negatives(whitened, beta, k), {}))
            rows.append((f"sscd truncated 256 + negatives β={beta:g} k={k}", negatives(truncated, beta, k), {}))
    for beta, k in ((0.25, 3), (0.5, 3)):
        # before the projection: the training descriptors' own negatives exclude themselves
        nq, nr = (subtract_negative_embeddings(x, t, beta, k) for x in (q, r))
        self_nn = knn(t, t, k + 1, "ip")[1][:, 1:]
        after = learn_pca(unit(t - beta * t[self_nn].mean(axis=1)), 256)
        rows.append((f"sscd 512 + negatives β={beta:g} k={k}, then PCA-whitened 256",
                     [(qids, after.apply(nq)), (rids, after.apply(nr)), (None, None)], {}))
        rows.append((f"sscd 512 + negatives β={beta:g} k={k}, then truncated 256",
                     [(qids, unit(nq[:, :256])), (rids, unit(nr[:, :256])), (None, None)], {}))
    for name in ("ensemble sscd+sscd_distilled", "ensemble sscd+lite0", "ensemble all three"):
        if name in sets:
            (eq, e), (er, f), (_, g) = sets[name]
            learnt = learn_pca(g, 256)
            parts = [(eq, learnt.apply(e)), (er, learnt.apply(f)), (None, learnt.apply(g))]
            rows.append((f"{name}, PCA-whitened 256", parts, {}))
            rows.append((f"{name}, PCA-whitened 256 + negatives β=0.25 k=3", negatives(parts, 0.25, 3), {}))
    return rows


def recipe(args: argparse.Namespace, work: Path, truth: pd.DataFrame) -> None:
    """The "beating SSCD's recipe" table: matching-track and descriptor-track configurations of sscd, its
    query crops and its ensembles, each with µAP and its bootstrap difference to sscd raw."""
    data = {name: descriptors(args.data, args.phase, name, work, args.quiet)[0]
            for name in ("sscd", "sscd_distilled", "efficientnet_lite0")}
    sets = {"sscd": [data["sscd"][s] for s in SPLITS]}
    crop_ids, crops = crop_descriptors(args.data, args.phase, "sscd", work, args.quiet)
    sets["sscd+crops"] = [(crop_ids, crops), *sets["sscd"][1:]]
    for name, members, weights in (("ensemble sscd+sscd_distilled", ("sscd", "sscd_distilled"), [1, 0.5]),
                                   ("ensemble sscd+lite0", ("sscd", "efficientnet_lite0"), [1, 0.5]),
                                   ("ensemble all three", ("sscd", "sscd_distilled", "efficientnet_lite0"),
                                    [1, 0.5, 0.5])):
        sets[name] = [(data["sscd"][s][0], concatenate_descriptors([data[m][s][1] for m in members], weights))
                      for s in SPLITS]
    sets["average sscd,sscd_distilled"] = [(data["sscd"][s][0], unit(data["sscd"][s][1] + data["sscd_distilled"][s][1]))
                                           for s in SPLITS]
    weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=1000)
    print("| configuration | track | µAP | recall@P90 | µAP − sscd raw (95% bootstrap) |")
    print("|---|---|---:|---:|---|", flush=True)
    baseline = None
    for track in ("matching", "descriptor"):
        for label, parts, options in recipe_configurations(sets, track):
            (qids, q), (rids, r), (_, t) = parts
            predictions = search(qids, q, rids, r, k=args.k, training=t if options else None, quiet=True, **options)
            metrics = evaluate(predictions, truth)
            resampled = bootstrap_muap(predictions, truth, weights)
            baseline = resampled if baseline is None else baseline
            low, high = np.percentile(resampled - baseline, [2.5, 97.5])
            p90 = "-" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.3f}"
            print(f"| {label} | {track} | {metrics.muap:.3f} | {p90} | {np.mean(resampled - baseline):+.3f} "
                  f"[{low:+.3f}, {high:+.3f}] |", flush=True)


CANDIDATE_DEPTHS = (1, 3, 10, 30, 100)  # k of the candidate-recall table
VERIFIED_DEPTHS = (1, 3, 10)  # candidates verified per query, all read from one run at the largest
QUERIES_AT_SCALE, CORES_AT_SCALE = 50_000, 16  # the cost projection: phase-1 queries x top-10, one machine


Source = tuple[Callable[[np.ndarray], np.ndarray], list[str], np.ndarray, list[str], np.ndarray, list[str], np.ndarray]


def candidate_sources(args: argparse.Namespace, work: Path) -> dict[str, Source]:
    """(projection, query view ids, query views, reference ids, references, training ids, training) of sscd with
    query crops, unit length as extracted: the projection keeps them (512-d) or PCA-whitens them to 256
    (isc-run's matching track)."""
    data = descriptors(args.data, args.phase, "sscd", work, args.quiet)[0]
    (rids, r), (tids, t) = data["reference"], data["training"]
    crop_ids, crops = crop_descriptors(args.data, args.phase, "sscd", work, args.quiet)
    return {"raw 512": (lambda x: x, crop_ids, crops, rids, r, tids, t),
            "whitened 256": (learn_pca(t, 256).apply, crop_ids, crops, rids, r, tids, t)}


def reference_ranks(predictions: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """The 1-based rank of each copy's reference among its query's candidates (by decreasing score), inf where
    it is not among them; one value per query of ``truth`` that has a reference."""
    ranked = predictions.sort_values(["query_id", "score"], ascending=[True, False], kind="stable")
    rank = ranked.groupby("query_id").cumcount() + 1
    found = dict(zip(zip(ranked["query_id"], ranked["reference_id"], strict=True), rank, strict=True))
    copies = truth[truth["reference_id"] != ""]
    return np.array([found.get(pair, np.inf) for pair in zip(copies["query_id"], copies["reference_id"], strict=True)],
                    dtype=np.float64)


def candidate_recall(lists: dict[str, pd.DataFrame], truth: pd.DataFrame) -> None:
    """Print the fraction of copies whose reference is among the first k candidates, per source and their union
    (the first k of each: up to 2k candidates)."""
    ranks = {name: reference_ranks(predictions, truth) for name, predictions in lists.items()}
    ranks["union (first k of each)"] = np.minimum(*ranks.values())  # found in the union at k iff in either at k
    print("| candidates (sscd + query crops, normalised) | " + " | ".join(f"k = {k}" for k in CANDIDATE_DEPTHS) + " |")
    print("|---|" + "---:|" * len(CANDIDATE_DEPTHS), flush=True)
    for name, rank in ranks.items():
        print(f"| {name} | " + " | ".join(f"{np.mean(rank <= k):.3f}" for k in CANDIDATE_DEPTHS) + " |", flush=True)


def within_depth(evidence: pd.DataFrame, k: int) -> pd.DataFrame:
    """The evidence as a run verifying only each query's first ``k`` candidates would have it: the others'
    evidence zero."""
    beyond = (evidence["rank"] >= k).to_numpy()
    return evidence.assign(verified=evidence["verified"] & ~beyond,
                           **{column: evidence[column].where(~beyond, 0) for column in ("matches", "inliers",
                                                                                          "inlier_ratio")})


def verified_evidence(name: str, predictions: pd.DataFrame, queries: dict[str, Path], references: dict[str, Path],
                      args: argparse.Namespace, work: Path, geometry: str, **settings: int) -> tuple[pd.DataFrame, dict]:
    """The evidence of each query's first max(VERIFIED_DEPTHS) candidates, or as ``settings`` of VerifyOptions say
    (isc.verify.verification, features cached in WORK/verify-cache, the sidecar reused while it exists) and the
    run's counts and rates."""
    from isc.verify.local_features import VerifyOptions
    from isc.verify.verification import evidence_path, read_evidence, verify

    output = work / "verify" / f"{name.replace(' ', '_')}_{geometry}.csv"
    stats_path = output.with_suffix(".json")
    if not (evidence_path(output).is_file() and stats_path.is_file()):
        output.parent.mkdir(exist_ok=True)
        result = verify(predictions, queries, references, output, quiet=args.quiet, cache=work / "verify-cache",
                        options=VerifyOptions(**{"k": max(VERIFIED_DEPTHS), **settings}, geometry=geometry,
                                              workers=args.workers))
        write_json(stats_path, dataclasses.asdict(result), indent=1)
    evidence = read_evidence(evidence_path(output)).astype({"score": np.float64, "inlier_ratio": np.float64})
    return evidence, json.loads(stats_path.read_text())


def self_made_copies(source: Source, args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The self-made copies (isc.verify.calibrate.make_copies of --copies training images drawn once) ``{id: path}``."""
    from isc.verify.calibrate import make_copies

    tids = source[5]
    training = list_split_images(args.data, "training")
    chosen = np.random.default_rng(0).choice(tids, size=min(args.copies, len(tids)), replace=False).tolist()
    return make_copies({i: training[i] for i in sorted(chosen)}, work / "copies")


def self_made_evidence(name: str, source: Source, args: argparse.Namespace, work: Path, geometry: str,
                       crops: bool = True, views: tuple[list[str], np.ndarray] | None = None,
                       **settings: int) -> pd.DataFrame:
    """Evidence of :func:`self_made_copies` searched as the queries are, against the references and the rest of
    the training set, each copy's source its one positive: what a calibration fitted without ground truth learns
    from. ``crops``: the copies described with their crops (else by their full view alone); ``views``: (copy id
    per view, unit descriptors) describing them instead; ``settings``: as :func:`verified_evidence`'s, the
    candidates kept at least --k and as deep as they verify."""
    from isc.verify.calibrate import COPY_SUFFIX

    project, _, _, rids, r, tids, t = source
    training = list_split_images(args.data, "training")
    copies = self_made_copies(source, args, work)
    chosen = {copy_id.removesuffix(COPY_SUFFIX) for copy_id in copies}
    copy_ids, views = views or view_descriptors(copies, "copies", "sscd", work, args.quiet,
                                                **({} if crops else {"boxes": lambda width, height: [], "tag": "full"}))
    # the sources stay searchable but leave the normalisation set, as a query's reference is not in it
    rest = np.array([i not in chosen for i in tids])
    predictions = search(copy_ids, project(views), rids + tids, project(np.vstack([r, t])), k=max(args.k, settings.get("deep_k") or 0),
                         training=project(t[rest]), norm=ScoreNorm(), quiet=True)
    return verified_evidence(f"copies {name}", predictions, copies,
                             {**list_split_images(args.data, "reference"), **training}, args, work, geometry,
                             **settings)[0]


def cross_fitted_scores(evidence: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Scores of a calibration fitted on the ground truth of half the queries and applied to the other half,
    and the other way round (two folds, queries drawn at random once)."""
    from isc.verify.calibrate import calibrate, ground_truth_labels

    queries = np.random.default_rng(0).permutation(truth["query_id"].to_numpy())
    scores = np.zeros(len(evidence))
    for fold in (queries[: len(queries) // 2], queries[len(queries) // 2:]):
        held_out = evidence["query_id"].isin(set(fold)).to_numpy()
        fitted = calibrate(*ground_truth_labels(evidence[~held_out], truth), fitted_on="ground truth, other half")
        scores[held_out] = fitted.scores(evidence[held_out])
    return scores


def cpu_seconds(pairs: pd.DataFrame, paths: dict[str, Path], geometry: str, sample: int = 60) -> tuple[float, float]:
    """CPU seconds of one core per image described and per pair matched, over the first ``sample`` pairs, in this
    process with one OpenCV thread: the processor time, which a shared machine's load does not inflate."""
    import cv2

    from isc.verify.local_features import VerifyOptions, describe_image, match_features

    cv2.setNumThreads(1)
    options = VerifyOptions(geometry=geometry)
    chosen = pairs.head(sample)
    start = time.process_time()
    features = {i: describe_image(paths[i], options) for i in {*chosen["query_id"], *chosen["reference_id"]}}
    per_image = (time.process_time() - start) / len(features)
    start = time.process_time()
    for q, r in zip(chosen["query_id"], chosen["reference_id"], strict=True):
        match_features(features[q], features[r], options)
    return per_image, (time.process_time() - start) / len(chosen)


def cost_at_scale(runs: dict[tuple[str, str], dict], cpu: dict[str, tuple[float, float]], workers: int) -> None:
    """Print the measured rates and, from them, the minutes and feature cache of QUERIES_AT_SCALE queries x
    top-10 on CORES_AT_SCALE cores, every candidate reference a distinct image (the worst case; phase 2 reuses
    the references' features): from the wall-clock rates of the runs (all cores, taken as proportional to the
    cores) and from the CPU time of one core (:func:`cpu_seconds`)."""
    first = max(runs.values(), key=lambda stats: stats["described"])  # the run that described the images
    if not first["described"]:
        print("\nEvery image's features were in the cache already: remove WORK/verify and WORK/verify-cache to time them.")
        return
    images = QUERIES_AT_SCALE * (1 + max(VERIFIED_DEPTHS))
    pairs = QUERIES_AT_SCALE * max(VERIFIED_DEPTHS)
    feature_minutes = images / (first["images_per_second"] / workers * CORES_AT_SCALE) / 60
    print(f"\nFeatures: {first['described']:,} images at {first['images_per_second']} images/s on {workers} "
          f"processes, {first['cache_bytes_per_image'] / 1e3:.0f} kB each in the cache; {images:,} images (50,000 "
          f"queries and 10 distinct references each): {feature_minutes:.0f} min on {CORES_AT_SCALE} cores, "
          f"cache {images * first['cache_bytes_per_image'] / 1e9:.1f} GB.\n")
    print(f"| candidates | geometry | pairs | pairs/s on {workers} processes | {QUERIES_AT_SCALE:,} x top-"
          f"{max(VERIFIED_DEPTHS)} on {CORES_AT_SCALE} cores from those rates (min) | CPU ms per image / per pair "
          f"| from those CPU times (min) |")
    print("|---|---|---:|---:|---:|---|---:|")
    for (name, geometry), stats in runs.items():
        matching_minutes = pairs / (stats["pairs_per_second"] / workers * CORES_AT_SCALE) / 60
        per_image, per_pair = cpu[geometry]
        cpu_minutes = (images * per_image + pairs * per_pair) / CORES_AT_SCALE / 60
        print(f"| {name} | {geometry} | {stats['pairs']:,} | {stats['pairs_per_second']} | "
              f"{feature_minutes + matching_minutes:.0f} | {per_image * 1e3:.0f} / {per_pair * 1e3:.1f} | "
              f"{cpu_minutes:.0f} |", flush=True)


def verification(args: argparse.Namespace, work: Path, truth: pd.DataFrame) -> None:
    """The verification tables: candidate recall by source and depth, then µAP of isc-run's matching default
    (the baseline) against each query's first k candidates verified with each geometry and combination,
    with the paired bootstrap difference to the baseline, and the cost of verification."""
    from isc.verify.calibrate import calibrate, copy_labels
    from isc.verify.local_features import GEOMETRIES
    from isc.verify.verification import InlierBonus, rescore

    sources = candidate_sources(args, work)
    lists, shortlists = {}, {}
    for name, (project, qids, q, rids, r, _, t) in sources.items():
        # isc-run's normalisation (beta 0.5, the 10th training neighbour) for both
        lists[name] = search(qids, project(q), rids, project(r), k=max(CANDIDATE_DEPTHS), training=project(t),
                             norm=ScoreNorm(), quiet=True)
        shortlists[name] = lists[name].groupby("query_id", sort=False).head(args.k)
    candidate_recall(lists, truth)

    weights = np.random.default_rng(0).multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=1000)
    baseline = bootstrap_muap(shortlists["whitened 256"], truth, weights)

    def row(label: str, predictions: pd.DataFrame) -> None:
        metrics = evaluate(predictions, truth)
        difference = bootstrap_muap(predictions, truth, weights) - baseline
        low, high = np.percentile(difference, [2.5, 97.5])
        p90 = "-" if metrics.recall_at_p90 is None else f"{metrics.recall_at_p90:.3f}"
        print(f"| {label} | {metrics.muap:.3f} | {p90} | {metrics.recall_at_rank1:.3f} | "
              f"{np.mean(difference):+.3f} [{low:+.3f}, {high:+.3f}] |", flush=True)

    print("\n| candidates | verified k | geometry | combination | µAP | recall@P90 | recall@1 | µAP − baseline "
          "(95% bootstrap) |")
    print("|---|---:|---|---|---:|---:|---:|---|", flush=True)
    row("whitened 256 (baseline: isc-run's matching default) | 0 | - | -", shortlists["whitened 256"])
    row("raw 512 | 0 | - | -", shortlists["raw 512"])
    queries = select_split_images(list_split_images(args.data, "query"), "query", args.phase)
    references = list_split_images(args.data, "reference")
    runs, cpu = {}, {}
    for name in ("whitened 256", "raw 512"):
        for geometry in GEOMETRIES:
            if geometry not in cpu:
                cpu[geometry] = cpu_seconds(shortlists[name], {**references, **queries}, geometry)
            evidence, runs[name, geometry] = verified_evidence(name, shortlists[name], queries, references, args,
                                                               work, geometry)
            copies = self_made_evidence(name, sources[name], args, work, geometry) if args.copies else None
            for k in VERIFIED_DEPTHS:
                seen = within_depth(evidence, k)
                combined = {"fixed: score + 0.2 min(inliers, 10) / 10": rescore(seen, InlierBonus()),
                            "logistic, fitted on ground truth (2 folds)": cross_fitted_scores(seen, truth)}
                if copies is not None:
                    made = within_depth(copies, k)
                    fitted = calibrate(made, copy_labels(made), fitted_on="self-made copies")
                    combined[f"logistic, fitted on {args.copies} self-made copies"] = fitted.scores(seen)
                for combination, scores in combined.items():
                    row(f"{name} | {k} | {geometry} | {combination}",
                        seen[["query_id", "reference_id"]].assign(score=scores))
    cost_at_scale(runs, cpu, args.workers or os.cpu_count() or 1)


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
    parser.add_argument("--recipe", action="store_true",
                        help="instead, the table of options beyond SSCD's recipe (score normalisation grid, query "
                        "crops, negative-embedding subtraction, PCA-whitening or truncation, ensembles), each "
                        "with its bootstrap difference to sscd raw: needs sscd, sscd_distilled, efficientnet_lite0")
    parser.add_argument("--verify", action="store_true",
                        help="instead, the verification tables: candidate recall of sscd + query crops as extracted "
                        "and PCA-whitened, and µAP of each query's first 1, 3, 10 candidates verified by isc.verify.verification "
                        "(each geometry), with the bootstrap difference to isc-run's matching default")
    parser.add_argument("--copies", type=int, default=300,
                        help="training images copied to fit the calibration without ground truth with --verify; "
                        "0 for none (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes verifying pairs with --verify (default: every core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    work = args.work or args.data.with_name(args.data.name + ".bench_quality")
    work.mkdir(parents=True, exist_ok=True)
    truth_file = args.data / ("ground_truth.csv" if args.phase == 1 else "ground_truth_phase2.csv")
    truth = read_ground_truth(truth_file)

    print(f"{args.data}: phase {args.phase}, {len(truth)} queries ({(truth['reference_id'] != '').sum()} with a "
          f"match), k={args.k}", flush=True)
    if args.recipe:
        recipe(args, work, truth)
        return 0
    if args.verify:
        verification(args, work, truth)
        return 0
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
