"""Exact and approximate k-nearest-neighbour search over arrays of descriptors.

:func:`knn` is the exact search every stage uses, with three interchangeable backends: ``faiss-cpu``,
``faiss-gpu`` (all visible GPUs, references sharded) and ``torch`` (half-precision products plus a grouped
top-k on a GPU, float32 on the CPU); all return the same neighbours up to ties. :func:`build_index` and
:func:`index_search` are the approximate (FAISS index) search, :func:`recall_against_exact` its check.
Queries (and references, for the torch and faiss-gpu backends) are processed in blocks, so only the
reference array itself must fit in RAM (1M × 256 float32 = 1 GB)."""

from __future__ import annotations

import importlib.util
import warnings
from typing import TYPE_CHECKING

import numpy as np

from isc.core.distributed import cuda_possible, needs_torch, torch_installed
from isc.core.files import InputError
from isc.core.progress import progress

if TYPE_CHECKING:
    # imported where used: the torch backend runs on GPU machines without faiss, faiss-cpu ones without torch's CUDA
    import faiss
    import torch

BACKENDS = ("auto", "faiss-cpu", "faiss-gpu", "torch")
METRICS = {"ip": "METRIC_INNER_PRODUCT", "l2": "METRIC_L2"}  # the name of each one's faiss constant
FAISS_GPU_MAX_K = 2048  # faiss's GPU k-selection limit
QUERY_BLOCK = 4096  # queries per faiss call: bounds the distance buffers and paces the progress bar


# ------------------------------------------------------------------------------------------ backends


def faiss_installed() -> bool:
    """Whether faiss can be imported."""
    return importlib.util.find_spec("faiss") is not None


def _faiss():
    """The faiss module, imported on first use; InputError when it is not installed."""
    if not faiss_installed():
        raise InputError("faiss is not installed (pip install faiss-cpu), or use the torch backend")
    import faiss

    return faiss


def faiss_gpu_count() -> int:
    """Number of GPUs the installed faiss can use (0 for faiss-cpu, or without faiss)."""
    if not faiss_installed():
        return 0
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def torch_has_cuda() -> bool:
    """Whether torch sees a CUDA GPU (torch imported only where one may exist: a CPU search runs without it)."""
    if not cuda_possible():
        return False
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
    if "torch" not in found and torch_installed():
        found.append("torch")  # torch on the CPU: correct but slower than faiss-cpu
    return found


def resolve_backend(backend: str) -> str:
    """``auto`` becomes the fastest available backend; an unavailable one is an InputError."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        found = available_backends()
        return found[0] if found else resolve_backend("faiss-cpu")  # neither installed: faiss's install line
    if backend == "faiss-cpu":
        _faiss()  # InputError without faiss
    if backend == "torch" and not torch_installed():
        raise needs_torch("backend torch")
    if backend == "faiss-gpu" and not faiss_gpu_count():
        raise InputError("backend faiss-gpu: the installed faiss has no GPU support or sees no GPU "
                         "(install faiss-gpu, or use the torch backend)")
    return backend


# ------------------------------------------------------------------------------------------ exact kNN


def check_pair(query: np.ndarray, reference: np.ndarray, what: str = "query and reference") -> None:
    """InputError unless both are non-empty 2-d arrays [n, d] of one d; ``what`` names them ("x and y")."""
    for name, x in zip(what.split(" and "), (query, reference), strict=True):
        if x.ndim != 2:
            raise InputError(f"{name} descriptors must be a 2-d array [n, d], got shape {x.shape}")
        if x.shape[0] == 0:
            raise InputError(f"no {name} descriptors (empty array)")
    if query.shape[1] != reference.shape[1]:
        raise InputError(f"dimension mismatch: {what} descriptors have {query.shape[1]} and "
                         f"{reference.shape[1]} dimensions")


def clamp_k(k: int, n: int, what: str) -> int:
    """``k`` reduced, with a warning, to the ``n`` ``what`` there are; InputError below 1."""
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
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest references of each query: (scores [nq, k] float32, indices [nq, k] int64).

    ``metric`` ``"ip"``: inner products, highest first; ``"l2"``: squared L2 distances, lowest first.
    ``k`` larger than the number of references is reduced to it, with a warning. ``device``: where the torch
    backend runs (:func:`knn_torch`'s default when None).
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    query = np.ascontiguousarray(query, dtype=np.float32)
    reference = np.ascontiguousarray(reference, dtype=np.float32)
    check_pair(query, reference)
    k = clamp_k(k, reference.shape[0], "references")
    backend = resolve_backend(backend)
    if backend == "faiss-cpu":
        return _knn_faiss_cpu(query, reference, k, metric, quiet)
    if backend == "faiss-gpu":
        return _knn_faiss_gpu(query, reference, k, metric)
    return knn_torch(query, reference, k, metric, device, quiet=quiet)


def _knn_faiss_cpu(
    query: np.ndarray, reference: np.ndarray, k: int, metric: str, quiet: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The faiss-cpu backend of :func:`knn`, ``QUERY_BLOCK`` queries at a time."""
    faiss = _faiss()
    scores = np.empty((len(query), k), dtype=np.float32)
    indices = np.empty((len(query), k), dtype=np.int64)
    for q0 in progress(range(0, len(query), QUERY_BLOCK), desc="search (faiss-cpu)", unit="block", disable=quiet):
        q1 = q0 + QUERY_BLOCK
        scores[q0:q1], indices[q0:q1] = faiss.knn(query[q0:q1], reference, k, metric=getattr(faiss, METRICS[metric]))
    return scores, indices


def _knn_faiss_gpu(
    query: np.ndarray, reference: np.ndarray, k: int, metric: str, reference_block: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray]:
    """The faiss-gpu backend of :func:`knn`: ``reference_block`` references at a time, sharded over all GPUs."""
    faiss = _faiss()
    from faiss.contrib.exhaustive_search import knn_ground_truth

    if k > FAISS_GPU_MAX_K:
        raise InputError(f"backend faiss-gpu supports k <= {FAISS_GPU_MAX_K}, got {k} (use the torch backend)")
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
    bar = progress(total=nq * ((n_ref + rb - 1) // rb), desc=f"search (torch, {dev.type})", unit="query",
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
                bar.update(q1 - q0)
    bar.close()
    return (best_scores * sign).cpu().numpy(), best_indices.cpu().numpy()


def _exact_scores(query, reference, candidates, metric: str):
    """float32 inner products or squared distances of each query to its candidate references."""
    rows = reference[candidates]  # [m, c, d]
    if metric == "l2":
        return ((rows - query[:, None, :]) ** 2).sum(dim=2)
    return (rows * query[:, None, :]).sum(dim=2)


# ------------------------------------------------------------------------------- approximate search


def build_index(index_string: str, reference: np.ndarray, train: np.ndarray, nprobe: int = 16) -> faiss.Index:
    """A FAISS index (``index_factory`` string, inner product) trained on ``train`` [nt, d], holding
    ``reference`` [n, d] float32, visiting ``nprobe`` lists per query when it is an IVF index."""
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
    """Search an index in query blocks: (scores [nq, k] float32, indices [nq, k] int64), index -1 where it
    found fewer than k."""
    scores = np.empty((len(query), k), dtype=np.float32)
    indices = np.empty((len(query), k), dtype=np.int64)
    for q0 in progress(range(0, len(query), QUERY_BLOCK), desc="search (index)", unit="block", disable=quiet):
        scores[q0 : q0 + QUERY_BLOCK], indices[q0 : q0 + QUERY_BLOCK] = index.search(query[q0 : q0 + QUERY_BLOCK], k)
    return scores, indices


def recall_against_exact(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Fraction of the exact k nearest neighbours (indices [nq, k]) that the approximate search also returned
    (indices [nq, k], -1 for none)."""
    found = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approximate, exact, strict=True))
    return found / exact.size
