"""Scored pairs of images as plain arrays (:class:`Pairs`): what the search gives isc-find and isc-search, and
what their outputs are written from, without pandas (whose import alone was a sixth of a small isc-find run:
docs/BENCHMARKS.md). :meth:`Pairs.to_frame` makes the table where a caller wants one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def id_ranks(ids: Sequence[str]) -> np.ndarray:
    """Each id's rank in sorted order: pairs tied at a cut are kept by id, whatever the files' order."""
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[np.argsort(np.asarray(ids, dtype=object), kind="stable")] = np.arange(len(ids))
    return ranks


def id_codes(ids: np.ndarray) -> np.ndarray:
    """Each id's position among the distinct ids sorted [n] int64: equal ids share one, a smaller id has a smaller
    one (ids compared as Python compares them, as a table sorted by id orders them)."""
    distinct = sorted(set(ids.tolist()))
    position = dict(zip(distinct, range(len(distinct)), strict=True))
    return np.fromiter((position[i] for i in ids.tolist()), dtype=np.int64, count=len(ids))


def pair_codes(query_codes: np.ndarray, reference_codes: np.ndarray) -> np.ndarray:
    """One int64 code per (query code, reference code) row [n]: equal for the rows of one pair, ordered by query
    code then reference code (:func:`id_codes` of each side)."""
    return query_codes * (int(reference_codes.max(initial=0)) + 1) + reference_codes


def group_ranks(codes: np.ndarray) -> np.ndarray:
    """Each row's position among the rows before it of the same code [n] int64 (0 for a code's first row)."""
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(codes) else np.zeros(0, np.int64)
    ranks = np.empty(len(codes), dtype=np.int64)
    ranks[order] = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    return ranks


def _texts(values: Sequence[str] | np.ndarray) -> np.ndarray:
    array = np.empty(len(values), dtype=object)  # never a 2-D array of characters, whatever the ids
    array[:] = list(values)
    return array


@dataclass(frozen=True)
class Pairs:
    """(query, reference, score) rows as arrays of one length: ``query_id`` and ``reference_id`` (object: str),
    ``score`` (float64), and isc-find's ``exact`` on its matches (``"bytes"``, ``"pixels"`` or ``""``).
    A column is read by name as a table's is: ``pairs["score"]``."""

    query_id: np.ndarray
    reference_id: np.ndarray
    score: np.ndarray
    exact: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "query_id", _texts(self.query_id))
        object.__setattr__(self, "reference_id", _texts(self.reference_id))
        object.__setattr__(self, "score", np.asarray(self.score, dtype=np.float64).reshape(-1))
        if self.exact is not None:
            object.__setattr__(self, "exact", _texts(self.exact))
        if len({len(getattr(self, name)) for name in self.columns}) > 1:
            raise ValueError(f"pairs' columns differ in length: {[len(getattr(self, n)) for n in self.columns]}")

    @property
    def columns(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __len__(self) -> int:
        return len(self.score)

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in self.columns:
            raise KeyError(column)
        return getattr(self, column)

    def take(self, rows: np.ndarray) -> Pairs:
        """The rows ``rows`` (positions, or a boolean mask), in that order."""
        return Pairs(*(None if (values := getattr(self, f.name)) is None else values[rows] for f in fields(self)))

    def ranked(self) -> Pairs:
        """By decreasing score, equal scores by query id then reference id (an order every machine agrees on)."""
        return self.take(np.lexsort((id_codes(self.reference_id), id_codes(self.query_id), -self.score)))

    def to_frame(self) -> pd.DataFrame:
        """A DataFrame of the columns, in order."""
        import pandas as pd  # here: a table only for the callers that want one

        return pd.DataFrame({name: getattr(self, name) for name in self.columns})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Pairs:
        """The pairs of a DataFrame with the columns ``query_id, reference_id, score`` (and ``exact``)."""
        return cls(frame["query_id"].to_numpy(object), frame["reference_id"].to_numpy(object),
                   frame["score"].to_numpy(np.float64), frame["exact"].to_numpy(object) if "exact" in frame else None)
