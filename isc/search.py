"""Matching queries against references: exact k-nearest-neighbour search, score normalisation, kNN graphs.

- :func:`knn` is the exact search every stage uses, with three interchangeable backends: ``faiss-cpu``,
  ``faiss-gpu`` (all visible GPUs, references sharded) and ``torch`` (half-precision products plus a
  grouped top-k on a GPU, float32 on the CPU); all return the same neighbours up to ties.
- :func:`search` turns descriptors into the matching track's predictions, with the training-set score
  normalisation ``s'(q, r) = s(q, r) − β · agg(s(q, t_A..t_B))`` (and optionally the same for ``r``);
  :func:`search_files` does it over descriptor files of one model and records what it did beside the CSV.
- :func:`knn_graph` and :func:`write_knn_graph` export a collection's kNN graph as NumPy and in the layout
  learn-to-cluster reads.

Memory stays bounded: queries (and references, for the torch and faiss-gpu backends) are processed in
blocks, so only the reference array itself must fit in RAM (1M × 256 float32 = 1 GB).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from isc.io import (
    PHASE_QUERY_RANGES,
    PROVENANCE_SUFFIX,
    InputError,
    atomic_path,
    attribute_differences,
    model_attributes,
    provenance,
    query_phase,
    read_descriptors,
    write_predictions,
)

if TYPE_CHECKING:
    # imported where used: the torch backend runs on GPU machines that have neither faiss nor pandas
    import faiss
    import pandas as pd
    import torch

BACKENDS = ("auto", "faiss-cpu", "faiss-gpu", "torch")
METRICS = {"ip": "METRIC_INNER_PRODUCT", "l2": "METRIC_L2"}  # the name of each one's faiss constant
AGGREGATIONS = ("mean", "min")
FAISS_GPU_MAX_K = 2048  # faiss's GPU k-selection limit
NORM_TOLERANCE = 1e-3  # |‖x‖ − 1| above this counts as "not L2-normalised"
QUERY_BLOCK = 4096  # queries per faiss call: bounds the distance buffers and paces the progress bar


# ------------------------------------------------------------------------------------------ backends


def faiss_installed() -> bool:
    """Whether faiss can be imported."""
    return importlib.util.find_spec("faiss") is not None


def _faiss():
    """The faiss module, imported on first use; InputError when it is not installed."""
    if not faiss_installed():
        raise InputError("faiss is not installed (pip install faiss-cpu), or use --backend torch")
    import faiss

    return faiss


def faiss_gpu_count() -> int:
    """Number of GPUs the installed faiss can use (0 for faiss-cpu, or without faiss)."""
    if not faiss_installed():
        return 0
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def available_backends() -> list[str]:
    """The concrete backends this machine can run, fastest first."""
    found = []
    if torch_has_cuda():
        found.append("torch")
    if faiss_gpu_count():
        found.append("faiss-gpu")
    if faiss_installed():
        found.append("faiss-cpu")
    if "torch" not in found:
        found.append("torch")  # torch on the CPU: correct but slower than faiss-cpu
    return found


def resolve_backend(backend: str) -> str:
    """``auto`` becomes the fastest available backend; an unavailable one is an InputError."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        return available_backends()[0]
    if backend == "faiss-cpu":
        _faiss()  # InputError without faiss
    if backend == "faiss-gpu" and not faiss_gpu_count():
        raise InputError("backend faiss-gpu: the installed faiss has no GPU support or sees no GPU "
                         "(install faiss-gpu, or use --backend torch)")
    return backend


# ------------------------------------------------------------------------------------------ exact kNN


def _check_pair(query: np.ndarray, reference: np.ndarray, what: str = "query and reference") -> None:
    for name, x in zip(what.split(" and "), (query, reference), strict=True):
        if x.ndim != 2:
            raise InputError(f"{name} descriptors must be a 2-d array [n, d], got shape {x.shape}")
        if x.shape[0] == 0:
            raise InputError(f"no {name} descriptors (empty array)")
    if query.shape[1] != reference.shape[1]:
        raise InputError(f"dimension mismatch: {what} descriptors have {query.shape[1]} and "
                         f"{reference.shape[1]} dimensions")


def _clamp_k(k: int, n: int, what: str) -> int:
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if k > n:
        warnings.warn(f"k = {k} is larger than the {n} {what}: using k = {n}", stacklevel=3)
        return n
    return k


def knn(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    metric: str = "ip",
    backend: str = "auto",
    quiet: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest references of each query: (scores [nq, k] float32, indices [nq, k] int64).

    ``metric`` ``"ip"``: inner products, highest first; ``"l2"``: squared L2 distances, lowest first.
    ``k`` larger than the number of references is reduced to it, with a warning.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    query = np.ascontiguousarray(query, dtype=np.float32)
    reference = np.ascontiguousarray(reference, dtype=np.float32)
    _check_pair(query, reference)
    k = _clamp_k(k, reference.shape[0], "references")
    backend = resolve_backend(backend)
    if backend == "faiss-cpu":
        return _knn_faiss_cpu(query, reference, k, metric, quiet)
    if backend == "faiss-gpu":
        return _knn_faiss_gpu(query, reference, k, metric)
    return knn_torch(query, reference, k, metric, quiet=quiet)


def _knn_faiss_cpu(
    query: np.ndarray, reference: np.ndarray, k: int, metric: str, quiet: bool
) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    scores = np.empty((len(query), k), dtype=np.float32)
    indices = np.empty((len(query), k), dtype=np.int64)
    for q0 in tqdm(range(0, len(query), QUERY_BLOCK), desc="search (faiss-cpu)", unit="block", disable=quiet):
        q1 = q0 + QUERY_BLOCK
        scores[q0:q1], indices[q0:q1] = faiss.knn(query[q0:q1], reference, k, metric=getattr(faiss, METRICS[metric]))
    return scores, indices


def _knn_faiss_gpu(
    query: np.ndarray, reference: np.ndarray, k: int, metric: str, reference_block: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    from faiss.contrib.exhaustive_search import knn_ground_truth

    if k > FAISS_GPU_MAX_K:
        raise InputError(f"backend faiss-gpu supports k <= {FAISS_GPU_MAX_K}, got {k} (use --backend torch)")
    blocks = (reference[r0 : r0 + reference_block] for r0 in range(0, len(reference), reference_block))
    # faiss's contrib shards each reference block over all GPUs and merges the blocks in a heap
    scores, indices = knn_ground_truth(query, blocks, k, metric_type=getattr(faiss, METRICS[metric]), shard=True)
    return scores.astype(np.float32), indices.astype(np.int64)


def _topk_grouped(scores, k: int, group: int = 64):
    """Exact top-k of each row of ``scores`` (torch [m, n]), best first, without sorting all n values.

    The k best values lie in at most k groups of ``group`` consecutive columns, and those groups are
    among the k groups with the highest maxima; a memory-bound max reduction then a top-k over
    n/group values is much faster on a GPU than a top-k over n.
    """
    import torch

    m, n = scores.shape
    n_groups = n // group
    if n_groups < 4 * k:
        return scores.topk(k, dim=1)
    group_max = scores[:, : n_groups * group].view(m, n_groups, group).amax(dim=2)
    best_groups = group_max.topk(k, dim=1, sorted=False).indices
    offsets = torch.arange(group, device=scores.device)
    columns = (best_groups[:, :, None] * group + offsets).view(m, k * group)
    if n_groups * group < n:  # the last, partial group is always a candidate
        tail = torch.arange(n_groups * group, n, device=scores.device).expand(m, -1)
        columns = torch.cat([columns, tail], dim=1)
    values, picked = scores.gather(1, columns).topk(k, dim=1)
    return values, columns.gather(1, picked)


def knn_torch(
    query: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    k: int,
    metric: str = "ip",
    device: str | None = None,
    reference_block: int | None = None,
    block_elements: int | None = None,
    half: bool | None = None,
    quiet: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The torch backend of :func:`knn` (same results), on ``device`` (default: cuda if available).

    ``query`` and ``reference`` are float32 NumPy arrays or torch tensors (already on the device: no copy).
    With ``half`` (default: on a GPU), candidates are selected with float16 products (scaled so that they
    can neither overflow nor underflow), then re-scored exactly in float32, so scores match faiss's;
    without, everything is float32.
    ``reference_block`` references are on the device at a time, and a score block holds at most
    ``block_elements`` values (GPU defaults: 4M references, 2^30 values = 2 GB of float16).
    """
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = dev.type == "cuda"
    half = on_gpu if half is None else half
    nq, n_ref = len(query), len(reference)
    rb = min(n_ref, reference_block or (1 << 22 if on_gpu else 1 << 16))
    qb = max(1, min(nq, (block_elements or (1 << 30 if on_gpu else 1 << 24)) // rb))
    # float16 selection may misorder near-equal scores: re-score a margin of extra candidates exactly
    n_candidates = 2 * k + 16 if half else k
    select_dtype = torch.float16 if half else torch.float32
    sign = -1.0 if metric == "l2" else 1.0  # keep "higher is better" internally

    q32 = torch.as_tensor(query, device=dev)
    query_norm = float(q32.norm(dim=1).max())
    best_scores = torch.full((nq, k), -float("inf"), device=dev)
    best_indices = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    progress = tqdm(total=nq * ((n_ref + rb - 1) // rb), desc=f"search (torch, {dev.type})", unit="query",
                    unit_scale=True, disable=quiet)
    with torch.inference_mode():
        for r0 in range(0, n_ref, rb):
            r32 = torch.as_tensor(reference[r0 : r0 + rb], device=dev)
            # per block: selection copies scaled to unit maximum norm (float16 tops out at 65504)
            scale = 1.0 / max(query_norm, float(r32.norm(dim=1).max()), 1e-30) if half else 1.0
            q_select, r_select = (q32 * scale).to(select_dtype), (r32 * scale).to(select_dtype)
            r_sqnorm = (r_select.float() ** 2).sum(1).to(select_dtype) if metric == "l2" else None
            c = min(n_candidates, len(r32))
            for q0 in range(0, nq, qb):
                q1 = min(nq, q0 + qb)
                products = q_select[q0:q1] @ r_select.T
                if metric == "l2":  # argmin ‖q − r‖² = argmax 2 q·r − ‖r‖²
                    products.mul_(2).sub_(r_sqnorm)
                candidates = _topk_grouped(products, c)[1]
                del products
                exact = _exact_scores(q32[q0:q1], r32, candidates, metric) * sign
                scores = torch.cat([best_scores[q0:q1], exact], dim=1)
                indices = torch.cat([best_indices[q0:q1], candidates + r0], dim=1)
                top, picked = scores.topk(k, dim=1)
                best_scores[q0:q1], best_indices[q0:q1] = top, indices.gather(1, picked)
                progress.update(q1 - q0)
    progress.close()
    return (best_scores * sign).cpu().numpy(), best_indices.cpu().numpy()


def _exact_scores(query, reference, candidates, metric: str):
    """float32 inner products or squared distances of each query to its candidate references."""
    rows = reference[candidates]  # [m, c, d]
    if metric == "l2":
        return ((rows - query[:, None, :]) ** 2).sum(dim=2)
    return (rows * query[:, None, :]).sum(dim=2)


# -------------------------------------------------------------------------------- descriptor checks


def prepare_descriptors(descriptors: np.ndarray, name: str) -> np.ndarray:
    """float32 copy, L2-normalised; warns when the input was not (zero vectors stay zero)."""
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2:
        raise InputError(f"{name} descriptors must be a 2-d array [n, d], got shape {descriptors.shape}")
    if descriptors.shape[0] == 0:
        raise InputError(f"no {name} descriptors (empty file or array)")
    if not np.isfinite(descriptors).all():
        row = int(np.flatnonzero(~np.isfinite(descriptors).all(axis=1))[0])
        raise InputError(f"{name} descriptor #{row} has NaN or infinite values")
    norms = np.linalg.norm(descriptors, axis=1)
    off = np.abs(norms - 1) > NORM_TOLERANCE
    if off.any():
        warnings.warn(f"{int(off.sum())} of {len(norms)} {name} descriptors are not L2-normalised "
                      f"(norms {norms.min():.4g}..{norms.max():.4g}): normalising them", stacklevel=2)
        descriptors = descriptors / np.where(norms > 0, norms, 1)[:, None]
    return descriptors


def parse_neighbor_range(text: str) -> tuple[int, int]:
    """``"A:B"`` (or ``"B"`` for ``B:B``) → (A, B), 1-based and inclusive."""
    parts = text.split(":")
    try:
        a, b = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        a, b = 0, 0
    if not 1 <= a <= b:
        raise InputError(f"neighbour range {text!r}: expected A:B with 1 <= A <= B (e.g. 1:3, or 10:10)")
    return a, b


# ------------------------------------------------------------------------------------ normalisation


def neighbor_bias(
    descriptors: np.ndarray,
    training: np.ndarray,
    neighbors: tuple[int, int] = (1, 3),
    agg: str = "mean",
    backend: str = "auto",
    quiet: bool = True,
) -> np.ndarray:
    """Per-descriptor similarity to its training neighbourhood: agg of s(x, t_i) for i in A..B.

    ``neighbors=(A, B)``: the A-th to B-th nearest training descriptors, 1-based and inclusive
    ((1, 3): the three nearest, SSCD's default; (10, 10): the 10th, the isc2021 baseline's).
    ``agg``: ``"mean"`` of those similarities or their ``"min"`` (the B-th nearest one's).
    """
    a, b = neighbors
    if not 1 <= a <= b:
        raise InputError(f"neighbour range {a}:{b}: expected 1 <= A <= B")
    if agg not in AGGREGATIONS:
        raise InputError(f"unknown aggregation {agg!r} (choose from {', '.join(AGGREGATIONS)})")
    if b > len(training):
        raise InputError(f"neighbour range {a}:{b} needs at least {b} training descriptors, got {len(training)}")
    _check_pair(descriptors, training, "query and training")
    similarities = knn(descriptors, training, b, "ip", backend, quiet)[0][:, a - 1 : b]
    return (similarities.mean(axis=1) if agg == "mean" else similarities.min(axis=1)).astype(np.float32)


def subtract_negative_embeddings(
    descriptors: np.ndarray, training: np.ndarray, beta: float, k: int, backend: str = "auto", quiet: bool = True
) -> np.ndarray:
    """``normalize(x − β · mean of x's k nearest training descriptors)``, float32 [n, d].

    The descriptor-track counterpart of score normalisation (1st place of the ISC 2021 descriptor
    track): what a descriptor shares with its nearest unrelated images is removed from the descriptor
    itself. ``training`` must not hold the descriptors themselves (each would subtract itself).
    """
    if not np.isfinite(beta) or beta < 0:
        raise InputError(f"negative-embedding beta must be a finite number >= 0, got {beta}")
    if not 1 <= k <= len(training):
        raise InputError(f"negative-embedding k must be between 1 and the {len(training)} training descriptors, "
                         f"got {k}")
    descriptors = prepare_descriptors(descriptors, "descriptor")
    training = prepare_descriptors(training, "training")
    _check_pair(descriptors, training, "descriptor and training")
    neighbours = knn(descriptors, training, k, "ip", backend, quiet)[1]
    subtracted = descriptors - np.float32(beta) * training[neighbours].mean(axis=1)
    return subtracted / np.maximum(np.linalg.norm(subtracted, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------- approximate search


def build_index(index_string: str, reference: np.ndarray, train: np.ndarray, nprobe: int = 16) -> faiss.Index:
    """A FAISS index (``index_factory`` string, inner product) trained on ``train``, holding ``reference``."""
    faiss = _faiss()
    try:
        index = faiss.index_factory(reference.shape[1], index_string, faiss.METRIC_INNER_PRODUCT)
        index.train(train)
    except RuntimeError as e:
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise InputError(f"index {index_string!r} ({len(train)} training vectors): {message}") from None
    for r0 in range(0, len(reference), 1 << 16):
        index.add(reference[r0 : r0 + (1 << 16)])
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:
        pass  # not an IVF index: nothing to probe
    return index


def index_search(index: faiss.Index, query: np.ndarray, k: int, quiet: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Search an index in query blocks: (scores, indices), index -1 where it found fewer than k."""
    scores = np.empty((len(query), k), dtype=np.float32)
    indices = np.empty((len(query), k), dtype=np.int64)
    for q0 in tqdm(range(0, len(query), QUERY_BLOCK), desc="search (index)", unit="block", disable=quiet):
        scores[q0 : q0 + QUERY_BLOCK], indices[q0 : q0 + QUERY_BLOCK] = index.search(query[q0 : q0 + QUERY_BLOCK], k)
    return scores, indices


def recall_against_exact(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Fraction of the exact k nearest neighbours that the approximate search also returned."""
    found = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approximate, exact, strict=True))
    return found / exact.size


# ----------------------------------------------------------------------------------------- search


def search(
    query_ids: list[str],
    query: np.ndarray,
    reference_ids: list[str],
    reference: np.ndarray,
    k: int = 10,
    max_results: int = 500_000,
    training: np.ndarray | None = None,
    norm_beta: float = 0.5,
    norm_neighbors: tuple[int, int] = (10, 10),
    norm_agg: str = "mean",
    normalize_references: bool = False,
    backend: str = "auto",
    index: str | None = None,
    nprobe: int = 16,
    recall_queries: int = 1000,
    quiet: bool = False,
) -> pd.DataFrame:
    """Matching-track predictions: each query's ``k`` best references, the best ``max_results`` kept.

    Scores are inner products of L2-normalised descriptors. With ``training``, each query's score is
    normalised: ``s'(q, r) = s(q, r) − β·bias(q)`` with :func:`neighbor_bias` (defaults β = 0.5 and the
    10th neighbour: the best measured on photos, docs/BENCHMARKS.md, above SSCD's β = 1, 1st-3rd); with
    ``normalize_references`` also ``− β·bias(r)``, folded into the search (an extra dimension) so that
    each query's k best are those of the normalised score. ``index``: a FAISS index string for an
    approximate search (``"IVF1024,Flat"``, ``"IVF1024,PQ32"``), trained on ``training`` when given,
    else on the references; its recall against the exact search, on ``recall_queries`` queries, is
    reported on stderr and in ``result.attrs["recall"]``.
    A query id may repeat: its rows are views of one query (crops, scales), each normalised on its own,
    and a (query, reference) pair scores its best view's score, once; the query keeps its ``k`` best
    references over all its views.
    Returns a DataFrame ``query_id, reference_id, score`` sorted by decreasing score.
    """
    if len(query_ids) != len(query) or len(reference_ids) != len(reference):
        raise InputError("ids and descriptors differ in length")
    if max_results < 1:
        raise InputError(f"max_results must be at least 1, got {max_results}")
    query = prepare_descriptors(query, "query")
    reference = prepare_descriptors(reference, "reference")
    _check_pair(query, reference)
    k = _clamp_k(k, len(reference), "references")
    query_bias = np.zeros(len(query), dtype=np.float32)
    if training is not None:
        training = prepare_descriptors(training, "training")

        def bias(x: np.ndarray) -> np.ndarray:
            return neighbor_bias(x, training, norm_neighbors, norm_agg, backend, quiet)

        query_bias = norm_beta * bias(query)
        if normalize_references:
            # s(q, r) − β·bias(r) = [q, 1]·[r, −β·bias(r)]: one exact search finds the normalised k best
            reference = np.hstack([reference, -norm_beta * bias(reference)[:, None]])
            query = np.hstack([query, np.ones((len(query), 1), dtype=np.float32)])
    elif normalize_references:
        raise InputError("normalize_references needs training descriptors")

    recall = None
    if index is None:
        scores, indices = knn(query, reference, k, "ip", backend, quiet)
    else:
        train = reference if training is None or normalize_references else training
        faiss_index = build_index(index, reference, train, nprobe)
        scores, indices = index_search(faiss_index, query, k, quiet)
        sample = np.linspace(0, len(query) - 1, min(recall_queries, len(query))).astype(int)
        recall = recall_against_exact(indices[sample], knn(query[sample], reference, k, "ip", backend)[1])
        if not quiet:
            print(f"index {index} (nprobe {nprobe}): recall@{k} against exact search {recall:.4f} "
                  f"on {len(sample)} queries", flush=True)
    scores = scores - query_bias[:, None]
    if len(set(query_ids)) < len(query_ids):
        result = best_view_pairs(top_pairs(query_ids, reference_ids, scores, indices, scores.size), k, max_results)
    else:
        result = top_pairs(query_ids, reference_ids, scores, indices, max_results)
    result.attrs["recall"] = recall
    return result


def top_pairs(
    query_ids: list[str], reference_ids: list[str], scores: np.ndarray, indices: np.ndarray, max_results: int
) -> pd.DataFrame:
    """The ``max_results`` best (query, reference, score) of per-query results, by decreasing score."""
    import pandas as pd

    rows, cols = np.nonzero(indices >= 0)
    flat = scores[rows, cols]
    if len(flat) > max_results:
        keep = np.argpartition(-flat, max_results - 1)[:max_results]
        rows, cols, flat = rows[keep], cols[keep], flat[keep]
    order = np.argsort(-flat, kind="stable")
    rows, cols, flat = rows[order], cols[order], flat[order]
    return pd.DataFrame({
        "query_id": np.asarray(query_ids, dtype=object)[rows],
        "reference_id": np.asarray(reference_ids, dtype=object)[indices[rows, cols]],
        "score": flat.astype(np.float64),
    })


def best_view_pairs(pairs: pd.DataFrame, k: int, max_results: int) -> pd.DataFrame:
    """Of pairs sorted by decreasing score whose query ids repeat (views): each pair's best score, each
    query's ``k`` best references, the ``max_results`` best pairs."""
    best = pairs.drop_duplicates(["query_id", "reference_id"], keep="first")
    best = best[best.groupby("query_id", sort=False).cumcount() < k]
    return best.head(max_results).reset_index(drop=True)


# ------------------------------------------------------------------------------------- descriptor files


def phase_queries(query_ids: list[str], query: np.ndarray, phase: int, source: str | Path) -> tuple[list[str], np.ndarray]:
    """The ids and descriptors of the queries of a competition phase; InputError when there are none."""
    if phase not in PHASE_QUERY_RANGES:
        raise InputError(f"phase must be one of {', '.join(map(str, PHASE_QUERY_RANGES))}, got {phase}")
    keep = np.array([query_phase(i) == phase for i in query_ids], dtype=bool)
    if not keep.any():
        lo, hi = PHASE_QUERY_RANGES[phase]
        raise InputError(f"{source}: none of its {len(query_ids)} queries is a phase-{phase} query "
                         f"(Q{lo:05d}-Q{hi:05d})")
    return [i for i, kept in zip(query_ids, keep, strict=True) if kept], query[keep]


def check_same_model(files: Sequence[tuple[str | Path, dict[str, object]]], ignore: Sequence[str] = ()) -> None:
    """Refuse descriptor files (path, attributes) made by different models, by the rule of
    :func:`isc.io.attribute_differences` (every attribute but the per-run ones and ``ignore``); a file with
    no model attribute is only warned about."""
    # "dimension" alone says nothing of the model: the organisers' files carry only that
    described = {path: bool(model_attributes(attrs, [*ignore, "dimension"])) for path, attrs in files}
    unknown = [str(path) for path, known in described.items() if not known]
    if unknown:
        warnings.warn(f"{', '.join(unknown)}: no model attributes (not written by isc-extract or isc-pca): "
                      "cannot check that the descriptors were made by the same model", stacklevel=2)
    compared = [(path, attrs) for path, attrs in files if described[path]]
    for path, attrs in compared[1:]:
        first, first_attrs = compared[0]
        differences = attribute_differences(first_attrs, attrs, ignore)
        if differences:
            raise InputError(f"{first} and {path} were not made by the same model ({first} != {path}): "
                             + "; ".join(differences))


def _json_value(value: object) -> object:
    """What json cannot write itself: attribute arrays as lists, anything else as text."""
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else str(value)


def search_files(
    query: str | Path,
    reference: str | Path,
    output: str | Path,
    training: str | Path | None = None,
    phase: int | None = None,
    ignore_attributes: Sequence[str] = (),
    **options: object,
) -> pd.DataFrame:
    """:func:`search` over descriptor files: writes the predictions CSV ``output`` and its provenance sidecar.

    ``phase``: keep only that phase's queries. Query rows may be several views of each query (a file
    with the attribute ``views_per_id``), each pair scored by its best view. The files must come from the
    same model (:func:`check_same_model`). ``options``: keyword arguments of :func:`search`. The sidecar
    ``<output>.provenance.json``, which isc-submit records in the submission's manifest, holds the
    options, each input's path, size and model attributes, and the toolkit version.
    """
    paths = {"query": query, "reference": reference, **({"training": training} if training is not None else {})}
    files = {split: read_descriptors(path, split=split, views=split == "query") for split, path in paths.items()}
    query_ids, query_x, _ = files["query"]
    if phase is not None:
        query_ids, query_x = phase_queries(query_ids, query_x, phase, query)
    for split in list(files)[1:]:  # reference, training: a clearer message than "dimension: a != b" below
        _check_pair(query_x, files[split][1], f"query and {split}")
    # views of the queries (crops) are made by the same model: not a model difference
    check_same_model([(paths[split], attrs) for split, (_, _, attrs) in files.items()],
                     [*ignore_attributes, "views_per_id"])
    reference_ids, reference_x, _ = files["reference"]
    training_x = files["training"][1] if "training" in files else None
    predictions = search(query_ids, query_x, reference_ids, reference_x, training=training_x, **options)
    record = provenance(
        command="isc-search",
        options={**options, "phase": phase, "ignore_attributes": list(ignore_attributes)},
        inputs={split: {"path": str(Path(path).resolve()), "bytes": Path(path).stat().st_size,
                        "model_attributes": model_attributes(files[split][2])} for split, path in paths.items()},
        predictions={"rows": len(predictions), "queries": int(predictions["query_id"].nunique())},
        recall=predictions.attrs.get("recall"),
    )
    sidecar = Path(str(output) + PROVENANCE_SUFFIX)
    sidecar.unlink(missing_ok=True)  # a crash between the two writes must not leave an older run's record
    write_predictions(output, predictions)
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=_json_value) + "\n", encoding="utf-8")
    return predictions


# ------------------------------------------------------------------------------------------ kNN graph


def knn_graph(
    descriptors: np.ndarray, k: int, backend: str = "auto", quiet: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Each descriptor's k nearest others (itself excluded): (neighbours [n, k] int64, similarities float32)."""
    descriptors = prepare_descriptors(descriptors, "graph")
    if len(descriptors) < 2:
        raise InputError("a kNN graph needs at least 2 descriptors")
    k = _clamp_k(k, len(descriptors) - 1, "other descriptors")
    similarities, neighbours = knn(descriptors, descriptors, k + 1, "ip", backend, quiet)
    is_self = neighbours == np.arange(len(descriptors))[:, None]
    # an exact duplicate can outrank the descriptor itself: then drop the last neighbour instead
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return neighbours[keep].reshape(-1, k), similarities[keep].reshape(-1, k)


def knn_graph_paths(out_dir: str | Path, name: str, k: int) -> dict[str, Path]:
    """Where :func:`write_knn_graph` puts each file of the graph ``name`` with ``k`` neighbours."""
    out_dir = Path(out_dir)
    return {"graph": out_dir / f"{name}.npz", "features": out_dir / "features" / f"{name}.bin",
            "knns": out_dir / "knns" / name / f"faiss_k_{k}.npz", "labels": out_dir / "labels" / f"{name}.meta"}


def write_knn_graph(
    out_dir: str | Path, name: str, ids: list[str], descriptors: np.ndarray, neighbours: np.ndarray,
    similarities: np.ndarray, classes: Sequence[str] | None = None,
) -> list[Path]:
    """Write a kNN graph as ``<name>.npz`` (ids, neighbours, similarities) and in learn-to-cluster's layout.

    learn-to-cluster: ``features/<name>.bin`` (float32 rows, no header) and
    ``knns/<name>/faiss_k_<k>.npz`` whose ``data`` is [n, 2, k] float32: row i holds neighbour indices
    then distances ``1 − similarity``, the point itself first at distance 0 followed by its k − 1
    nearest others, as that toolkit's own faiss search produces; similarities are clipped to [0, 1]
    because it asserts distances in [0, 1]. With ``classes`` (one name per row), also ``labels/<name>.meta``:
    one integer class a line, in feature order, classes numbered in the order of their sorted names.
    """
    n, k = neighbours.shape
    if classes is not None and len(classes) != n:
        raise InputError(f"{len(classes)} classes for {n} descriptors")
    paths = knn_graph_paths(out_dir, name, k)
    with atomic_path(paths["graph"]) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=np.asarray(ids, dtype="S"), neighbours=neighbours.astype(np.int64),
                 similarities=similarities.astype(np.float32))
    with atomic_path(paths["features"]) as tmp:
        np.ascontiguousarray(descriptors, dtype=np.float32).tofile(tmp)
    data = np.empty((n, 2, k), dtype=np.float32)
    data[:, 0, 0], data[:, 1, 0] = np.arange(n), 0.0
    data[:, 0, 1:] = neighbours[:, : k - 1]
    data[:, 1, 1:] = 1.0 - np.clip(similarities[:, : k - 1], 0.0, 1.0)
    with atomic_path(paths["knns"]) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, data=data)
    if classes is None:
        return [paths["graph"], paths["features"], paths["knns"]]
    number = {label: i for i, label in enumerate(sorted(set(classes)))}
    with atomic_path(paths["labels"]) as tmp:
        tmp.write_text("".join(f"{number[label]}\n" for label in classes), encoding="ascii")
    return list(paths.values())
