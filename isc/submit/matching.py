"""The matching track's submission: :func:`check_matching_csv` finds every violation of a predictions CSV in
one pass (header, row count, ids, phase, scores, repeated pairs); :func:`submit_matching` copies a valid file
byte for byte into place (the header row put first when it has none, as the organisers' scripts write).
Nothing is written unless every check passes.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.competition import (
    ID_DIGITS,
    ID_PREFIX,
    MATCHING_TRACK_MAX_ROWS,
    id_numbers,
)
from isc.core.files import atomic_path, check_text_file, shown
from isc.core.tables import PREDICTION_COLUMNS, is_prediction_row
from isc.submit import violations as rules
from isc.submit.manifest import provenance_records, write_manifest

# ---------------------------------------------------------------------------------- matching track


def _read_raw_csv(path: Path) -> tuple[list[str], list[list[str]], list[int], list[rules.Violation]]:
    """Header ([] if the file is empty), the rows of the header's width with their line numbers, and a
    violation for every other row."""
    raw = path.read_bytes()
    violations = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # go on with the bad bytes replaced, so that the other violations are found too
        line = raw.count(b"\n", 0, e.start) + 1
        violations.append(rules.Violation("not UTF-8", f"bytes that are not UTF-8 text ({e.reason})", line))
        text = raw.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, rows, lines = [], [], []
    try:
        header = next((row for row in reader if row), [])  # blank lines before the header are skipped too
        for row in reader:
            if not row:
                continue  # blank lines are skipped, as pandas (and the organisers' reader) do
            if len(row) == len(header):
                rows.append(row)
                lines.append(reader.line_num)
            else:
                message = f"{len(row)} fields, the header has {len(header)}"
                violations.append(rules.Violation(rules.WRONG_FIELD_COUNT, message, reader.line_num))
    except csv.Error as e:
        violations.append(rules.Violation("unreadable CSV", f"not a valid CSV from here on ({e})", reader.line_num))
    return header, rows, lines, violations


def _per_row(rule: str, mask: np.ndarray, lines: np.ndarray, message: Callable[[int], str]) -> list[rules.Violation]:
    return [rules.Violation(rule, message(i), int(lines[i])) for i in np.flatnonzero(mask)]


def _id_violations(
    values: pd.Series, lines: np.ndarray, split: str, phase: int, expected: np.ndarray | None, source: str
) -> tuple[list[rules.Violation], np.ndarray]:
    """Violations of the ``query_id`` or ``reference_id`` column, and the mask of well-formed ids."""
    column = f"{split}_id"
    numbers, well_formed = id_numbers(values, split)
    lo, hi = rules.id_range(split, phase)
    outside = well_formed & ((numbers < lo) | (numbers > hi))  # never for a well-formed reference id
    unknown = well_formed & ~outside & (False if expected is None else ~np.isin(numbers, expected))
    violations = (
        _per_row(f"malformed {column}", ~well_formed, lines, lambda i: f"{column} {shown(values.iloc[i])} is not a "
                 f"{split} id ({ID_PREFIX[split]} + {ID_DIGITS[split]} digits)")
        + _per_row("query outside the phase", outside, lines, lambda i: f"{column} {values.iloc[i]} is not a "
                   f"phase-{phase} query ({rules.phase_range_text(phase)})")
        + _per_row(f"unknown {column}", unknown, lines, lambda i: f"{column} {values.iloc[i]} is not in {source}")
    )
    return violations, well_formed


def check_matching_csv(
    path: str | Path,
    phase: int,
    expected_queries: Sequence[str] | None = None,
    expected_references: Sequence[str] | None = None,
    expected_sources: tuple[str, str] = ("the expected queries", "the expected references"),
) -> tuple[pd.DataFrame, list[rules.Violation]]:
    """Every violation of a matching-track CSV, by line, and its rows (``score`` float, NaN where unreadable).

    Rules: the header is exactly ``query_id,reference_id,score``, or absent (the first row a prediction, as
    the organisers' isc2021 writer makes the file); every row has its three fields; at
    least one and at most :data:`~isc.core.competition.MATCHING_TRACK_MAX_ROWS` rows; ids well formed; query ids of
    ``phase`` (and of ``expected_queries`` when given); reference ids of ``expected_references`` when
    given; finite scores; no (query, reference) pair twice.
    """
    rules.check_phase(phase)
    path = Path(path)
    check_text_file(path, "predictions CSV")
    header, rows, lines, violations = _read_raw_csv(path)
    if not header:
        message = f"empty file, expected the header {','.join(PREDICTION_COLUMNS)}"
        return pd.DataFrame(columns=list(PREDICTION_COLUMNS)), [*violations, rules.Violation("empty file", message)]
    if header != list(PREDICTION_COLUMNS) and is_prediction_row(header):
        # no header row, as the organisers' writer makes them: the first row is a prediction
        rows, lines, header = [header, *rows], [1, *lines], list(PREDICTION_COLUMNS)
    n_rows = len(rows) + sum(v.rule == rules.WRONG_FIELD_COUNT for v in violations)
    if header != list(PREDICTION_COLUMNS):
        message = (f"header is {shown(','.join(header))}, expected exactly {','.join(PREDICTION_COLUMNS)!r} "
                   "(or no header row, the file starting with a prediction)")
        violations.append(rules.Violation("header", message, 1))
    if n_rows > MATCHING_TRACK_MAX_ROWS:
        message = f"{n_rows:,} predictions, the matching track allows at most {MATCHING_TRACK_MAX_ROWS:,}"
        violations.append(rules.Violation("too many rows", message))
    if n_rows == 0:
        violations.append(rules.Violation("no predictions", "no predictions (the file has a header only)"))
    # a misspelt or reordered header is reported above; the columns found are still checked row by row
    names = [name.strip() for name in header]
    found = {name: names.index(name) for name in PREDICTION_COLUMNS if name in names}
    df = pd.DataFrame({name: pd.Series([row[i] for row in rows], dtype=object) for name, i in found.items()})
    line_numbers = np.asarray(lines, dtype=np.int64)
    usable = np.full(len(df), "query_id" in df and "reference_id" in df)
    for split, expected, source in (("query", expected_queries, expected_sources[0]),
                                    ("reference", expected_references, expected_sources[1])):
        if f"{split}_id" in df:
            numbers = None if expected is None else rules.expected_numbers(split, phase, expected)
            found_violations, well_formed = _id_violations(
                df[f"{split}_id"], line_numbers, split, phase, numbers, source)
            violations += found_violations
            usable &= well_formed
    if "score" in df:
        scores = pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=np.float64)
        violations += _per_row("score not a finite number", ~np.isfinite(scores), line_numbers,
                               lambda i: f"score {shown(df['score'].iloc[i])} is not a finite number")
        df["score"] = scores
    pairs = df.loc[usable, ["query_id", "reference_id"]] if usable.any() else pd.DataFrame()
    if len(pairs):
        pair_lines = line_numbers[usable]
        first = pairs.assign(line=pair_lines).groupby(["query_id", "reference_id"], sort=False)["line"]
        first_line = first.transform("first").to_numpy()
        violations += _per_row("duplicated pair", first_line != pair_lines, pair_lines,
                               lambda i: f"pair ({pairs['query_id'].iloc[i]}, {pairs['reference_id'].iloc[i]}) "
                               f"already at line {first_line[i]}")
    violations.sort(key=lambda v: v.line or 0)  # stable: file-level first, then by line
    return df, violations


def submit_matching(
    predictions: str | Path,
    phase: int,
    out: str | Path,
    expected_queries: str | Path | None = None,
    expected_references: str | Path | None = None,
    provenance: Sequence[str | Path] = (),
    max_listed: int = 20,
) -> Path:
    """Check a matching-track CSV and copy it, byte for byte, to ``out`` with its manifest; returns ``out``.

    A file without a header row (as the organisers' isc2021 scripts write them) gets the header put first,
    the manifest saying so (``header_added``). Raises :class:`rules.SubmissionError` listing every violation, and writes nothing, when it is invalid.
    ``expected_queries``/``expected_references``: a metadata CSV or a list of ids the ids must belong to.
    ``provenance``: JSON or descriptor files whose content or attributes the manifest records (default:
    the sidecar ``<predictions>.provenance.json`` when there is one).
    """
    predictions, out = Path(predictions), Path(out)
    df, violations = check_matching_csv(
        predictions, phase,
        None if expected_queries is None else rules.read_expected_ids(expected_queries, "query"),
        None if expected_references is None else rules.read_expected_ids(expected_references, "reference"),
        (str(expected_queries), str(expected_references)),
    )
    if violations:
        raise rules.SubmissionError(predictions, violations, max_listed)
    records = provenance_records(predictions, provenance)
    with atomic_path(out) as tmp:
        header_added = _copy_with_header(predictions, tmp)
    write_manifest(out, {
        "track": "matching",
        "phase": phase,
        "counts": {"predictions": len(df), "queries": int(df["query_id"].nunique()),
                   "references": int(df["reference_id"].nunique())},
        "source": str(predictions),
        "header_added": header_added,
        "provenance": records,
    })
    return out


def _copy_with_header(source: Path, target: Path) -> bool:
    """Copy a valid matching CSV, the header row put first when it starts with a prediction; True if it did."""
    with open(source, "rb") as f:
        # the first line ends at CR, LF or CRLF (a CR-only file is valid CSV, as pandas and csv read it)
        first = (f.read(1 << 16).splitlines(keepends=True) or [b""])[0]
    header_added = is_prediction_row(next(csv.reader([first.decode("utf-8", errors="replace").rstrip("\r\n")]), []))
    if not header_added:
        shutil.copyfile(source, target)
        return False
    newline = first[len(first.rstrip(b"\r\n")):] or b"\n"  # the file's own line ending
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.write(",".join(PREDICTION_COLUMNS).encode("ascii") + newline)
        shutil.copyfileobj(src, dst)
    return True
