"""Matching queries against references: :func:`search` turns descriptors into the matching track's
predictions (score normalisation, best view of each image with crops, self-matches left out);
:func:`search_files` does it over descriptor files of one model and records what it did beside the CSV. The
nearest-neighbour search itself is :mod:`isc.search.knn`'s.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from isc.core.competition import MATCHING_TRACK_MAX_ROWS, PHASE_QUERY_RANGES, query_phase, validate_ids
from isc.core.descriptors import (
    VIEW_ATTRIBUTES,
    model_attributes,
    model_differences,
    provenance,
    provenance_path,
    read_descriptors,
)
from isc.core.distributed import check_device
from isc.core.files import InputError, SettingError, write_json
from isc.core.pairs import Pairs, group_ranks, id_codes, id_ranks, pair_codes
from isc.core.tables import write_predictions
from isc.search.knn import (
    BACKENDS,
    build_index,
    check_pair,
    clamp_k,
    index_search,
    knn,
    recall_against_exact,
)
from isc.search.normalisation import ScoreNorm, normalise
from isc.search.vectors import prepare_descriptors

if TYPE_CHECKING:
    # imported where used: neighbour_bias runs on GPU machines (gpu_check) that have no pandas
    import pandas as pd
DEFAULT_K = 10  # references kept per query, by isc-search and isc-run alike

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchOptions:
    """How :func:`search` matches queries against references; checked once, here.

    ``k`` references kept per query, the best ``max_results`` pairs over all queries; ``backend``: the
    nearest-neighbour search's (:data:`isc.search.knn.BACKENDS`); ``norm``: the score normalisation, applied
    when training descriptors are given; ``index``: a FAISS index string for an approximate search, ``nprobe``
    lists visited, its recall against the exact search measured on ``recall_queries`` queries. ``device``: where
    the torch backend searches (``cpu``, ``cuda`` or ``cuda:N``; default: cuda when available), the one given, not
    the one an extraction before it left current.
    """

    k: int = DEFAULT_K
    max_results: int = MATCHING_TRACK_MAX_ROWS
    backend: str = "auto"
    norm: ScoreNorm = ScoreNorm()
    index: str | None = None
    nprobe: int = 16
    recall_queries: int = 1000
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("k", "max_results", "nprobe", "recall_queries"):
            if getattr(self, name) < 1:
                raise SettingError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r} (choose from {', '.join(BACKENDS)})")
        check_device(self.device)

    def recorded(self) -> dict[str, object]:
        """The options as the provenance of a predictions file records them."""
        return {"k": self.k, "max_results": self.max_results, "backend": self.backend, "index": self.index,
                "nprobe": self.nprobe, **self.norm.recorded()}


def search(
    query_ids: list[str],
    query: np.ndarray,
    reference_ids: list[str],
    reference: np.ndarray,
    options: SearchOptions = SearchOptions(),
    **settings: object,
) -> pd.DataFrame:
    """:func:`search_pairs`' predictions as a DataFrame ``query_id, reference_id, score`` sorted by decreasing
    score, the approximate index's recall in ``attrs["recall"]`` (None for an exact search)."""
    pairs, recall = search_pairs(query_ids, query, reference_ids, reference, options, **settings)
    result = pairs.to_frame()
    result.attrs["recall"] = recall
    return result


def search_pairs(
    query_ids: list[str],
    query: np.ndarray,
    reference_ids: list[str],
    reference: np.ndarray,
    options: SearchOptions = SearchOptions(),
    *,
    training: np.ndarray | None = None,
    exclude_self: bool = False,
    quiet: bool = False,
    **settings: object,
) -> tuple[Pairs, float | None]:
    """Matching-track predictions: each query's ``k`` best references, the best ``max_results`` kept, as
    ``options`` (:class:`SearchOptions`) says, its fields overridden by ``settings``.

    ``query_ids`` [nq] and ``query`` [nq, d], ``reference_ids`` [nr] and ``reference`` [nr, d]; scores are
    inner products of L2-normalised descriptors. With ``training`` [nt, d], the scores are normalised by
    ``norm`` (:class:`ScoreNorm`); with ``norm.references`` the references' part is folded into the search
    (an extra dimension) so that each query's k best are those of the normalised score. ``index``: a FAISS
    index string for an approximate search (``"IVF1024,Flat"``, ``"IVF1024,PQ32"``, ``nprobe`` lists
    visited), trained on ``training`` when given, else on the references; its recall against the exact
    search, on ``recall_queries`` queries, is reported on stderr and returned (None for an exact search).
    A query id may repeat: its rows are views of one query (crops, scales), each normalised on its own,
    and a (query, reference) pair scores its best view's score, once; the query keeps its ``k`` best
    references over all its views. A reference id may repeat too (reference views, each normalised on its
    own): a pair then scores its best (query view, reference view), and each query view is searched
    ``k`` × (most views of one reference) deep, so that it still finds its ``k`` best distinct references.
    ``exclude_self``: queries and references are the same images (a folder searched against itself): a pair
    of an id with itself is left out, each query keeping ``k`` others.
    Returns (the pairs sorted by decreasing score, equal scores by query id then reference id; the recall).
    """
    options = replace(options, **settings)
    norm, backend, index = options.norm, options.backend, options.index
    if len(query_ids) != len(query) or len(reference_ids) != len(reference):
        raise InputError("ids and descriptors differ in length")
    query = prepare_descriptors(query, "query")
    reference = prepare_descriptors(reference, "reference")
    check_pair(query, reference)
    distinct_ids, reference_of_row = view_groups(reference_ids)
    k = clamp_k(options.k, len(distinct_ids) - exclude_self, "references")
    views = int(np.bincount(reference_of_row).max())
    searched = k + exclude_self  # one more, in place of the query itself
    depth = min(searched * views, len(reference))  # that many distinct references lie within these best rows
    query_bias = np.zeros(len(query), dtype=np.float32)
    if training is not None:
        training = prepare_descriptors(training, "training")
        query, reference, query_bias = normalise(query, reference, training, norm, backend, quiet, options.device)
    elif norm.references:
        raise InputError("normalize_references needs training descriptors")

    recall = None
    if index is None:
        scores, indices = knn(query, reference, depth, "ip", backend, quiet, options.device)
    else:
        train = reference if training is None or norm.references else training
        scores, indices = index_search(build_index(index, reference, train, options.nprobe), query, depth, quiet)
        sample = np.linspace(0, len(query) - 1, min(options.recall_queries, len(query))).astype(int)
        recall = recall_against_exact(indices[sample], knn(query[sample], reference, depth, "ip", backend,
                                                           device=options.device)[1])
        log.info("index %s (nprobe %d): recall@%d against exact search %.4f on %d queries",
                 index, options.nprobe, depth, recall, len(sample))
    scores = scores - query_bias[:, None]
    if views > 1:
        scores, indices = best_reference_views(scores, indices, reference_of_row, searched)
        reference_ids = distinct_ids
    if exclude_self:
        scores, indices = drop_self_matches(query_ids, reference_ids, scores, indices, k)
    if len(set(query_ids)) < len(query_ids):
        result = best_view_pairs(top_pairs(query_ids, reference_ids, scores, indices, scores.size), k,
                                 options.max_results)
    else:
        result = top_pairs(query_ids, reference_ids, scores, indices, options.max_results)
    return result, recall


def view_groups(ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(the distinct ids in the order of their first row, each row's position among them [n] int64): the
    rows of one id are views of one image."""
    position = dict(zip(ids, range(len(ids)), strict=True))
    if len(position) == len(ids):  # distinct ids, the usual case: one row each, in order
        return list(position), np.arange(len(ids), dtype=np.int64)
    position = {}
    rows = np.fromiter((position.setdefault(i, len(position)) for i in ids), dtype=np.int64, count=len(ids))
    return list(position), rows


def best_reference_views(
    scores: np.ndarray, indices: np.ndarray, reference_of_row: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query row, its ``k`` best distinct references, each scored by its best view: (scores [nq, k],
    reference positions [nq, k], -1 and -inf where fewer were found), from the rows ``indices`` [nq, depth]
    and their ``scores`` of a search among reference views whose reference is ``reference_of_row``."""
    order = np.argsort(-scores, axis=1, kind="stable")  # best view first, whatever the backend's order
    scores, indices = np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)
    references = np.where(indices >= 0, reference_of_row[np.maximum(indices, 0)], -1)
    # the first (best) column of each reference in its row: stable sort by reference, compare neighbours
    by_reference = np.argsort(references, axis=1, kind="stable")
    grouped = np.take_along_axis(references, by_reference, 1)
    first_sorted = np.ones(grouped.shape, dtype=bool)
    first_sorted[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, by_reference, first_sorted, 1)
    keep = first & (references >= 0)
    keep &= np.cumsum(keep, axis=1) <= k
    columns = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # the kept columns, still best first
    kept = np.take_along_axis(keep, columns, 1)
    return (np.where(kept, np.take_along_axis(scores, columns, 1), -np.inf).astype(np.float32),
            np.where(kept, np.take_along_axis(references, columns, 1), -1))


def drop_self_matches(
    query_ids: list[str], reference_ids: list[str], scores: np.ndarray, indices: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query results [n, k + 1] less each query's pair with its own id (else its last one): [n, k]."""
    found = np.asarray(reference_ids, dtype=object)[np.maximum(indices, 0)]
    is_self = (found == np.asarray(query_ids, dtype=object)[:, None]) & (indices >= 0)
    first_self = np.where(is_self.any(axis=1), is_self.argmax(axis=1), indices.shape[1] - 1)
    keep = np.ones(indices.shape, dtype=bool)
    keep[np.arange(len(indices)), first_self] = False
    return scores[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def top_pairs(
    query_ids: list[str], reference_ids: list[str], scores: np.ndarray, indices: np.ndarray, max_results: int
) -> Pairs:
    """The ``max_results`` best (query, reference, score) of per-query results, by decreasing score; equal
    scores by query id, then reference id, so which pairs tied at the cut are kept is defined."""
    rows, cols = np.nonzero(indices >= 0)
    flat = scores[rows, cols]
    if len(flat) > max_results:
        keep = np.flatnonzero(flat >= np.partition(flat, len(flat) - max_results)[len(flat) - max_results])
        rows, cols, flat = rows[keep], cols[keep], flat[keep]
    order = np.lexsort((id_ranks(reference_ids)[indices[rows, cols]], id_ranks(query_ids)[rows], -flat))
    order = order[:max_results]
    rows, cols, flat = rows[order], cols[order], flat[order]
    return Pairs(np.asarray(query_ids, dtype=object)[rows], np.asarray(reference_ids, dtype=object)[indices[rows, cols]],
                 flat)


def best_view_pairs(pairs: Pairs, k: int, max_results: int) -> Pairs:
    """Of pairs sorted by decreasing score whose query ids repeat (views): each pair's best score, each
    query's ``k`` best references, the ``max_results`` best pairs."""
    query, reference = id_codes(pairs.query_id), id_codes(pairs.reference_id)
    first = np.sort(np.unique(pair_codes(query, reference), return_index=True)[1])
    return pairs.take(first[group_ranks(query[first]) < k][:max_results])


# ------------------------------------------------------------------------------------- descriptor files


def phase_queries(query_ids: list[str], query: np.ndarray, phase: int, source: str | Path) -> tuple[list[str], np.ndarray]:
    """The ids and descriptors of the queries of a competition phase; InputError when there are none or when
    an id is not a competition query id."""
    if phase not in PHASE_QUERY_RANGES:
        raise InputError(f"phase must be one of {', '.join(map(str, PHASE_QUERY_RANGES))}, got {phase}")
    validate_ids(query_ids, "query", source, why=PHASE_RULE)
    keep = np.array([query_phase(i) == phase for i in query_ids], dtype=bool)
    if not keep.any():
        lo, hi = PHASE_QUERY_RANGES[phase]
        raise InputError(f"{source}: none of its {len(query_ids)} queries is a phase-{phase} query "
                         f"(Q{lo:05d}-Q{hi:05d})")
    return [i for i, kept in zip(query_ids, keep, strict=True) if kept], query[keep]


PHASE_RULE = "a phase applies the competition's id rules"


def same_images(query: str | Path, query_attrs: dict[str, object], reference: str | Path,
                reference_attrs: dict[str, object]) -> bool:
    """Whether a query and a reference descriptor file describe the same images (a folder searched against
    itself): the same file, or files extracted from the same ``source`` folder."""
    if Path(query).resolve() == Path(reference).resolve():
        return True
    source = query_attrs.get("source")
    return bool(source) and source == reference_attrs.get("source")


def check_same_model(files: Sequence[tuple[str | Path, dict[str, object]]], ignore: Sequence[str] = ()) -> None:
    """Refuse descriptor files (path, attributes) made by different models, by the rule of
    :func:`isc.core.descriptors.model_differences` (every attribute but the per-run ones and ``ignore``); a file with
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
        differences = model_differences(first_attrs, attrs, ignore)
        if differences:
            raise InputError(f"{first} and {path} were not made by the same model ({first} != {path}): "
                             + "; ".join(differences))


def search_files(
    query: str | Path,
    reference: str | Path,
    output: str | Path,
    training: str | Path | None = None,
    options: SearchOptions = SearchOptions(),
    *,
    phase: int | None = None,
    ignore_attributes: Sequence[str] = (),
    quiet: bool = False,
    **settings: object,
) -> tuple[Pairs, dict[str, object]]:
    """:func:`search_pairs` over descriptor files: writes the predictions CSV ``output`` and its provenance sidecar,
    and returns both (the pairs, the record).

    ``phase``: keep only that phase's queries. Query and reference rows may be several views of each image
    (a file with the attribute ``views_per_id``), each pair scored by its best two views. The files must come from the
    same model (:func:`check_same_model`). ``options`` and ``settings``: as :func:`search` takes them. The
    sidecar ``<output>.provenance.json``, which isc-submit records in the submission's manifest, holds the
    options, each input's path, size, rows and images searched and model attributes, and the toolkit version;
    it is also the record returned.
    """
    options = replace(options, **settings)
    paths = {"query": query, "reference": reference, **({"training": training} if training is not None else {})}
    files = {split: read_descriptors(path, views=split != "training") for split, path in paths.items()}
    query_ids, query_x, _ = files["query"]
    if phase is not None:
        query_ids, query_x = phase_queries(query_ids, query_x, phase, query)
        files["query"] = query_ids, query_x, files["query"][2]
        for split in list(files)[1:]:
            validate_ids(files[split][0], split, paths[split], why=PHASE_RULE)
    for split in list(files)[1:]:  # reference, training: a clearer message than "dimension: a != b" below
        check_pair(query_x, files[split][1], f"query and {split}")
    # views (crops, grid views) of the queries or references are made by the same model: not a model difference
    check_same_model([(paths[split], attrs) for split, (_, _, attrs) in files.items()],
                     [*ignore_attributes, *VIEW_ATTRIBUTES])
    reference_ids, reference_x, _ = files["reference"]
    training_x = files["training"][1] if "training" in files else None
    exclude_self = same_images(query, files["query"][2], reference, files["reference"][2])
    predictions, recall = search_pairs(query_ids, query_x, reference_ids, reference_x, options, training=training_x,
                                       exclude_self=exclude_self, quiet=quiet)
    record = provenance(
        command="isc-search",
        options={**options.recorded(), "phase": phase, "ignore_attributes": list(ignore_attributes),
                 "exclude_self": exclude_self},
        inputs={split: {"path": str(Path(path).resolve()), "bytes": Path(path).stat().st_size,
                        "rows": len(files[split][0]), "images": len(set(files[split][0])),
                        "model_attributes": model_attributes(files[split][2])} for split, path in paths.items()},
        predictions={"rows": len(predictions), "queries": len(set(predictions.query_id))},
        recall=recall,
    )
    sidecar = provenance_path(output)
    sidecar.unlink(missing_ok=True)  # a crash between the two writes must not leave an older run's record
    write_predictions(output, predictions)
    write_json(sidecar, record)
    return predictions, record
