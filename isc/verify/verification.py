"""Candidate pairs of a predictions CSV verified and re-scored (``isc-verify``).

:func:`verify` describes every image needed, then matches every pair, over a process pool; writes the
evidence table beside the output (:func:`evidence_path`) and the predictions re-scored by a combination of
the global score and the evidence (:class:`InlierBonus` by default, or a fitted
:class:`~isc.verify.calibrate.Calibration`); under torchrun the queries are sharded across ranks and merged
on the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from isc.core.files import InputError, NoImageRead, atomic_path
from isc.core.images import BrokenImage
from isc.core.processes import worker_context
from isc.verify.local_features import (
    FeatureCache,
    Features,
    VerifyOptions,
    cache_stamp,
    describe_image,
    match_features,
    transform_text,
)

if TYPE_CHECKING:
    import pandas as pd
EVIDENCE_COLUMNS = ("query_id", "reference_id", "score", "rank", "verified", "matches", "inliers", "inlier_ratio",
                    "transform", "error")
PAIRS_PER_TASK = 32  # pairs sent to a worker at once: small enough for a smooth progress bar


# --------------------------------------------------------------------------------- worker tasks


def _start_worker() -> None:
    import cv2

    # one process per core already
    cv2.setNumThreads(1)
    if "torch" in sys.modules:  # torch's pool too where the caller loaded it: verifying itself runs without torch
        sys.modules["torch"].set_num_threads(1)


def _features_task(args: tuple[Path, str, Path, tuple[int, ...], VerifyOptions]) -> tuple[str, bool, str, int]:
    """(id, whether it was described now, why it is broken or '', 1 when its cache entry was damaged): the
    cached features of one image, made and cached when missing or damaged."""
    cache_root, image_id, path, stamp, options = args
    cache = FeatureCache(cache_root, options)
    cached = cache.load(image_id, stamp)
    if cached is not None:
        return image_id, False, cached if isinstance(cached, str) else "", 0
    try:
        features: Features | str = describe_image(Path(path), options)
    except BrokenImage as e:
        features = str(e)
    cache.save(image_id, stamp, features)
    return image_id, True, features if isinstance(features, str) else "", cache.damaged


def _match_task(args: tuple[Path, Sequence[tuple[str, tuple[int, ...], str, tuple[int, ...]]], VerifyOptions]
                ) -> list[tuple[int, int, float, str]]:
    """(matches, inliers, inlier ratio, transform) of each (query, stamp, reference, stamp) pair, its
    features read from the cache (filled by the features phase)."""
    cache_root, pairs, options = args
    cache = FeatureCache(cache_root, options)
    rows, loaded = [], {}
    for query_id, query_stamp, reference_id, reference_stamp in pairs:
        for image_id, stamp in ((query_id, query_stamp), (reference_id, reference_stamp)):
            if image_id not in loaded:
                loaded = {key: value for key, value in loaded.items() if key == query_id}  # one reference at a time
                loaded[image_id] = cache.load(image_id, stamp)
        query, reference = loaded[query_id], loaded[reference_id]
        if not isinstance(query, Features) or not isinstance(reference, Features):
            raise RuntimeError(f"features of {query_id} or {reference_id} vanished from the cache {cache.root}")
        match = match_features(query, reference, options)
        rows.append((match.matches, match.inliers, round(match.inlier_ratio, 6), transform_text(match.transform)))
    return rows


TaskMap = Callable[[Callable, Iterator, int], Iterator]
# what the workers run, imported once by the fork server
WORKER_MODULES = ("isc.verify.verification", "cv2")


def _pool_context() -> multiprocessing.context.BaseContext:
    """:func:`~isc.core.processes.worker_context` with :data:`WORKER_MODULES` and the toolkit's modules the command
    has loaded: each worker runs the command's module again (as __mp_main__), its imports then already made; not
    that module itself, which runpy would warn of."""
    main = getattr(sys.modules["__main__"].__spec__, "name", "")
    loaded = sorted(name for name in list(sys.modules) if name.startswith("isc.") and name != main)
    return worker_context([*WORKER_MODULES, *loaded])


@contextlib.contextmanager
def _task_map(workers: int) -> Iterator[TaskMap]:
    """``map(function, tasks, chunksize)``, ordered, over a pool of ``workers`` processes (0: this one)."""
    if workers == 0:  # as a worker would, then the caller's thread counts back: an in-process run leaks nothing
        import cv2

        torch = sys.modules.get("torch")
        saved = cv2.getNumThreads(), torch.get_num_threads() if torch else None
        _start_worker()
        try:
            yield lambda function, tasks, chunksize: map(function, tasks)
        finally:
            cv2.setNumThreads(saved[0])
            if torch:
                torch.set_num_threads(saved[1])
        return
    with _pool_context().Pool(workers, initializer=_start_worker) as pool:
        yield lambda function, tasks, chunksize: pool.imap(function, tasks, chunksize=chunksize)


# ------------------------------------------------------------------------------------ evidence


def ranked_candidates(predictions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each query's ``k`` best candidates by decreasing score (ties by reference id), with their 0-based ``rank``."""
    ordered = predictions.sort_values(["query_id", "score", "reference_id"], ascending=[True, False, True],
                                      kind="stable")
    ranked = ordered.assign(rank=ordered.groupby("query_id", sort=False).cumcount())
    return ranked[ranked["rank"] < k].reset_index(drop=True)


def read_evidence(path: str | Path) -> pd.DataFrame:
    """The evidence sidecar of :func:`verify` (its columns :data:`EVIDENCE_COLUMNS`), ``verified`` as bool and
    the counts as numbers; InputError naming the file when it is not one."""
    import pandas as pd

    from isc.core.tables import read_csv_columns

    evidence = read_csv_columns(path, EVIDENCE_COLUMNS, "isc-verify evidence")
    numbers = {column: pd.to_numeric(evidence[column], errors="coerce") for column in ("rank", "matches", "inliers")}
    for column, values in numbers.items():
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise InputError(f"{path}: line {row + 2}: {column} {evidence[column].iloc[row]!r} is not a number")
    return evidence.assign(verified=evidence["verified"] == "True", **numbers)


def recorded_options(record: Mapping[str, object]) -> VerifyOptions:
    """The :class:`VerifyOptions` a provenance record of isc-verify holds (defaults for those it lacks)."""
    options = record.get("options") if record.get("command") == "isc-verify" else None
    names = {field.name for field in dataclasses.fields(VerifyOptions)}
    return VerifyOptions(**{k: v for k, v in (options or {}).items() if k in names})


def calibration_conditions(options: VerifyOptions, search_record: Mapping[str, object] | None) -> dict[str, object]:
    """What a calibration of verified pairs holds for: the verification options (not the number of
    processes) and, when the predictions' provenance says, the descriptor model that scored them."""
    conditions: dict[str, object] = {"verification": {k: v for k, v in dataclasses.asdict(options).items()
                                                      if k != "workers"}}
    inputs = (search_record or {}).get("inputs") or {}
    attributes = (inputs.get("reference") or {}).get("model_attributes") or {} if isinstance(inputs, dict) else {}
    if "model" in attributes:
        conditions["descriptors"] = {key: str(attributes[key]) for key in ("model", "model_fingerprint")
                                     if key in attributes}
    return conditions


def combiner_inputs(evidence: pd.DataFrame) -> pd.DataFrame:
    """The evidence with what a combiner may also use per query: ``best_score`` and ``best_inliers``."""
    per_query = evidence.groupby("query_id")
    return evidence.assign(best_score=per_query["score"].transform("max"),
                           best_inliers=per_query["inliers"].transform("max"))


@dataclass(frozen=True)
class InlierBonus:
    """The fixed combination ``score + weight · min(inliers, cap) / cap``: with weight 0.2 and cap 10 it
    raised matching µAP from 0.574 to 0.629 verifying 3 candidates per query on a photo benchmark."""

    weight: float = 0.2
    cap: int = 10

    def __post_init__(self) -> None:
        if not np.isfinite(self.weight) or self.weight < 0:
            raise InputError(f"the inlier weight must be a finite number >= 0, got {self.weight}")
        if self.cap < 1:
            raise InputError(f"the inlier cap must be at least 1, got {self.cap}")

    def __call__(self, evidence: pd.DataFrame) -> np.ndarray:
        bonus = np.minimum(evidence["inliers"].to_numpy(np.float64), self.cap) / self.cap
        return evidence["score"].to_numpy(np.float64) + self.weight * bonus


Combiner = Callable[["pd.DataFrame"], np.ndarray]


def rescore(evidence: pd.DataFrame, combiner: Combiner) -> np.ndarray:
    """The combined score of every evidence row (unverified rows count as zero evidence); refuses a non-finite
    score or a result of the wrong length."""
    scores = np.asarray(combiner(combiner_inputs(evidence)), dtype=np.float64)
    if scores.shape != (len(evidence),):
        raise InputError(f"the combiner gave {scores.shape} scores for {len(evidence)} pairs")
    if not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise InputError(f"the combiner gave a non-finite score for ({evidence['query_id'].iloc[row]}, "
                         f"{evidence['reference_id'].iloc[row]})")
    return scores


# ----------------------------------------------------------------------------------- the stage


def evidence_path(output: str | Path) -> Path:
    """The evidence sidecar of re-scored predictions: ``OUT.evidence.csv`` beside ``OUT.csv``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.evidence.csv")


def calibration_path(output: str | Path) -> Path:
    """Where ``isc-verify --calibrate-gt`` saves its calibration unless told: ``OUT.calibration.json``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.calibration.json")


def default_cache(output: str | Path) -> Path:
    """Where the features are cached unless told: ``isc-verify-cache/`` beside the output."""
    return Path(output).parent / "isc-verify-cache"


@dataclass
class VerifyResult:
    """What :func:`verify` did (the fields in the order of ``isc-verify --json``); counts of every rank on
    the first rank, of its own shard on the others."""

    output: str
    evidence: str
    cache: str
    rank: int
    world_size: int
    predictions: int  # rows re-scored
    queries: int
    pairs: int  # pairs verified (within each query's k best)
    failed_pairs: int  # of those, pairs with a broken image (zero evidence, the error in the sidecar)
    images: int  # distinct images the pairs need
    described: int  # of those, described by this run
    cached: int  # found in the cache
    cache_bytes_per_image: float | None
    features_seconds: float
    matching_seconds: float
    images_per_second: float | None  # described by this run
    pairs_per_second: float | None
    broken: dict[str, str]  # id: reason


def _check_ids(predictions: pd.DataFrame, column: str, images: Mapping[str, Path], what: str) -> None:
    ids = predictions[column].drop_duplicates()
    absent = ids[~ids.isin(images.keys())]
    if len(absent):
        raise InputError(f"{len(absent)} {what} id(s) of the predictions are not among the {what} images, "
                         f"first {absent.iloc[0]}")


def _describe_all(task_map: TaskMap, ids: Sequence[str], paths: Mapping[str, Path],
                  stamps: Mapping[str, tuple[int, ...]], cache_root: Path, options: VerifyOptions, strict: bool,
                  label: str, quiet: bool) -> tuple[set[str], dict[str, str]]:
    """Phase 1: the cached features of every image of ``ids``, described when missing or damaged; (the ids
    described now, broken)."""
    described, broken, damaged = set(), {}, 0
    tasks = ((cache_root, i, paths[i], stamps[i], options) for i in ids)
    with tqdm(total=len(ids), unit="img", desc=f"features{label}", disable=quiet) as bar:
        for image_id, made, reason, was_damaged in task_map(_features_task, tasks, 8):
            if made:
                described.add(image_id)
            damaged += was_damaged
            if reason:
                if strict:
                    raise InputError(f"{paths[image_id]}: {reason}")
                broken[image_id] = reason
            bar.update()
    if damaged and not quiet:
        warnings.warn(f"{damaged} damaged feature cache entr{'y' if damaged == 1 else 'ies'} under {cache_root}: "
                      "described again", stacklevel=2)
    return described, broken


def _pair_tasks(pairs: pd.DataFrame, stamps: Mapping[str, tuple[int, ...]], cache_root: Path,
                options: VerifyOptions) -> Iterator[tuple]:
    """Tasks of up to :data:`PAIRS_PER_TASK` pairs of one query, in the order of ``pairs`` (sorted by query)."""
    rows = list(zip(pairs["query_id"], pairs["reference_id"], strict=True))
    for start in range(0, len(rows), PAIRS_PER_TASK):
        chunk = rows[start:start + PAIRS_PER_TASK]
        yield cache_root, [(q, stamps[q], r, stamps[r]) for q, r in chunk], options


def _match_all(task_map: TaskMap, pairs: pd.DataFrame, stamps: Mapping[str, tuple[int, ...]], cache_root: Path,
               options: VerifyOptions, label: str, quiet: bool) -> list[tuple[int, int, float, str]]:
    """Phase 2: the evidence of every pair, in order."""
    rows: list[tuple[int, int, float, str]] = []
    with tqdm(total=len(pairs), unit="pair", desc=f"match{label}", disable=quiet) as bar:
        for chunk in task_map(_match_task, _pair_tasks(pairs, stamps, cache_root, options), 1):
            rows += chunk
            bar.update(len(chunk))
    return rows


def _shard_evidence(pairs: pd.DataFrame, paths: Mapping[str, Path], cache_root: Path, options: VerifyOptions,
                    workers: int, strict: bool, label: str, quiet: bool) -> tuple[pd.DataFrame, dict[str, object]]:
    """Both phases over one rank's pairs: (their evidence, counts and timings)."""
    import pandas as pd

    ids = sorted(set(pairs["query_id"]) | set(pairs["reference_id"]))
    stamps = {i: cache_stamp(paths[i]) for i in ids}  # before reading: a file changed later is seen as changed
    with _task_map(workers) as task_map:
        start = time.perf_counter()
        described, broken = _describe_all(task_map, ids, paths, stamps, cache_root, options, strict, label, quiet)
        features_seconds = time.perf_counter() - start
        query_error = pairs["query_id"].map(lambda i: f"query {i}: {broken[i]}" if i in broken else "")
        reference_error = pairs["reference_id"].map(lambda i: f"reference {i}: {broken[i]}" if i in broken else "")
        error = query_error.where(query_error != "", reference_error)
        good = (error == "").to_numpy()
        start = time.perf_counter()
        rows = _match_all(task_map, pairs[good], stamps, cache_root, options, label, quiet)
        matching_seconds = time.perf_counter() - start
    evidence = pairs.assign(verified=good, matches=0, inliers=0, inlier_ratio=0.0, transform="", error=error)
    if rows:
        matches, inliers, ratios, transforms = zip(*rows, strict=True)
        evidence.loc[good, ["matches", "inliers", "inlier_ratio", "transform"]] = pd.DataFrame(
            {"matches": matches, "inliers": inliers, "inlier_ratio": ratios, "transform": transforms},
            index=evidence.index[good])
    cache = FeatureCache(cache_root, options)
    # by id: ranks share references, and the merged counts hold each image once
    counts = {"images": ids, "described": described,
              "cache_bytes": {i: cache.path(i).stat().st_size for i in ids if cache.path(i).is_file()},
              "features_seconds": features_seconds, "matching_seconds": matching_seconds,
              "pairs": len(pairs), "matched": int(good.sum()), "broken": broken}
    return evidence, counts


def _gather(value: object, world: int) -> list[object]:
    """Every rank's ``value`` on the first rank (and [value] alone)."""
    if world == 1:
        return [value]
    import torch.distributed as dist

    gathered = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered or []


def verify(
    predictions: pd.DataFrame,
    queries: Mapping[str, Path],
    references: Mapping[str, Path],
    output: str | Path,
    *,
    options: VerifyOptions = VerifyOptions(),
    cache: str | Path | None = None,
    combiner: Combiner = InlierBonus(),
    fit: Callable[[pd.DataFrame], Combiner] | None = None,
    strict: bool = False,
    max_broken: float = 0.01,
    quiet: bool = False,
    record: Mapping[str, object] | None = None,
) -> VerifyResult:
    """Verify each query's ``options.k`` best candidates of ``predictions`` and write the re-scored predictions
    ``output``, the evidence sidecar (:func:`evidence_path`) and the provenance sidecar.

    ``queries``/``references``: ``{id: path}`` holding every id of the predictions. ``cache``: the feature
    cache folder (default :func:`default_cache`). ``combiner``: evidence DataFrame (:data:`EVIDENCE_COLUMNS`
    plus ``best_score`` and ``best_inliers`` per query) -> new scores; ``fit``: evidence -> the combiner to use
    instead (a calibration fitted on this run's labelled pairs); candidates beyond k and pairs with a
    broken image count as zero evidence (``verified`` False; ``error`` says why for the latter).
    ``strict``: the first broken image raises InputError; more than ``max_broken`` of the images broken
    warns, all of them raises :class:`isc.core.files.NoImageRead`. ``record``: more for the provenance.
    Under torchrun the queries are sharded across ranks and the first rank writes the files.
    """
    import pandas as pd

    from isc.core.descriptors import provenance, provenance_path
    from isc.core.distributed import join_process_group, leave_process_group
    from isc.core.files import write_json
    from isc.core.tables import write_predictions

    if len(predictions) == 0:
        raise InputError("no predictions to verify")
    if not 0 <= max_broken:
        raise InputError(f"max_broken must be >= 0, got {max_broken}")
    _check_ids(predictions, "query_id", queries, "query")
    _check_ids(predictions, "reference_id", references, "reference")
    # one id on both sides is one image only when it is one path (one folder searched against itself)
    overlap = next((i for i in sorted(set(predictions["query_id"]) & set(predictions["reference_id"]))
                    if Path(queries[i]) != Path(references[i])), None)
    if overlap is not None:
        raise InputError(f"id {overlap} is both a query and a reference image: the feature cache keys images by id")
    output = Path(output)
    cache_root = Path(cache) if cache is not None else default_cache(output)
    ranked = ranked_candidates(predictions, len(predictions))
    checked = ranked[ranked["rank"] < options.k]
    rank, world, started = join_process_group("cpu")
    try:
        query_ids = sorted(checked["query_id"].unique())
        shard = set(query_ids[rank * len(query_ids) // world:(rank + 1) * len(query_ids) // world])
        mine = checked[checked["query_id"].isin(shard)]
        workers = options.workers if options.workers is not None else \
            max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        label = f" [rank {rank}/{world}]" if world > 1 else ""
        paths = {**references, **queries}
        try:
            shard_result: tuple | Exception = _shard_evidence(mine, paths, cache_root, options, workers, strict,
                                                              label, quiet)
        except Exception as e:  # still gathered: no rank waits forever for one that failed
            shard_result = e
        gathered = _gather(shard_result, world)
    finally:
        leave_process_group(started)
    failed = next((g for g in [shard_result, *gathered] if isinstance(g, Exception)), None)
    if failed is not None:
        raise failed
    if rank != 0:
        return _result(output, cache_root, rank, world, 0, 0, [shard_result[1]])
    evidence = pd.concat([e for e, _ in gathered]).sort_values(["query_id", "rank"], kind="stable")
    all_counts = [c for _, c in gathered]
    broken = {i: reason for c in all_counts for i, reason in sorted(c["broken"].items())}
    images = len(set(evidence["query_id"]) | set(evidence["reference_id"]))
    if (evidence["error"] != "").all():
        raise NoImageRead(f"none of the {len(evidence)} pairs could be verified: {len(broken)} of their {images} "
                          f"images are broken (first {next(iter(broken.items()))})")
    if len(broken) > max_broken * images:
        warnings.warn(f"{len(broken):,} of {images:,} images ({len(broken) / images:.1%}) are broken, more than "
                      f"{max_broken:.1%}: their pairs count as unverified (listed in {evidence_path(output)})",
                      stacklevel=2)
    unchecked = ranked[ranked["rank"] >= options.k].assign(verified=False, matches=0, inliers=0, inlier_ratio=0.0,
                                                          transform="", error="")
    evidence = pd.concat([evidence, unchecked]).sort_values(["query_id", "rank"], kind="stable")
    evidence = evidence[list(EVIDENCE_COLUMNS)].reset_index(drop=True)
    if fit is not None:
        combiner = fit(evidence)
    new_scores = rescore(evidence, combiner)
    evidence = evidence.assign(new_score=new_scores)
    sidecar = provenance_path(output)
    sidecar.unlink(missing_ok=True)  # a crash between the writes must not leave an older run's record
    write_predictions(output, evidence[["query_id", "reference_id", "new_score"]].rename(columns={"new_score": "score"}))
    with atomic_path(evidence_path(output)) as tmp:
        evidence.to_csv(tmp, index=False, float_format="%.7g")
    result = _result(output, cache_root, rank, world, len(evidence), evidence["query_id"].nunique(), all_counts)
    write_json(sidecar, provenance(
        command="isc-verify", options={**dataclasses.asdict(options), "combiner": repr(combiner), "strict": strict,
                                       "max_broken": max_broken},
        **(record or {}), evidence=str(evidence_path(output)),
        counts={"predictions": result.predictions, "queries": result.queries, "pairs": result.pairs,
                "failed_pairs": result.failed_pairs, "images": result.images, "broken": len(broken)}))
    return result


def _result(output: Path, cache_root: Path, rank: int, world: int, predictions: int, queries: int,
            counts: Sequence[Mapping]) -> VerifyResult:
    def total(key: str) -> int | float:
        return sum(c[key] for c in counts)

    images = set().union(*(c["images"] for c in counts))
    described = len(set().union(*(c["described"] for c in counts)))  # by two ranks at once on a cold cache: once
    cache_bytes = {i: size for c in counts for i, size in c["cache_bytes"].items()}
    features_seconds = max(c["features_seconds"] for c in counts)
    matching_seconds = max(c["matching_seconds"] for c in counts)
    return VerifyResult(
        output=str(output), evidence=str(evidence_path(output)), cache=str(cache_root), rank=rank, world_size=world,
        predictions=predictions, queries=queries, pairs=total("pairs"),
        failed_pairs=total("pairs") - total("matched"), images=len(images), described=described,
        cached=len(images) - described,
        cache_bytes_per_image=round(sum(cache_bytes.values()) / len(cache_bytes)) if cache_bytes else None,
        features_seconds=round(features_seconds, 3), matching_seconds=round(matching_seconds, 3),
        images_per_second=round(described / features_seconds, 1) if features_seconds else None,
        pairs_per_second=round(total("matched") / matching_seconds, 1) if matching_seconds else None,
        broken={i: r for c in counts for i, r in c["broken"].items()})
