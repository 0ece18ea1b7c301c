"""Score normalisation by a set of training images: :class:`ScoreNorm`
``s'(q, r) = s(q, r) − β · agg(s(q, t_A..t_B))`` (and optionally the same for ``r``), checked once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from isc.core.files import InputError, SettingError
from isc.search.knn import check_pair, knn

AGGREGATIONS = ("mean", "min")
MAX_BETA = 10.0  # beta of a normalisation beyond it: the bias swamps the similarity (scores are -1..1)


def parse_neighbour_range(text: str) -> tuple[int, int]:
    """``"A:B"`` (or ``"B"`` for ``B:B``) → (A, B), 1-based and inclusive, checked by :func:`check_neighbour_range`."""
    parts = text.split(":")
    try:
        neighbors = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        neighbors = (0, 0)
    check_neighbour_range(neighbors, repr(text))
    return neighbors


# ------------------------------------------------------------------------------------ normalisation


def check_neighbour_range(neighbors: tuple[int, int], written: str | None = None) -> None:
    """SettingError (``norm_neighbors``) unless ``neighbors`` is a range (A, B) with 1 <= A <= B; ``written``: the
    range as the user wrote it, for the message."""
    a, b = neighbors
    if not 1 <= a <= b:
        raise SettingError("norm_neighbors", f"must be a range A:B with 1 <= A <= B (e.g. 1:3, or 10:10), got "
                           f"{written or f'{a}:{b}'}")


def check_neighbourhood(neighbors: tuple[int, int], agg: str) -> None:
    """SettingError unless ``neighbors`` is a range (A, B) with 1 <= A <= B and ``agg`` one of :data:`AGGREGATIONS`."""
    check_neighbour_range(neighbors)
    if agg not in AGGREGATIONS:
        raise SettingError("norm_agg", f"must be one of {', '.join(AGGREGATIONS)}, got {agg!r}")


@dataclass(frozen=True)
class ScoreNorm:
    """The training-set score normalisation ``s'(q, r) = s(q, r) − beta · agg(s(q, t_A..t_B))`` (and with
    ``references`` also ``− beta · agg(s(r, t_A..t_B))``), :func:`neighbour_bias` over the training
    descriptors given beside it; checked once, here (a :class:`SettingError` names the setting as
    :meth:`recorded` does).

    The defaults, β = 0.5 and the 10th neighbour alone, scored best on photos (docs/BENCHMARKS.md), above
    SSCD's β = 1, 1st-3rd (``ScoreNorm(1.0, (1, 3))``) and the isc2021 baseline's β = 2, 10th.
    """

    beta: float = 0.5
    neighbors: tuple[int, int] = (10, 10)  # the A-th to B-th nearest training descriptors, 1-based, inclusive
    agg: str = "mean"  # of those similarities, or their "min" (the B-th nearest one's)
    references: bool = False  # also normalise each reference, folded into the search

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and 0 <= self.beta <= MAX_BETA):
            raise SettingError("norm_beta", f"must be a finite number within 0..{MAX_BETA:g}, got {self.beta:g}")
        check_neighbourhood(self.neighbors, self.agg)

    def recorded(self) -> dict[str, object]:
        """The options as isc-search's provenance records them."""
        return {"norm_beta": self.beta, "norm_neighbors": self.neighbors, "norm_agg": self.agg,
                "normalize_references": self.references}


def neighbour_bias(
    descriptors: np.ndarray,
    training: np.ndarray,
    neighbors: tuple[int, int] = (1, 3),
    agg: str = "mean",
    backend: str = "auto",
    quiet: bool = True,
    device: str | None = None,
) -> np.ndarray:
    """Per-descriptor similarity to its training neighbourhood: agg of s(x, t_i) for i in A..B (searched by
    :func:`isc.search.knn.knn` with ``backend`` on ``device``).

    ``neighbors=(A, B)``: the A-th to B-th nearest training descriptors, 1-based and inclusive
    ((1, 3): the three nearest, SSCD's default; (10, 10): the 10th, the isc2021 baseline's).
    ``agg``: ``"mean"`` of those similarities or their ``"min"`` (the B-th nearest one's).
    """
    check_neighbourhood(neighbors, agg)
    a, b = neighbors
    if b > len(training):
        raise InputError(f"neighbour range {a}:{b} needs at least {b} training descriptors, got {len(training)}")
    check_pair(descriptors, training, "query and training")
    similarities = knn(descriptors, training, b, "ip", backend, quiet, device)[0][:, a - 1 : b]
    return (similarities.mean(axis=1) if agg == "mean" else similarities.min(axis=1)).astype(np.float32)


def normalise(
    query: np.ndarray, reference: np.ndarray, training: np.ndarray, norm: ScoreNorm, backend: str = "auto",
    quiet: bool = True, device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`search` searches with ``norm``: (query, reference, query bias [nq]), the score of a pair
    being ``query · reference − query bias``.

    ``query`` [nq, d], ``reference`` [nr, d], ``training`` [nt, d], all L2-normalised. With
    ``norm.references``, query and reference get one more dimension: ``s(q, r) − β·bias(r) =
    [q, 1]·[r, −β·bias(r)]``, so one exact search finds the normalised k best.
    """

    def bias(x: np.ndarray) -> np.ndarray:
        return neighbour_bias(x, training, norm.neighbors, norm.agg, backend, quiet, device)

    query_bias = norm.beta * bias(query)
    if norm.references:
        reference = np.hstack([reference, -norm.beta * bias(reference)[:, None]])
        query = np.hstack([query, np.ones((len(query), 1), dtype=np.float32)])
    return query, reference, query_bias


def pair_query_biases(
    query_ids: list[str], reference_ids: list[str], query_views: tuple[list[str], np.ndarray],
    reference_views: tuple[list[str], np.ndarray], training: np.ndarray, norm: ScoreNorm, backend: str = "auto",
    quiet: bool = True,
) -> np.ndarray:
    """For each pair (``query_ids[i]``, ``reference_ids[i]``): the training bias (:func:`neighbour_bias`, before β)
    of the query view that gives the pair its normalised score ``max over views of s − β · bias``, as the search
    scored it (``query_views``, ``reference_views``: ``(ids, [n, d] L2-normalised rows)``, an id repeated for each
    of its views; the first view wins a tie). What a calibration weighs against the score to choose its own β; only
    for a normalisation of the queries alone (InputError with ``norm.references``)."""
    if norm.references:
        raise InputError("the query bias of a pair is only defined when the references are not normalised")
    (query_rows, queries), (reference_rows, references) = query_views, reference_views
    bias = neighbour_bias(queries, training, norm.neighbors, norm.agg, backend, quiet)
    views, reference_views_of = _positions(query_rows), _positions(reference_rows)
    out = np.zeros(len(query_ids), dtype=np.float64)
    for image, pairs in _positions(query_ids).items():  # a query's views against all its candidates' views at once
        rows = views[image]
        candidate_rows = [reference_views_of[reference_ids[pair]] for pair in pairs]
        scores = queries[rows] @ references[np.concatenate(candidate_rows)].T - norm.beta * bias[rows, None]
        start = 0
        for pair, columns in zip(pairs, candidate_rows, strict=True):
            block = scores[:, start:start + len(columns)]
            start += len(columns)
            out[pair] = bias[rows[int(np.unravel_index(np.argmax(block), block.shape)[0])]]
    return out


def _positions(ids: list[str]) -> dict[str, list[int]]:
    """Each id's positions in ``ids``, in order."""
    positions: dict[str, list[int]] = {}
    for position, image in enumerate(ids):
        positions.setdefault(image, []).append(position)
    return positions
