"""The views of an image (its full view and crops) pooled into its one descriptor, for the descriptor track.

``mean``: the views' mean; ``gem``: their signed generalised mean ``sign(m)·|m|^(1/p)``,
``m = mean(sign(x)·|x|^p)`` per dimension (descriptors have negative values, so the power keeps the sign;
p = 1 is the mean, a large p leans to each dimension's strongest view); both L2-normalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from isc.core.files import InputError
from isc.search.vectors import l2_normalise_rows, prepare_descriptors

POOLINGS = ("mean", "gem")


@dataclass(frozen=True)
class ViewPooling:
    """How an image's views become one descriptor: ``method`` of :data:`POOLINGS`, ``p`` the GeM power;
    checked once, here."""

    method: str = "mean"
    p: float = 3.0

    def __post_init__(self) -> None:
        if self.method not in POOLINGS:
            raise InputError(f"unknown view pooling {self.method!r} (choose from {', '.join(POOLINGS)})")
        if not (math.isfinite(self.p) and 1 <= self.p <= 100):
            raise InputError(f"GeM power p must be a finite number within 1..100, got {self.p}")

    def recorded(self) -> dict[str, object]:
        """The settings as a file's record of what made it quotes them."""
        return {"method": self.method, **({"p": self.p} if self.method == "gem" else {})}


def pool_views(ids: Sequence[str], views: np.ndarray, pooling: ViewPooling = ViewPooling()) -> tuple[list[str], np.ndarray]:
    """(each distinct id once, in order of its first row; its rows of ``views`` pooled, float32 [n, d]).

    ``views`` [len(ids), d]: finite, L2-normalised on the way in; the rows of one id may lie anywhere.
    """
    views = prepare_descriptors(views, "view")
    if len(ids) != len(views):
        raise InputError(f"{len(ids)} ids for {len(views)} view descriptors")
    distinct, first, group = np.unique(np.asarray(ids, dtype=object), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # the ids as their first rows come
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    group = rank[group.ravel()]
    values = views.astype(np.float64)
    if pooling.method == "gem":
        values = np.sign(values) * np.abs(values) ** pooling.p
    summed = np.zeros((len(order), views.shape[1]))
    np.add.at(summed, group, values)
    pooled = summed / np.bincount(group)[:, None]
    if pooling.method == "gem":
        pooled = np.sign(pooled) * np.abs(pooled) ** (1 / pooling.p)
    return [str(i) for i in distinct[order]], l2_normalise_rows(pooled.astype(np.float32))[0]
