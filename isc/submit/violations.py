"""A submission's violations of the rules, gathered and reported together (:class:`SubmissionError`), and the
ids a phase expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.competition import (
    PHASE_QUERY_RANGES,
    id_numbers,
    validate_ids,
)
from isc.core.files import InputError, check_text_file
from isc.core.tables import read_metadata

REFERENCE_RANGE = (0, 999_999)
EXAMPLES = 5  # ids quoted in an aggregated violation
WRONG_FIELD_COUNT = "wrong number of fields"


# ---------------------------------------------------------------------------------------- violations


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``rule`` groups violations for counting; ``line`` (of a CSV) or ``where`` locates it."""

    rule: str
    message: str
    line: int | None = None
    where: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else self.where
        return f"{where}: {self.message}" if where else self.message


class SubmissionError(InputError):
    """A submission that breaks the rules; ``violations`` lists them all."""

    def __init__(self, source: str | Path, violations: Sequence[Violation], max_listed: int = 20) -> None:
        self.source = str(source)
        self.violations = list(violations)
        super().__init__(format_violations(self.source, self.violations, max_listed))


def format_violations(source: str, violations: Sequence[Violation], max_listed: int = 20) -> str:
    """A header line then one violation a line; beyond ``max_listed`` (0: no limit) a count per rule.

    The first violation of every rule is always listed, so a long run of one rule cannot hide another.
    """
    n = len(violations)
    listed = range(n)
    if 0 < max_listed < n:
        first_of_rule = {}
        for i, v in enumerate(violations):
            first_of_rule.setdefault(v.rule, i)
        chosen = set(first_of_rule.values())
        chosen.update(i for i in range(n) if len(chosen) < max_listed and i not in chosen)
        listed = sorted(chosen)
    lines = [f"{source}: {n} violation{'s' if n != 1 else ''}, nothing written"]
    lines += [f"  {violations[i]}" for i in listed]
    if len(listed) < n:
        shown = set(listed)
        skipped = pd.Series([v.rule for i, v in enumerate(violations) if i not in shown]).value_counts()
        counts = ", ".join(f"{rule}: {count}" for rule, count in skipped.items())
        lines.append(f"  ... and {n - len(listed)} more ({counts})")
    return "\n".join(lines)


def phase_range_text(phase: int) -> str:
    lo, hi = PHASE_QUERY_RANGES[phase]
    return f"Q{lo:05d}–Q{hi:05d}"


def check_phase(phase: int) -> None:
    if phase not in PHASE_QUERY_RANGES:
        raise InputError(f"phase must be one of {', '.join(map(str, PHASE_QUERY_RANGES))}, got {phase}")


def id_range(split: str, phase: int) -> tuple[int, int]:
    """The id numbers a submission of ``phase`` may hold for ``split``."""
    return PHASE_QUERY_RANGES[phase] if split == "query" else REFERENCE_RANGE


def quoted_examples(ids: Sequence[str] | np.ndarray) -> str:
    shown = ", ".join(str(i) for i in ids[:EXAMPLES])
    return shown + (", ..." if len(ids) > EXAMPLES else "")


# ---------------------------------------------------------------------------------- expected ids


def read_expected_ids(path: str | Path, split: str) -> list[str]:
    """Ids a submission must cover: a metadata CSV (``image_id,...``) or a text file of one id a line."""
    path = Path(path)
    check_text_file(path, "list of ids")
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    if first.split(",")[0] == "image_id":
        return read_metadata(path, split=split)["image_id"].tolist()
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    ids = [line.strip() for line in lines if line.strip()]
    validate_ids(ids, split, path)
    return ids


def expected_numbers(split: str, phase: int, ids: Sequence[str] | None) -> np.ndarray:
    """Sorted id numbers a submission of ``phase`` must cover: the competition's, or those of ``ids``.

    Query ids of other phases in ``ids`` are left out (a dataset's query list may hold both phases).
    """
    lo, hi = id_range(split, phase)
    if ids is None:
        return np.arange(lo, hi + 1)
    numbers = np.unique(id_numbers(list(ids), split)[0])
    return numbers[(numbers >= lo) & (numbers <= hi)]
