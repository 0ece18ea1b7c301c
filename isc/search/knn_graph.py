"""A collection's kNN graph, exported as NumPy arrays and in the layout learn-to-cluster reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from isc.core.descriptors import (
    encode_ids,
)
from isc.core.files import InputError, atomic_path
from isc.search.knn import clamp_k, knn
from isc.search.vectors import prepare_descriptors

# ------------------------------------------------------------------------------------------ kNN graph


def knn_graph(
    descriptors: np.ndarray, k: int, backend: str = "auto", quiet: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Each descriptor's k nearest others (itself excluded): (neighbours [n, k] int64, similarities float32)."""
    descriptors = prepare_descriptors(descriptors, "graph")
    if len(descriptors) < 2:
        raise InputError("a kNN graph needs at least 2 descriptors")
    k = clamp_k(k, len(descriptors) - 1, "other descriptors")
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
        np.savez(f, ids=encode_ids(ids), neighbours=neighbours.astype(np.int64),
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
