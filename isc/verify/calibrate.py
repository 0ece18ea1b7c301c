"""Scores that mean the same for every query: a logistic model over a candidate pair's global score and its
local-feature evidence (``isc-verify``'s sidecar), fitted on labelled pairs and saved as a small JSON file.

µAP ranks the pairs of all queries together, so a verified pair's new score must be comparable across
queries. The model's log-odds is that score. It is fitted either on copies the toolkit makes itself
(:func:`make_copies`: DISC21-style edits of training images, whose source is the one positive among the
candidates, no ground truth needed) or on a labelled set such as the phase-1 public ground truth
(:func:`ground_truth_labels`).

Input: an evidence table with the columns ``query_id, score, rank, inliers, inlier_ratio`` (one row a
(query, candidate) pair), and any of :data:`OPTIONAL_FEATURES` it holds (fitted on where present, then needed);
output: one finite float per row (:meth:`Calibration.scores`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.files import InputError, SettingError, atomic_path

FORMAT = "isc-calibration"
VERSION = 1
# what a pair is described by; the query-level columns make the scores of different queries comparable
FEATURES = ("score", "gap_to_best_score", "log_rank", "log_inliers", "inlier_ratio", "log_best_inliers")
# the columns of the evidence sidecar (isc.verify.verification.EVIDENCE_COLUMNS) that a calibration reads
CALIBRATION_COLUMNS = ("query_id", "score", "rank", "inliers", "inlier_ratio")
# evidence columns taken as they are where the evidence holds them: the cosine of the pair's matched regions
# (isc.verify.regions), the pair's cosine under a second descriptor model (:func:`pair_cosines`) and the share of
# the reference's keypoints' hull that the inliers cover (every verification since evidence version 2) and the
# training bias of the query view that scored the pair (isc-run's: the calibration then chooses its own β)
OPTIONAL_FEATURES = ("region_similarity", "second_model_score", "reference_coverage", "query_bias")
# computed from the query's other candidates, not read from the evidence: how far the pair's score stands above (or
# below) the best of the others, a copy's lead over the query's next candidate (every calibration since 2026-12-08)
DERIVED_FEATURES = ("score_margin",)
COPY_SUFFIX = ".copy"  # a self-made copy's id is its source's id with this suffix


def _check_evidence(evidence: pd.DataFrame) -> None:
    missing = [c for c in CALIBRATION_COLUMNS if c not in evidence.columns]
    if missing:
        raise InputError(f"the evidence lacks the column(s) {', '.join(missing)}")
    if evidence.empty:
        raise InputError("the evidence has no pairs")
    numbers = evidence[list(CALIBRATION_COLUMNS[1:])].to_numpy(dtype=np.float64)
    if not np.isfinite(numbers).all():
        raise InputError("the evidence holds non-finite numbers")
    if (numbers[:, 1:] < 0).any() or (numbers[:, 3] > 1).any():
        raise InputError("the evidence holds a negative rank or inlier count, or an inlier ratio above 1")


def evidence_features(evidence: pd.DataFrame) -> tuple[str, ...]:
    """The features a calibration fitted on ``evidence`` uses: :data:`FEATURES`, the optional ones it holds, then
    :data:`DERIVED_FEATURES`."""
    return (*FEATURES, *(name for name in OPTIONAL_FEATURES if name in evidence.columns), *DERIVED_FEATURES)


def _check_features(features: Sequence[str]) -> None:
    rest = tuple(features[len(FEATURES):])
    known = (*OPTIONAL_FEATURES, *DERIVED_FEATURES)
    if tuple(features[:len(FEATURES)]) != FEATURES or rest != tuple(f for f in known if f in rest):
        raise InputError(f"features {', '.join(features)}: this toolkit computes {', '.join(FEATURES)}, then any "
                         f"of {', '.join(known)} in that order")


def score_margins(evidence: pd.DataFrame) -> np.ndarray:
    """Each pair's score minus the best score of its query's other candidates (0 for a query's only candidate):
    positive for the query's best pair alone, by its lead over the second; the same whatever the rows' order."""
    score = evidence["score"].to_numpy(np.float64)
    query, _ = pd.factorize(evidence["query_id"])
    ordered = np.lexsort((-score, query))  # each query's pairs together (queries in code order), best first
    starts = np.flatnonzero(np.r_[True, query[ordered][1:] != query[ordered][:-1]])
    best = score[ordered[starts]]
    has_second = np.diff(np.r_[starts, len(score)]) > 1
    second = np.where(has_second, score[ordered[np.minimum(starts + 1, len(score) - 1)]], best)
    return np.where(score >= best[query], score - second[query], score - best[query])


def pair_features(evidence: pd.DataFrame, features: Sequence[str] = FEATURES) -> np.ndarray:
    """The ``features`` (:data:`FEATURES`, then some of :data:`OPTIONAL_FEATURES` and :data:`DERIVED_FEATURES`) of
    each pair, float64 ``(pairs, len(features))``; InputError when the evidence lacks an optional one or holds a
    non-finite value."""
    _check_evidence(evidence)
    _check_features(features)
    optional = [name for name in features[len(FEATURES):] if name in OPTIONAL_FEATURES]
    derived = [score_margins(evidence)] if "score_margin" in features else []
    missing = [name for name in optional if name not in evidence.columns]
    if missing:
        raise InputError(f"the evidence lacks {', '.join(missing)}, which the calibration was fitted with: verify "
                         "with it (region evidence, the second model, this version's verification) or calibrate "
                         "again without it")
    extra = evidence[optional].to_numpy(dtype=np.float64)
    if not np.isfinite(extra).all():
        raise InputError(f"the evidence holds non-finite numbers in {', '.join(optional)}")
    by_query = evidence.groupby("query_id", sort=False)
    score = evidence["score"].to_numpy(np.float64)
    log_inliers = np.log1p(evidence["inliers"].to_numpy(np.float64))
    best_score = by_query["score"].transform("max").to_numpy(np.float64)
    best_inliers = by_query["inliers"].transform("max").to_numpy(np.float64)
    return np.column_stack([
        score,
        best_score - score,
        np.log1p(evidence["rank"].to_numpy(np.float64)),
        log_inliers,
        evidence["inlier_ratio"].to_numpy(np.float64),
        np.log1p(best_inliers),
        extra,
        *derived,
    ])


def pair_cosines(evidence: pd.DataFrame, query_ids: Sequence[str], queries: np.ndarray,
                 reference_ids: Sequence[str], references: np.ndarray) -> np.ndarray:
    """The cosine of each evidence pair under other descriptors (a second model's ``second_model_score``): a query
    with several rows (views) takes its best view. InputError when a pair's image has no descriptor or the
    descriptors are not finite."""
    for name, ids, vectors in (("query", query_ids, queries), ("reference", reference_ids, references)):
        if len(ids) != len(vectors) or not np.isfinite(vectors).all():
            raise InputError(f"{len(ids)} {name} ids for {len(vectors)} descriptors, or non-finite descriptors")
        absent = set(evidence[f"{name}_id"]) - set(ids)
        if absent:
            raise InputError(f"{len(absent)} {name} image(s) of the pairs have no descriptor, first {min(absent)}")
    unit = [x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (queries, references)]
    views = pd.Series(np.arange(len(query_ids))).groupby(np.asarray(query_ids, dtype=object)).agg(list)
    reference_row = {image_id: i for i, image_id in enumerate(reference_ids)}
    cosines = np.empty(len(evidence))
    for row, (query_id, reference_id) in enumerate(zip(evidence["query_id"], evidence["reference_id"], strict=True)):
        cosines[row] = (unit[0][views[query_id]] @ unit[1][reference_row[reference_id]]).max()
    return cosines


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2,
                 iterations: int = 100) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression, by Newton's method (IRLS).

    ``features`` should be standardised; ``l2`` is the penalty per pair on the weights, not on the bias.
    """
    n, d = features.shape
    design = np.column_stack([features, np.ones(n)])
    penalty = np.diag([l2 * n] * d + [0.0])
    theta = np.zeros(d + 1)
    for _ in range(iterations):
        logits = design @ theta
        p = 1.0 / (1.0 + np.exp(-np.clip(logits, -500, 500)))
        gradient = design.T @ (p - labels) + penalty @ theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta[:d], float(theta[d])


def _canonical(value: object) -> str:
    """A value as JSON text, the same before and after a round trip through a calibration file."""
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Calibration:
    """A fitted logistic combination: ``scores(evidence)`` is its log-odds that each pair is a copy.

    ``conditions`` records what the evidence must have been made with (descriptor model, score
    normalisation, verification options): evidence made otherwise is refused by :meth:`check_conditions`.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    fitted_on: str
    pairs: int
    positives: int
    conditions: dict[str, object] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Calibration(fitted on {self.fitted_on}: {self.pairs} pairs, {self.positives} copies)"

    def __call__(self, evidence: pd.DataFrame) -> np.ndarray:
        """The combiner of :func:`isc.verify.verification.verify`: :meth:`scores`."""
        return self.scores(evidence)

    def scores(self, evidence: pd.DataFrame) -> np.ndarray:
        """The log-odds of each pair of ``evidence`` (finite; comparable across queries)."""
        standardised = (pair_features(evidence, self.features) - np.asarray(self.mean)) / np.asarray(self.std)
        return standardised @ np.asarray(self.weights) + self.bias

    def check_conditions(self, conditions: Mapping[str, object], source: str | Path,
                         assume_same_model: bool = False) -> None:
        """Refuse evidence made with other settings than the calibration's (one line naming the first), and
        evidence whose descriptor model is unknown (predictions without provenance) unless ``assume_same_model``."""
        wanted_model = self.conditions.get("descriptors")
        if wanted_model and "descriptors" not in conditions and not assume_same_model:
            model = wanted_model.get("model", wanted_model) if isinstance(wanted_model, Mapping) else wanted_model
            raise SettingError("assume_same_model", f"is needed to apply {source}, fitted on {model} scores, to "
                               "predictions of an unknown model (no provenance sidecar): another model's scores "
                               "would be re-scored wrongly")
        for key, wanted in self.conditions.items():
            if key in conditions and _canonical(conditions[key]) != _canonical(wanted):
                raise InputError(f"{source}: calibrated with {key}={wanted!r}, but this evidence was made with "
                                 f"{key}={conditions[key]!r}: calibrate again for these settings")

    def save(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=1,
                                      default=str) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            content = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such calibration file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: not a calibration file ({type(error).__name__})") from None
        if not isinstance(content, dict) or content.get("format") != FORMAT:
            raise InputError(f"{path}: not a calibration file (written by isc-verify's calibration)")
        if content.get("version") != VERSION:
            raise InputError(f"{path}: calibration format version {content.get('version')!r}, this toolkit reads {VERSION}")
        try:
            calibration = cls(features=tuple(content["features"]), mean=tuple(map(float, content["mean"])),
                              std=tuple(map(float, content["std"])), weights=tuple(map(float, content["weights"])),
                              bias=float(content["bias"]), fitted_on=str(content["fitted_on"]),
                              pairs=int(content["pairs"]), positives=int(content["positives"]),
                              conditions=dict(content.get("conditions") or {}))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{path}: damaged calibration file ({type(error).__name__}: {error})") from None
        try:
            _check_features(calibration.features)
        except InputError as error:
            raise InputError(f"{path}: calibrated on {error}") from None
        numbers = np.array([*calibration.mean, *calibration.std, *calibration.weights, calibration.bias])
        size = len(calibration.features)
        if len(calibration.mean) != size or len(calibration.std) != size \
                or len(calibration.weights) != size or not np.isfinite(numbers).all() \
                or min(calibration.std) <= 0:
            raise InputError(f"{path}: damaged calibration file (sizes or non-finite numbers)")
        if not isinstance(content.get("conditions"), dict) or not content["conditions"]:
            raise InputError(f"{path}: damaged calibration file (no conditions: what it was fitted under is unknown)")
        return calibration


def calibrate(evidence: pd.DataFrame, labels: np.ndarray, fitted_on: str,
              conditions: Mapping[str, object] | None = None, l2: float = 1e-2) -> Calibration:
    """Fit a :class:`Calibration` on ``evidence`` whose pairs are labelled copy (1) or not (0), over the
    :func:`evidence_features` of the evidence."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != (len(evidence),):
        raise InputError(f"{len(labels)} labels for {len(evidence)} pairs")
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise InputError(f"calibration needs copies and non-copies among the pairs: {positives} of "
                         f"{len(labels)} are copies")
    names = evidence_features(evidence)
    features = pair_features(evidence, names)
    mean, std = features.mean(axis=0), features.std(axis=0)
    std[std < 1e-12] = 1.0  # a constant feature (every rank 0 when k = 1) carries no information
    weights, bias = fit_logistic((features - mean) / std, labels, l2=l2)
    return Calibration(features=names, mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                       weights=tuple(weights.tolist()), bias=bias, fitted_on=fitted_on, pairs=len(labels),
                       positives=positives, conditions=dict(conditions or {}))


def ground_truth_labels(evidence: pd.DataFrame, ground_truth: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The pairs of ``evidence`` whose query the ground truth covers, and their labels (1: the query's copy)."""
    covered = evidence[evidence["query_id"].isin(set(ground_truth["query_id"]))]
    if covered.empty:
        raise InputError("no query of the evidence is in the ground truth")
    matched = ground_truth.dropna(subset=["reference_id"])
    truth = pd.MultiIndex.from_arrays([matched["query_id"].astype(str), matched["reference_id"].astype(str)])
    pairs = pd.MultiIndex.from_arrays([covered["query_id"].astype(str), covered["reference_id"].astype(str)])
    return covered, pairs.isin(truth).astype(np.float64)


def make_copies(sources: Mapping[str, Path], folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """A DISC21-style edited copy (:func:`isc.synth.edits.random_edit`) of each source image, written as a JPEG
    ``folder/<source id>.copy.jpg``; returns ``{copy id: path}``, the copy id being ``<source id>.copy``.
    Deterministic for a seed; a copy already written is kept (the copies of a re-run are the same)."""
    from PIL import Image

    from isc.synth.edits import random_edit

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copies = {}
    for number, (source_id, path) in enumerate(sorted(sources.items())):
        copy_id = f"{source_id}{COPY_SUFFIX}"
        target = folder / f"{copy_id}.jpg"
        if not target.is_file():
            rng = np.random.default_rng([seed, number])
            with Image.open(path) as image:
                edited = random_edit(image, rng)
            with atomic_path(target) as tmp:
                edited.save(tmp, format="JPEG", quality=int(rng.integers(40, 95)))
        copies[copy_id] = target
    return copies


def copy_labels(evidence: pd.DataFrame) -> np.ndarray:
    """Labels of the pairs of self-made copies: 1 where the candidate is the copy's source image."""
    sources = evidence["query_id"].astype(str).str.removesuffix(COPY_SUFFIX)
    return (sources.to_numpy() == evidence["reference_id"].astype(str).to_numpy()).astype(np.float64)


@dataclass(frozen=True)
class CrossFitted:
    """The combiner of a calibration fitted on labelled queries that are scored too: each labelled query's pairs
    by the calibration of the other half (:func:`cross_fit`), so that no pair is scored by a model fitted on it;
    the queries the labels do not cover by ``full``, fitted on every labelled pair (the one saved for later runs)."""

    full: Calibration
    halves: tuple[Calibration, Calibration]  # halves[i]: fitted on the queries of half 1 - i
    half_of: Mapping[str, int]  # labelled query id: its half

    def __repr__(self) -> str:
        return f"CrossFitted(two halves of the queries; {self.full!r})"

    def __call__(self, evidence: pd.DataFrame) -> np.ndarray:
        half = evidence["query_id"].astype(str).map(self.half_of).to_numpy()
        scores = self.full.scores(evidence)
        for i, calibration in enumerate(self.halves):
            rows = half == i
            if rows.any():  # the query-level features need the query's every row: a query is wholly in one half
                scores[rows] = calibration.scores(evidence[rows])
        return scores


def cross_fit(evidence: pd.DataFrame, ground_truth: pd.DataFrame, fitted_on: str,
              conditions: Mapping[str, object] | None = None) -> CrossFitted:
    """Calibrations fitted on the pairs of ``evidence`` whose query ``ground_truth`` covers: one on all of them and
    one on each half of those queries (sorted by id, alternately), each half scored by the other's."""
    labelled, labels = ground_truth_labels(evidence, ground_truth)
    queries = sorted(set(labelled["query_id"].astype(str)))
    half_of = {query: number % 2 for number, query in enumerate(queries)}
    half = labelled["query_id"].astype(str).map(half_of).to_numpy()
    halves = []
    for scored in (0, 1):
        fit = half != scored
        count = len(set(labelled["query_id"][fit]))
        try:
            halves.append(calibrate(labelled[fit], labels[fit], f"{count} queries of {fitted_on}", conditions))
        except InputError as error:
            raise InputError(f"scoring the labelled queries on a calibration fitted on the others (half of "
                             f"{len(queries)}): {error}") from None
    full = calibrate(labelled, labels, f"{len(queries)} queries of {fitted_on}", conditions)
    return CrossFitted(full, (halves[0], halves[1]), half_of)
