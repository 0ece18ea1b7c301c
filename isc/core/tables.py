"""The CSV formats: predictions ``query_id,reference_id,score`` (read with or without its header row, as the
organisers write it), ground truth ``query_id,reference_id``, metadata ``image_id,s3_uri,md5_checksum``.

Readers raise :class:`~isc.core.files.InputError` naming the file and the first bad row; writers go through
:func:`~isc.core.files.atomic_path`.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from isc.core.competition import ID_PATTERNS, validate_ids
from isc.core.files import InputError, atomic_path, check_text_file, shown
from isc.core.pairs import Pairs

if TYPE_CHECKING:
    import pandas as pd  # imported where used: descriptor files and extraction work without pandas

_MD5 = re.compile(r"[0-9a-f]{32}")


def read_csv_columns(
    path: str | Path, columns: Sequence[str], what: str, dtype: type | dict[str, type] | None = str,
    header: bool = True,
) -> pd.DataFrame:
    """The ``columns`` of a CSV; ``header=False``: the file has no header row, its fields are ``columns`` in order;
    ``dtype``: of every column (str), of some (a dict), or inferred (None)."""
    import pandas as pd

    check_text_file(path, f"{what} CSV")
    options = {"dtype": dtype} if dtype is not None else {}
    if not header:
        options.update(header=None, names=list(columns))
    try:
        with warnings.catch_warnings():
            # a row with more fields than the header must fail, not turn into an index or be cut
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False, keep_default_na=False, **options)
    except pd.errors.ParserWarning:  # pandas says neither where nor how many: the first row too long, by line
        line, fields = _first_long_row(path, len(columns) if not header else None)
        raise InputError(f"{path}: line {line}: {fields} fields, more than the header's {len(columns)} "
                         f"(not a valid {what} CSV)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid {what} CSV ({str(e).splitlines()[0]})") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file, expected a header {','.join(columns)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} (header is {shown(','.join(df.columns))}; "
            f"a {what} CSV has {','.join(columns)})"
        )
    return df[list(columns)]


def pair_keys(*frames: pd.DataFrame) -> list[np.ndarray]:
    """One int64 per (query_id, reference_id) row of each frame, equal for equal pairs across all the frames
    (ids of any form), for fast joins and duplicate checks."""
    import pandas as pd

    codes = [pd.factorize(pd.concat([f[column] for f in frames], ignore_index=True))
             for column in ("query_id", "reference_id")]
    keys = codes[0][0].astype(np.int64) * max(len(codes[1][1]), 1) + codes[1][0]
    return np.split(keys, np.cumsum([len(f) for f in frames])[:-1])


def _first_long_row(path: str | Path, width: int | None) -> tuple[int, int]:
    """(line number, fields) of the first row with more fields than ``width`` (None: than the header row)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            if width is None and row:
                width = len(row)
            elif row and len(row) > width:
                return reader.line_num, len(row)
    return reader.line_num, width or 0


def _check_non_empty(df: pd.DataFrame, column: str, path: str | Path, first_line: int = 2) -> None:
    """InputError at the first row whose ``column`` is empty (any other text is an id)."""
    empty = (df[column] == "").to_numpy()
    if empty.any():
        raise InputError(f"{path}: line {int(np.flatnonzero(empty)[0]) + first_line}: {column} is empty")


def _first_repeated(keys: np.ndarray) -> tuple[int, int] | None:
    """(row of the first repeated key, row where it first appeared), or None."""
    import pandas as pd

    repeated = pd.Series(keys).duplicated().to_numpy()
    if not repeated.any():
        return None
    row = int(np.flatnonzero(repeated)[0])
    return row, int(np.flatnonzero(keys == keys[row])[0])


PREDICTION_COLUMNS = ("query_id", "reference_id", "score")


def is_prediction_row(fields: Sequence[str]) -> bool:
    """Whether the fields of a CSV row are a prediction (a query id, a reference id and a third field), not a header.

    The organisers' writer (isc2021 ``write_predictions_from_arrays``) writes no header row, so the first
    row of a predictions file is told apart by its content; the score itself is checked with the others.
    """
    return (
        len(fields) == len(PREDICTION_COLUMNS)
        and bool(ID_PATTERNS["query"].fullmatch(fields[0]))
        and bool(ID_PATTERNS["reference"].fullmatch(fields[1]))
    )


def _first_csv_row(path: str | Path) -> list[str]:
    """The fields of the first non-blank line ([] for an empty file), split as the organisers' reader does."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:  # -sig: pandas skips a BOM too
        for line in f:
            if line.strip():
                return line.rstrip("\r\n").split(",")
    return []


def _has_header_row(path: str | Path) -> bool:
    """True when a predictions file starts with a header row (recognised by its column names), False when it
    starts with a prediction; InputError, quoting the row, when it is neither."""
    check_text_file(path, "predictions CSV")
    first = _first_csv_row(path)
    if not first or any(field.strip().strip('"') in PREDICTION_COLUMNS for field in first):
        return True
    if is_prediction_row(first):
        return False
    raise InputError(
        f"{path}: line 1 is neither the header {','.join(PREDICTION_COLUMNS)} nor a prediction row "
        f"(competition query id, reference id, score; other ids need the header row): {shown(','.join(first))}"
    )


def read_predictions(path: str | Path, duplicates: str = "error", max_rows: int | None = None) -> pd.DataFrame:
    """Read a matching-track CSV ``query_id,reference_id,score``, with or without its header row.

    ``duplicates``: ``"error"`` rejects a repeated (query, reference) pair, as the organisers' scorer
    does; ``"keep-best"`` keeps the highest score of each pair and warns. ``max_rows``: refuse a file of
    more rows (:data:`MATCHING_TRACK_MAX_ROWS`, the track's limit, enforced by the organisers' scorer);
    the message says that the commands' row limit can be lifted.
    """
    import pandas as pd

    header = _has_header_row(path)
    first_line = 2 if header else 1  # the file's line number of the first prediction
    # pandas' own type inference is the fast path for the scores; ids stay text ("001" is not 1)
    df = read_csv_columns(path, PREDICTION_COLUMNS, "predictions", dtype={"query_id": str, "reference_id": str},
                          header=header)
    if max_rows is not None and len(df) > max_rows:
        raise InputError(
            f"{path}: {len(df):,} predictions, more than the {max_rows:,} a matching-track file may hold "
            "(the organisers' scorer refuses it: too many predictions); without the row limit it is read anyway"
        )
    for column in ("query_id", "reference_id"):
        _check_non_empty(df, column, path, first_line)
    scores = pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = str(df["score"].iloc[row])
        raise InputError(
            f"{path}: line {row + first_line}: score {shown(value) if value else '(empty)'} is not a finite number"
        )
    df = df.assign(score=scores)
    repeat = _first_repeated(pair_keys(df)[0])
    if repeat is not None:
        row, first = repeat
        pair = f"({df['query_id'].iloc[row]}, {df['reference_id'].iloc[row]})"
        if duplicates == "error":
            raise InputError(
                f"{path}: line {row + first_line}: pair {pair} already at line {first + first_line} (duplicated pair)"
            )
        n_before = len(df)
        df = df.sort_values("score", ascending=False, kind="stable").drop_duplicates(["query_id", "reference_id"])
        df = df.sort_index().reset_index(drop=True)
        warnings.warn(
            f"{path}: {n_before - len(df)} duplicated (query, reference) rows dropped, keeping the best score "
            f"(first at line {row + first_line}, {pair})",
            stacklevel=2,
        )
    return df


def write_rows(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV of a header row and ``rows``, written atomically, quoted and ended as pandas' ``to_csv`` writes it
    (the same bytes), without pandas."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def write_predictions(path: str | Path, predictions: pd.DataFrame | Pairs) -> None:
    """Write a matching-track CSV sorted by decreasing score, equal scores in their order (the bytes pandas'
    ``to_csv`` wrote: scores to 7 significant digits, a missing one empty)."""
    if not isinstance(predictions, Pairs):
        predictions = Pairs.from_frame(predictions)
    order = np.argsort(-predictions.score, kind="stable")
    scores = ("" if np.isnan(score) else f"{score:.7g}" for score in predictions.score[order])
    rows = zip(predictions.query_id[order], predictions.reference_id[order], scores, strict=True)
    write_rows(path, PREDICTION_COLUMNS, rows)


def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """Read a ground-truth CSV: one row per query, ``reference_id`` empty when the query has no match."""
    df = read_csv_columns(path, ("query_id", "reference_id"), "ground-truth")
    df = df.assign(query_id=df["query_id"].str.strip(), reference_id=df["reference_id"].str.strip())
    _check_non_empty(df, "query_id", path)
    repeat = _first_repeated(pair_keys(df)[0])
    if repeat is not None:
        row, first = repeat
        raise InputError(f"{path}: line {row + 2}: pair ({df['query_id'].iloc[row]}, "
                         f"{df['reference_id'].iloc[row] or 'no match'}) already at line {first + 2}")
    return df


def competition_ground_truth(path: str | Path) -> pd.DataFrame:
    """A ground-truth CSV whose ids are the competition's (its queries say their phase)."""
    truth = read_ground_truth(path)
    why = "isc-run scores competition ids"
    validate_ids(truth["query_id"], "query", path, "query id", why)
    validate_ids(truth["reference_id"][truth["reference_id"] != ""], "reference", path, "reference id", why)
    return truth


def write_ground_truth(path: str | Path, ground_truth: pd.DataFrame) -> None:
    """Write a ground-truth CSV (``reference_id`` empty for queries without a match)."""
    with atomic_path(path) as tmp:
        ground_truth[["query_id", "reference_id"]].fillna("").to_csv(tmp, index=False)


def read_metadata(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """Read a metadata CSV ``image_id,s3_uri,md5_checksum`` (the competition's per-split listing)."""
    df = read_csv_columns(path, ("image_id", "s3_uri", "md5_checksum"), "metadata")
    df = df.assign(md5_checksum=df["md5_checksum"].str.strip().str.lower())
    ids = df["image_id"]
    ok = ids.str.fullmatch("|".join(p.pattern for p in ID_PATTERNS.values()))
    if split is not None:
        ok &= ids.str.fullmatch(ID_PATTERNS[split].pattern)
    if not ok.all():
        row = int(np.flatnonzero(~ok.to_numpy())[0])
        expected = f"a {split} id" if split else "an image id"
        raise InputError(f"{path}: line {row + 2}: image_id {shown(ids.iloc[row])} is not {expected}")
    bad_md5 = ~df["md5_checksum"].str.fullmatch(_MD5.pattern)
    if bad_md5.any():
        row = int(np.flatnonzero(bad_md5.to_numpy())[0])
        raise InputError(f"{path}: line {row + 2}: md5_checksum {shown(df['md5_checksum'].iloc[row])} is not 32 hex digits")
    bad_uri = ~df["s3_uri"].str.startswith("s3://")
    if bad_uri.any():
        row = int(np.flatnonzero(bad_uri.to_numpy())[0])
        raise InputError(f"{path}: line {row + 2}: s3_uri {shown(df['s3_uri'].iloc[row])} is not an s3:// address")
    dup = ids.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(f"{path}: line {row + 2}: image_id {ids.iloc[row]} appears more than once")
    return df


def write_metadata(path: str | Path, metadata: pd.DataFrame) -> None:
    """Write a metadata CSV ``image_id,s3_uri,md5_checksum``."""
    with atomic_path(path) as tmp:
        metadata[["image_id", "s3_uri", "md5_checksum"]].to_csv(tmp, index=False)
