"""Competition submissions: check and write the files to upload, for both tracks and phases.

- matching track: :func:`check_matching_csv` finds every violation of a predictions CSV in one pass
  (header, row count, ids, phase, scores, repeated pairs); :func:`submit_matching` copies a valid file
  byte for byte into place (the header row put first when it has none, as the organisers' scripts write);
- descriptor track: :func:`check_descriptor_submission` checks a query and a reference descriptor file
  (phase, dimensions, complete coverage of the expected ids, the same model on both sides, and in phase
  2 the reuse of the phase-1 references); :func:`submit_descriptors` writes the official HDF5 and reads
  it back, and on request the organisers' per-split files (:func:`write_split_files`);
  :func:`isc.metrics.score_descriptor_track` scores it as the organisers did;
- every submission gets a manifest ``<file>.manifest.json`` (:mod:`isc.manifest`): md5, counts,
  provenance, command, version.

Nothing is written unless every check passes; :class:`SubmissionError` carries all the violations.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from isc.io import (
    DESCRIPTOR_LAYOUTS,
    DESCRIPTOR_TRACK_MAX_DIM,
    ID_DIGITS,
    ID_PREFIX,
    MATCHING_TRACK_MAX_ROWS,
    PHASE_QUERY_RANGES,
    PREDICTION_COLUMNS,
    DescriptorFile,
    InputError,
    atomic_path,
    check_text_file,
    file_digest,
    id_numbers,
    image_id,
    is_prediction_row,
    model_differences,
    read_descriptor_attrs,
    read_descriptor_track,
    read_metadata,
    shown,
    validate_ids,
    write_descriptor_track,
)
from isc.manifest import provenance_records, read_manifest, write_manifest

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


def _phase_range_text(phase: int) -> str:
    lo, hi = PHASE_QUERY_RANGES[phase]
    return f"Q{lo:05d}–Q{hi:05d}"


def _check_phase(phase: int) -> None:
    if phase not in PHASE_QUERY_RANGES:
        raise InputError(f"phase must be one of {', '.join(map(str, PHASE_QUERY_RANGES))}, got {phase}")


def _id_range(split: str, phase: int) -> tuple[int, int]:
    """The id numbers a submission of ``phase`` may hold for ``split``."""
    return PHASE_QUERY_RANGES[phase] if split == "query" else REFERENCE_RANGE


def _examples(ids: Sequence[str] | np.ndarray) -> str:
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
    lo, hi = _id_range(split, phase)
    if ids is None:
        return np.arange(lo, hi + 1)
    numbers = np.unique(id_numbers(list(ids), split)[0])
    return numbers[(numbers >= lo) & (numbers <= hi)]


# ---------------------------------------------------------------------------------- matching track


def _read_raw_csv(path: Path) -> tuple[list[str], list[list[str]], list[int], list[Violation]]:
    """Header ([] if the file is empty), the rows of the header's width with their line numbers, and a
    violation for every other row."""
    raw = path.read_bytes()
    violations = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # go on with the bad bytes replaced, so that the other violations are found too
        line = raw.count(b"\n", 0, e.start) + 1
        violations.append(Violation("not UTF-8", f"bytes that are not UTF-8 text ({e.reason})", line))
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
                violations.append(Violation(WRONG_FIELD_COUNT, message, reader.line_num))
    except csv.Error as e:
        violations.append(Violation("unreadable CSV", f"not a valid CSV from here on ({e})", reader.line_num))
    return header, rows, lines, violations


def _per_row(rule: str, mask: np.ndarray, lines: np.ndarray, message: Callable[[int], str]) -> list[Violation]:
    return [Violation(rule, message(i), int(lines[i])) for i in np.flatnonzero(mask)]


def _id_violations(
    values: pd.Series, lines: np.ndarray, split: str, phase: int, expected: np.ndarray | None, source: str
) -> tuple[list[Violation], np.ndarray]:
    """Violations of the ``query_id`` or ``reference_id`` column, and the mask of well-formed ids."""
    column = f"{split}_id"
    numbers, well_formed = id_numbers(values, split)
    lo, hi = _id_range(split, phase)
    outside = well_formed & ((numbers < lo) | (numbers > hi))  # never for a well-formed reference id
    unknown = well_formed & ~outside & (False if expected is None else ~np.isin(numbers, expected))
    violations = (
        _per_row(f"malformed {column}", ~well_formed, lines, lambda i: f"{column} {shown(values.iloc[i])} is not a "
                 f"{split} id ({ID_PREFIX[split]} + {ID_DIGITS[split]} digits)")
        + _per_row("query outside the phase", outside, lines, lambda i: f"{column} {values.iloc[i]} is not a "
                   f"phase-{phase} query ({_phase_range_text(phase)})")
        + _per_row(f"unknown {column}", unknown, lines, lambda i: f"{column} {values.iloc[i]} is not in {source}")
    )
    return violations, well_formed


def check_matching_csv(
    path: str | Path,
    phase: int,
    expected_queries: Sequence[str] | None = None,
    expected_references: Sequence[str] | None = None,
    expected_sources: tuple[str, str] = ("the expected queries", "the expected references"),
) -> tuple[pd.DataFrame, list[Violation]]:
    """Every violation of a matching-track CSV, by line, and its rows (``score`` float, NaN where unreadable).

    Rules: the header is exactly ``query_id,reference_id,score``, or absent (the first row a prediction, as
    the organisers' isc2021 writer makes the file); every row has its three fields; at
    least one and at most :data:`~isc.io.MATCHING_TRACK_MAX_ROWS` rows; ids well formed; query ids of
    ``phase`` (and of ``expected_queries`` when given); reference ids of ``expected_references`` when
    given; finite scores; no (query, reference) pair twice.
    """
    _check_phase(phase)
    path = Path(path)
    check_text_file(path, "predictions CSV")
    header, rows, lines, violations = _read_raw_csv(path)
    if not header:
        message = f"empty file, expected the header {','.join(PREDICTION_COLUMNS)}"
        return pd.DataFrame(columns=list(PREDICTION_COLUMNS)), [*violations, Violation("empty file", message)]
    if header != list(PREDICTION_COLUMNS) and is_prediction_row(header):
        # no header row, as the organisers' writer makes them: the first row is a prediction
        rows, lines, header = [header, *rows], [1, *lines], list(PREDICTION_COLUMNS)
    n_rows = len(rows) + sum(v.rule == WRONG_FIELD_COUNT for v in violations)
    if header != list(PREDICTION_COLUMNS):
        message = (f"header is {shown(','.join(header))}, expected exactly {','.join(PREDICTION_COLUMNS)!r} "
                   "(or no header row, the file starting with a prediction)")
        violations.append(Violation("header", message, 1))
    if n_rows > MATCHING_TRACK_MAX_ROWS:
        message = f"{n_rows:,} predictions, the matching track allows at most {MATCHING_TRACK_MAX_ROWS:,}"
        violations.append(Violation("too many rows", message))
    if n_rows == 0:
        violations.append(Violation("no predictions", "no predictions (the file has a header only)"))
    # a misspelt or reordered header is reported above; the columns found are still checked row by row
    names = [name.strip() for name in header]
    found = {name: names.index(name) for name in PREDICTION_COLUMNS if name in names}
    df = pd.DataFrame({name: pd.Series([row[i] for row in rows], dtype=object) for name, i in found.items()})
    line_numbers = np.asarray(lines, dtype=np.int64)
    usable = np.full(len(df), "query_id" in df and "reference_id" in df)
    for split, expected, source in (("query", expected_queries, expected_sources[0]),
                                    ("reference", expected_references, expected_sources[1])):
        if f"{split}_id" in df:
            numbers = None if expected is None else expected_numbers(split, phase, expected)
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
    the manifest saying so (``header_added``). Raises :class:`SubmissionError` listing every violation, and writes nothing, when it is invalid.
    ``expected_queries``/``expected_references``: a metadata CSV or a list of ids the ids must belong to.
    ``provenance``: JSON or descriptor files whose content or attributes the manifest records (default:
    the sidecar ``<predictions>.provenance.json`` when there is one).
    """
    predictions, out = Path(predictions), Path(out)
    df, violations = check_matching_csv(
        predictions, phase,
        None if expected_queries is None else read_expected_ids(expected_queries, "query"),
        None if expected_references is None else read_expected_ids(expected_references, "reference"),
        (str(expected_queries), str(expected_references)),
    )
    if violations:
        raise SubmissionError(predictions, violations, max_listed)
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


# -------------------------------------------------------------------------------- descriptor track


def _coverage_violations(
    ids: list[str], split: str, phase: int, expected: Sequence[str] | None, expected_source: str
) -> list[Violation]:
    """Query ids outside the phase, expected ids missing, unexpected ids: one aggregated violation each."""
    numbers = id_numbers(ids, split)[0]
    required = expected_numbers(split, phase, expected)
    lo, hi = _id_range(split, phase)
    in_scope = (numbers >= lo) & (numbers <= hi)  # always true for well-formed reference ids
    missing = np.setdiff1d(required, numbers, assume_unique=True)
    unknown = np.flatnonzero(in_scope & ~np.isin(numbers, required))
    violations = []
    if not in_scope.all():
        outside = [ids[i] for i in np.flatnonzero(~in_scope)]
        message = f"{len(outside):,} query ids are not phase-{phase} queries ({_phase_range_text(phase)})"
        violations.append(Violation("query outside the phase", f"{message}: {_examples(outside)}"))
    if len(missing):
        what = f"phase-{phase} queries" if split == "query" else "references"
        examples = _examples([image_id(split, n) for n in missing[: EXAMPLES + 1]])
        message = f"{len(missing):,} of the {len(required):,} {what} of {expected_source} are missing"
        violations.append(Violation(f"missing {split} ids", f"{message}: {examples}"))
    if len(unknown):
        message = f"{len(unknown):,} {split} ids are not in {expected_source}"
        violations.append(Violation(f"unknown {split} ids", f"{message}: {_examples([ids[i] for i in unknown])}"))
    return violations


def read_phase1_reference(path: str | Path) -> DescriptorFile:
    """Phase-1 references: an ``isc-extract`` reference file, or a phase-1 descriptor-track submission
    (whose attributes then come from its manifest)."""
    path = Path(path)
    is_track = False
    if path.is_file() and h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            is_track = "reference" in f
    if not is_track:
        return DescriptorFile.read(path, "reference")
    _, _, ids, descriptors = read_descriptor_track(path)
    attrs = (read_manifest(path) or {}).get("reference_attributes")
    if attrs is None:
        warnings.warn(f"{path}: no manifest with the reference attributes: the model cannot be compared, "
                      "only the reference ids and values", stacklevel=2)
    return DescriptorFile(path, ids, descriptors, attrs or {})


def _reuse_violations(
    query: DescriptorFile, reference: DescriptorFile, phase1: DescriptorFile, ignore: Sequence[str]
) -> list[Violation]:
    """Phase 2 must reuse the phase-1 references unchanged, and describe queries with the same model."""
    rule = "references not those of phase 1"
    violations = []
    new, old = pd.Index(reference.ids), pd.Index(phase1.ids)
    for ids, what in ((new.difference(old), "absent from"), (old.difference(new), "missing here but in")):
        if len(ids):
            message = f"{len(ids):,} reference ids {what} the phase-1 references {phase1.path}"
            violations.append(Violation(rule, f"{message}: {_examples(list(ids))}"))
    common = new.intersection(old)
    now, before = reference.descriptors[new.get_indexer(common)], phase1.descriptors[old.get_indexer(common)]
    if now.shape != before.shape:
        message = f"reference descriptors have {now.shape[1]} dimensions, the phase-1 ones {before.shape[1]}"
        violations.append(Violation(rule, message))
    elif (changed := np.flatnonzero((now != before).any(axis=1))).size:
        message = (f"{len(changed):,} reference descriptors differ from phase 1 (largest difference "
                   f"{np.abs(now - before).max():.3g})")
        violations.append(Violation(rule, f"{message}: {_examples([common[i] for i in changed])}"))
    if phase1.attrs:
        for current, what in ((reference, "reference"), (query, "query")):
            differences = model_differences(phase1.attrs, current.attrs, ignore)
            if differences:
                message = (f"the {what} descriptors' attributes differ from the phase-1 references' "
                           f"(phase 1 != now): {'; '.join(differences)}")
                violations.append(Violation("model not that of phase 1", message, where=str(current.path)))
    return violations


def _training_only_violations(part: DescriptorFile, name: str) -> list[Violation]:
    """Statistics learnt on anything but the training split (the rules allow no other): a PCA-whitening
    (attribute ``pca``, whose ``trained_split`` isc-pca records) or the negatives subtracted from the
    descriptors (``negative_embeddings``)."""
    violations = []
    for attribute, what, split_key, source_key in (("pca", "whitened by a PCA learnt on", "trained_split",
                                                    "trained_on"),
                                                   ("negative_embeddings", "made with negatives from", "split",
                                                    "training")):
        if attribute not in part.attrs:
            continue
        recorded = json.loads(part.attrs[attribute])
        split = recorded.get(split_key)
        if split != "training":
            count = f", {recorded['n_train']:,} images" if "n_train" in recorded else ""
            message = (f"the {name} descriptors were {what} {recorded.get(source_key)} ({split or 'no split recorded'}"
                       f"{count}); the rules allow statistics of the training split only (isc-pca learn training.h5)")
            violations.append(Violation("not learnt on the training split", message, where=str(part.path)))
    return violations


def check_descriptor_submission(
    query: DescriptorFile,
    reference: DescriptorFile,
    phase: int,
    expected_queries: Sequence[str] | None = None,
    expected_references: Sequence[str] | None = None,
    expected_sources: tuple[str, str] = ("the competition", "the competition"),
    phase1_reference: DescriptorFile | None = None,
    ignore_attributes: Sequence[str] = (),
) -> list[Violation]:
    """Every violation of a descriptor-track submission made of these query and reference descriptors.

    Rules: the same dimension on both sides, at most :data:`~isc.io.DESCRIPTOR_TRACK_MAX_DIM`; query
    ids of ``phase`` only; every expected query of the phase and every expected reference present
    (by default the competition's 50,000 queries and 1,000,000 references; each id at most once is
    checked on reading); the same model attributes on both sides; whitening and negatives learnt on the
    training split only; with ``phase1_reference``, the
    references are the phase-1 ones (same ids, identical values, same attributes) and the queries
    carry the phase-1 model's attributes.
    """
    _check_phase(phase)
    violations = []
    dims = {"query": query.descriptors.shape[1], "reference": reference.descriptors.shape[1]}
    if dims["query"] != dims["reference"]:
        message = f"query descriptors have {dims['query']} dimensions, reference descriptors {dims['reference']}"
        violations.append(Violation("dimension", message))
    for name, dim in dims.items():
        if dim > DESCRIPTOR_TRACK_MAX_DIM:
            message = (f"{name} descriptors have {dim} dimensions, the descriptor track allows at most "
                       f"{DESCRIPTOR_TRACK_MAX_DIM} (PCA-whiten them first)")
            violations.append(Violation("dimension", message))
    violations += _coverage_violations(query.ids, "query", phase, expected_queries, expected_sources[0])
    violations += _coverage_violations(reference.ids, "reference", phase, expected_references, expected_sources[1])
    differences = model_differences(query.attrs, reference.attrs, ignore_attributes)
    if differences:
        message = "query and reference descriptors were not made the same way (query != reference): "
        violations.append(Violation("different models", message + "; ".join(differences)))
    violations += _training_only_violations(query, "query") + _training_only_violations(reference, "reference")
    if phase1_reference is not None:
        violations += _reuse_violations(query, reference, phase1_reference, ignore_attributes)
    return violations


def _check_read_back(path: Path, query: DescriptorFile, reference: DescriptorFile) -> None:
    query_ids, query_x, reference_ids, reference_x = read_descriptor_track(path)
    for name, ids, x, source in (("query", query_ids, query_x, query),
                                 ("reference", reference_ids, reference_x, reference)):
        order = np.argsort(np.asarray(source.ids))
        if ids != [source.ids[i] for i in order] or not np.array_equal(x, source.descriptors[order]):
            raise InputError(f"{path}: the {name} part read back differs from {source.path} (write failed?)")


def submit_descriptors(
    query: str | Path,
    reference: str | Path,
    phase: int,
    out: str | Path,
    expected_queries: str | Path | None = None,
    expected_references: str | Path | None = None,
    phase1_reference: str | Path | None = None,
    ignore_attributes: Sequence[str] = (),
    max_listed: int = 20,
    split_files: str | Path | None = None,
) -> Path:
    """Check two ``isc-extract`` files, write the descriptor-track HDF5 ``out``, read it back, add its manifest.

    ``expected_queries``/``expected_references``: a metadata CSV or a list of ids to require instead of
    the competition's full lists (for a smaller dataset). ``split_files``: a folder where to write the same
    descriptors in the organisers' per-split layout too (:func:`write_split_files`). Raises
    :class:`SubmissionError` listing every violation, writing nothing, when the submission would be invalid.
    """
    _check_phase(phase)
    out = Path(out)
    for path in (query, reference):
        views = int(read_descriptor_attrs(path).get("views_per_id", 1))
        if views > 1:
            raise InputError(f"{path}: {views} views per image (isc-extract --crops); the descriptor track takes one "
                             "descriptor per image: give the file extracted without --crops")
    query_file, reference_file = DescriptorFile.read(query, "query"), DescriptorFile.read(reference, "reference")
    phase1 = read_phase1_reference(phase1_reference) if phase1_reference is not None else None
    violations = check_descriptor_submission(
        query_file, reference_file, phase,
        None if expected_queries is None else read_expected_ids(expected_queries, "query"),
        None if expected_references is None else read_expected_ids(expected_references, "reference"),
        (str(expected_queries or "the competition"), str(expected_references or "the competition")),
        phase1, ignore_attributes,
    )
    if violations:
        raise SubmissionError(f"{query_file.path} + {reference_file.path}", violations, max_listed)
    with atomic_path(out) as tmp:
        write_descriptor_track(tmp, query_file.ids, query_file.descriptors, reference_file.ids,
                               reference_file.descriptors)
        _check_read_back(tmp, query_file, reference_file)
    written = {} if split_files is None else write_split_files(split_files, query_file, reference_file)
    write_manifest(out, {
        "track": "descriptors",
        "phase": phase,
        "counts": {"queries": len(query_file.ids), "references": len(reference_file.ids),
                   "dimension": int(query_file.descriptors.shape[1])},
        "source": {"query": str(query_file.path), "reference": str(reference_file.path)},
        "query_attributes": query_file.attrs,
        "reference_attributes": reference_file.attrs,
        "phase1_reference": None if phase1 is None else {"path": str(phase1.path), "md5": file_digest(phase1.path)},
        "split_files": {split: {"path": str(path), "md5": file_digest(path)} for split, path in written.items()},
    })
    return out


def split_file_paths(directory: str | Path) -> dict[str, Path]:
    """Where :func:`write_split_files` writes: ``DIR/query.h5`` and ``DIR/reference.h5``."""
    return {split: Path(directory) / f"{split}.h5" for split in ("query", "reference")}


def write_split_files(directory: str | Path, query: DescriptorFile, reference: DescriptorFile) -> dict[str, Path]:
    """Write the descriptors in the organisers' per-split layout, for their scripts (``compute_metrics.py
    --track2``, ``convert_track2_format.py``): ``DIR/query.h5`` and ``DIR/reference.h5``, each with the datasets
    ``vectors`` (float32 [n, d]) and ``image_names`` (ASCII bytes) of isc2021's ``write_hdf5_descriptors``,
    ids sorted as in the submission; each file put in place by a rename. Returns {split: path}."""
    image_names, vectors = DESCRIPTOR_LAYOUTS["isc2021"]
    paths = split_file_paths(directory)
    for split, part in (("query", query), ("reference", reference)):
        order = np.argsort(np.asarray(part.ids))
        with atomic_path(paths[split]) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset(vectors, data=np.ascontiguousarray(part.descriptors[order], dtype=np.float32))
            f.create_dataset(image_names, data=np.array([part.ids[i] for i in order], dtype="S"))
    return paths
