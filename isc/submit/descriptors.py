"""The descriptor track's submission: :func:`check_descriptor_submission` checks a query and a reference
descriptor file (phase, dimensions, complete coverage of the expected ids, the same model on both sides, a
PCA learnt on the training split only, and in phase 2 the reuse of the phase-1 references);
:func:`submit_descriptors` writes the official HDF5 and reads it back, and on request the organisers'
per-split files (:func:`write_split_files`). Nothing is written unless every check passes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from isc.core.competition import (
    DESCRIPTOR_TRACK_MAX_DIM,
    id_numbers,
    image_id,
)
from isc.core.descriptors import (
    DESCRIPTOR_LAYOUTS,
    DescriptorFile,
    model_differences,
    read_descriptor_attrs,
    read_descriptor_track,
    write_descriptor_track,
)
from isc.core.files import InputError, atomic_path, file_digest
from isc.submit.manifest import read_manifest, write_manifest
from isc.submit.violations import (
    EXAMPLES,
    SubmissionError,
    Violation,
    check_phase,
    expected_numbers,
    id_range,
    phase_range_text,
    quoted_examples,
    read_expected_ids,
)

# -------------------------------------------------------------------------------- descriptor track


def _coverage_violations(
    ids: list[str], split: str, phase: int, expected: Sequence[str] | None, expected_source: str
) -> list[Violation]:
    """Query ids outside the phase, expected ids missing, unexpected ids: one aggregated violation each."""
    numbers = id_numbers(ids, split)[0]
    required = expected_numbers(split, phase, expected)
    lo, hi = id_range(split, phase)
    in_scope = (numbers >= lo) & (numbers <= hi)  # always true for well-formed reference ids
    missing = np.setdiff1d(required, numbers, assume_unique=True)
    unknown = np.flatnonzero(in_scope & ~np.isin(numbers, required))
    violations = []
    if not in_scope.all():
        outside = [ids[i] for i in np.flatnonzero(~in_scope)]
        message = f"{len(outside):,} query ids are not phase-{phase} queries ({phase_range_text(phase)})"
        violations.append(Violation("query outside the phase", f"{message}: {quoted_examples(outside)}"))
    if len(missing):
        what = f"phase-{phase} queries" if split == "query" else "references"
        examples = quoted_examples([image_id(split, n) for n in missing[: EXAMPLES + 1]])
        message = f"{len(missing):,} of the {len(required):,} {what} of {expected_source} are missing"
        violations.append(Violation(f"missing {split} ids", f"{message}: {examples}"))
    if len(unknown):
        message = f"{len(unknown):,} {split} ids are not in {expected_source}"
        violations.append(Violation(f"unknown {split} ids", f"{message}: {quoted_examples([ids[i] for i in unknown])}"))
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
            violations.append(Violation(rule, f"{message}: {quoted_examples(list(ids))}"))
    common = new.intersection(old)
    now, before = reference.descriptors[new.get_indexer(common)], phase1.descriptors[old.get_indexer(common)]
    if now.shape != before.shape:
        message = f"reference descriptors have {now.shape[1]} dimensions, the phase-1 ones {before.shape[1]}"
        violations.append(Violation(rule, message))
    elif (changed := np.flatnonzero((now != before).any(axis=1))).size:
        message = (f"{len(changed):,} reference descriptors differ from phase 1 (largest difference "
                   f"{np.abs(now - before).max():.3g})")
        violations.append(Violation(rule, f"{message}: {quoted_examples([common[i] for i in changed])}"))
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

    Rules: the same dimension on both sides, at most :data:`~isc.core.competition.DESCRIPTOR_TRACK_MAX_DIM`; query
    ids of ``phase`` only; every expected query of the phase and every expected reference present
    (by default the competition's 50,000 queries and 1,000,000 references; each id at most once is
    checked on reading); the same model attributes on both sides; whitening and negatives learnt on the
    training split only; with ``phase1_reference``, the
    references are the phase-1 ones (same ids, identical values, same attributes) and the queries
    carry the phase-1 model's attributes.
    """
    check_phase(phase)
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
    check_phase(phase)
    out = Path(out)
    for path in (query, reference):
        views = int(read_descriptor_attrs(path).get("views_per_id", 1))
        if views > 1:
            raise InputError(f"{path}: {views} views per image (extracted with crops); the descriptor track takes one "
                             "descriptor per image: give the file extracted without crops")
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
