"""The SIFT process pool of :func:`isc.verify.verification.verify`: every image's features described (or read
from the cache) and every pair matched, over worker processes started from a forkserver (or in this process),
ordered as the pairs are. The workers import OpenCV, never torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from isc.core.files import InputError
from isc.core.images import BrokenImage
from isc.core.processes import worker_context
from isc.core.progress import progress
from isc.verify.local_features import (
    FeatureCache,
    Features,
    VerifyOptions,
    best_match,
    cache_stamp,
    describe_image,
    transform_text,
)

if TYPE_CHECKING:
    import pandas as pd

PAIRS_PER_TASK = 32  # pairs sent to a worker at once: small enough for a smooth progress bar


# --------------------------------------------------------------------------------- worker tasks


def _start_worker() -> None:
    import cv2

    # one process per core already
    cv2.setNumThreads(1)
    if "torch" in sys.modules:  # torch's pool too where the caller loaded it: verifying itself runs without torch
        sys.modules["torch"].set_num_threads(1)


def _features_task(args: tuple[Path, str, Path, tuple[int, ...], VerifyOptions, bool]) -> tuple[str, bool, str, int]:
    """(id, whether it was described now, why it is broken or '', 1 when its cache entry was damaged): the
    cached features of one image (of its mirror where the task says), made and cached when missing or damaged."""
    cache_root, image_id, path, stamp, options, mirrored = args
    cache = FeatureCache(cache_root, options, mirrored)
    cached = cache.load(image_id, stamp)
    if cached is not None:
        return image_id, False, cached if isinstance(cached, str) else "", 0
    try:
        features: Features | str = describe_image(Path(path), options, mirrored)
    except BrokenImage as e:
        features = str(e)
    cache.save(image_id, stamp, features)
    return image_id, True, features if isinstance(features, str) else "", cache.damaged


def _match_task(args: tuple[Path, Sequence[tuple[str, tuple[int, ...], str, tuple[int, ...]]], VerifyOptions]
                ) -> list[tuple[int, int, float, float, str]]:
    """(matches, inliers, inlier ratio, reference coverage, transform) of each (query, stamp, reference, stamp) pair, its
    features (and its query's mirror's with ``options.mirror``) read from the cache (filled by the features phase)."""
    cache_root, pairs, options = args
    cache, mirrors = FeatureCache(cache_root, options), FeatureCache(cache_root, options, mirrored=True)
    rows, loaded, mirrored = [], {}, {}
    for query_id, query_stamp, reference_id, reference_stamp in pairs:
        for image_id, stamp in ((query_id, query_stamp), (reference_id, reference_stamp)):
            if image_id not in loaded:
                loaded = {key: value for key, value in loaded.items() if key == query_id}  # one reference at a time
                loaded[image_id] = cache.load(image_id, stamp)
        if options.mirror and query_id not in mirrored:
            mirrored = {query_id: mirrors.load(query_id, query_stamp)}
        query, reference = loaded[query_id], loaded[reference_id]
        mirror = mirrored.get(query_id)
        if not isinstance(query, Features) or not isinstance(reference, Features) or (
                options.mirror and not isinstance(mirror, Features)):
            raise RuntimeError(f"features of {query_id} or {reference_id} vanished from the cache {cache.root}")
        match = best_match(query, mirror, reference, options)
        rows.append((match.matches, match.inliers, round(match.inlier_ratio, 6), round(match.reference_coverage, 6),
                     transform_text(match.transform)))
    return rows


TaskMap = Callable[[Callable, Iterator, int], Iterator]
# what the workers run, imported once by the fork server
WORKER_MODULES = ("isc.verify.workers", "cv2")


def _pool_context() -> multiprocessing.context.BaseContext:
    """:func:`~isc.core.processes.worker_context` with :data:`WORKER_MODULES` and the toolkit's modules the command
    has loaded: each worker runs the command's module again (as __mp_main__), its imports then already made; not
    that module itself, which runpy would warn of."""
    main = getattr(sys.modules["__main__"].__spec__, "name", "")
    loaded = sorted(name for name in list(sys.modules) if name.startswith("isc.") and name != main)
    return worker_context([*WORKER_MODULES, *loaded])


@contextlib.contextmanager
def task_map(workers: int) -> Iterator[TaskMap]:
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


# ------------------------------------------------------------------------------------ phases


def _describe_all(task_map: TaskMap, ids: Sequence[str], mirrored_ids: Sequence[str], paths: Mapping[str, Path],
                  stamps: Mapping[str, tuple[int, ...]], cache_root: Path, options: VerifyOptions, strict: bool,
                  label: str, quiet: bool) -> tuple[set[str], dict[str, str]]:
    """Phase 1: the cached features of every image of ``ids`` and of the mirror of each of ``mirrored_ids``,
    described when missing or damaged; (the ids described now, broken)."""
    described, broken, damaged = set(), {}, 0
    tasks = [*((cache_root, i, paths[i], stamps[i], options, False) for i in ids),
             *((cache_root, i, paths[i], stamps[i], options, True) for i in mirrored_ids)]
    with progress(total=len(tasks), unit="img", desc=f"features{label}", disable=quiet) as bar:
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
               options: VerifyOptions, label: str, quiet: bool) -> list[tuple[int, int, float, float, str]]:
    """Phase 2: the evidence of every pair, in order."""
    rows: list[tuple[int, int, float, float, str]] = []
    with progress(total=len(pairs), unit="pair", desc=f"match{label}", disable=quiet) as bar:
        for chunk in task_map(_match_task, _pair_tasks(pairs, stamps, cache_root, options), 1):
            rows += chunk
            bar.update(len(chunk))
    return rows


def shard_evidence(pairs: pd.DataFrame, paths: Mapping[str, Path], cache_root: Path, options: VerifyOptions,
                    workers: int, strict: bool, label: str, quiet: bool) -> tuple[pd.DataFrame, dict[str, object]]:
    """Both phases over one rank's pairs: (their evidence, counts and timings)."""
    import pandas as pd

    ids = sorted(set(pairs["query_id"]) | set(pairs["reference_id"]))
    stamps = {i: cache_stamp(paths[i]) for i in ids}  # before reading: a file changed later is seen as changed
    with task_map(workers) as map_tasks:
        start = time.perf_counter()
        mirrored_ids = sorted(set(pairs["query_id"])) if options.mirror else []
        described, broken = _describe_all(map_tasks, ids, mirrored_ids, paths, stamps, cache_root, options, strict,
                                          label, quiet)
        features_seconds = time.perf_counter() - start
        query_error = pairs["query_id"].map(lambda i: f"query {i}: {broken[i]}" if i in broken else "")
        reference_error = pairs["reference_id"].map(lambda i: f"reference {i}: {broken[i]}" if i in broken else "")
        error = query_error.where(query_error != "", reference_error)
        good = (error == "").to_numpy()
        start = time.perf_counter()
        rows = _match_all(map_tasks, pairs[good], stamps, cache_root, options, label, quiet)
        matching_seconds = time.perf_counter() - start
    evidence = pairs.assign(verified=good, matches=0, inliers=0, inlier_ratio=0.0, reference_coverage=0.0,
                            transform="", error=error)
    if rows:
        columns = ["matches", "inliers", "inlier_ratio", "reference_coverage", "transform"]
        evidence.loc[good, columns] = pd.DataFrame(list(rows), columns=columns, index=evidence.index[good])
    cache = FeatureCache(cache_root, options)
    # by id: ranks share references, and the merged counts hold each image once
    counts = {"images": ids, "described": described,
              "cache_bytes": {i: cache.path(i).stat().st_size for i in ids if cache.path(i).is_file()},
              "features_seconds": features_seconds, "matching_seconds": matching_seconds,
              "pairs": len(pairs), "matched": int(good.sum()), "broken": broken}
    return evidence, counts
