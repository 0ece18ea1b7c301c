"""Candidate pairs of a predictions CSV verified and re-scored (``isc-verify``).

:func:`verify` describes every image needed, then matches every pair, over a process pool (:mod:`isc.verify.workers`); writes the
evidence table beside the output (:func:`evidence_path`) and the predictions re-scored by a combination of
the global score and the evidence (:class:`InlierBonus` by default, or a fitted
:class:`~isc.verify.calibrate.Calibration`); under torchrun the queries are sharded across ranks and merged
on the first.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from isc.core.files import InputError, NoImageRead, atomic_path
from isc.verify.adaptive import evidence_in_depth, verified_depth
from isc.verify.local_features import VerifyOptions
from isc.verify.regions import REGION_COLUMN, RegionDescriber, region_similarities
from isc.verify.workers import shard_evidence

if TYPE_CHECKING:
    import pandas as pd

EVIDENCE_COLUMNS = ("query_id", "reference_id", "score", "rank", "verified", "matches", "inliers", "inlier_ratio",
                    "reference_coverage", "transform", "error")
COVERAGE_COLUMN = "reference_coverage"  # a sidecar written before it existed is still read, without it
# the training bias of the query view that gave the pair its score, where the caller gives it (isc-run does)
QUERY_BIAS_COLUMN = "query_bias"
EVIDENCE_VERSION = 2  # bump when the evidence of the same options changes (2: reference_coverage)


# ------------------------------------------------------------------------------------ evidence


def ranked_candidates(predictions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each query's ``k`` best candidates by decreasing score (ties by reference id), with their 0-based ``rank``."""
    ordered = predictions.sort_values(["query_id", "score", "reference_id"], ascending=[True, False, True],
                                      kind="stable")
    ranked = ordered.assign(rank=ordered.groupby("query_id", sort=False).cumcount())
    return ranked[ranked["rank"] < k].reset_index(drop=True)


def read_evidence(path: str | Path) -> pd.DataFrame:
    """The evidence sidecar of :func:`verify` (its columns :data:`EVIDENCE_COLUMNS`, ``reference_coverage`` where an
    older run wrote none, ``region_similarity`` where the run described regions and ``query_bias`` where it was
    given), ``verified`` as bool and the
    counts as numbers; InputError naming the file when it is not one."""
    import pandas as pd

    from isc.core.tables import read_csv_columns

    try:  # the columns a run may not have written; a file that cannot be read fails below, named
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline().strip().split(",")
    except OSError:
        header = []
    optional = tuple(column for column in (COVERAGE_COLUMN, REGION_COLUMN, QUERY_BIAS_COLUMN) if column in header)
    required = tuple(column for column in EVIDENCE_COLUMNS if column != COVERAGE_COLUMN)
    evidence = read_csv_columns(path, (*required, *optional), "isc-verify evidence")
    numbers = {column: pd.to_numeric(evidence[column], errors="coerce")
               for column in ("rank", "matches", "inliers", *optional)}
    for column, values in numbers.items():
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise InputError(f"{path}: line {row + 2}: {column} {evidence[column].iloc[row]!r} is not a number")
    return evidence.assign(verified=evidence["verified"] == "True", **numbers)


def recorded_options(record: Mapping[str, object]) -> VerifyOptions:
    """The :class:`VerifyOptions` a provenance record of isc-verify holds (defaults for those it lacks)."""
    options = record.get("options") if record.get("command") == "isc-verify" else None
    names = {field.name for field in dataclasses.fields(VerifyOptions)}
    return VerifyOptions(**{k: v for k, v in (options or {}).items() if k in names})


def calibration_conditions(options: VerifyOptions, search_record: Mapping[str, object] | None) -> dict[str, object]:
    """What a calibration of verified pairs holds for: the verification options (not the number of
    processes), the evidence's version (:data:`EVIDENCE_VERSION`) and, when the predictions' provenance says, the
    descriptor model that scored them."""
    # adaptive depth's, regions', RootSIFT's and mirroring's settings only where they are on: a calibration fitted
    # before they existed still applies
    off = {"workers", *(("deep_k", "deep_inliers") if options.deep_k is None else ()),
           *(("region_inliers",) if not options.region_inliers else ()),
           *(("features",) if options.features == "sift" else ()), *(("mirror",) if not options.mirror else ())}
    conditions: dict[str, object] = {"verification": {k: v for k, v in dataclasses.asdict(options).items()
                                                      if k not in off}, "evidence_version": EVIDENCE_VERSION}
    inputs = (search_record or {}).get("inputs") or {}
    attributes = (inputs.get("reference") or {}).get("model_attributes") or {} if isinstance(inputs, dict) else {}
    if "model" in attributes:
        conditions["descriptors"] = {key: str(attributes[key]) for key in ("model", "model_fingerprint")
                                     if key in attributes}
    return conditions


def combiner_inputs(evidence: pd.DataFrame) -> pd.DataFrame:
    """The evidence with what a combiner may also use per query: ``best_score`` and ``best_inliers``."""
    per_query = evidence.groupby("query_id")
    return evidence.assign(best_score=per_query["score"].transform("max"),
                           best_inliers=per_query["inliers"].transform("max"))


@dataclass(frozen=True)
class InlierBonus:
    """The fixed combination ``score + weight · min(inliers, cap) / cap``: with weight 0.2 and cap 10 it
    raised matching µAP from 0.574 to 0.629 verifying 3 candidates per query on a photo benchmark."""

    weight: float = 0.2
    cap: int = 10

    def __post_init__(self) -> None:
        if not np.isfinite(self.weight) or self.weight < 0:
            raise InputError(f"the inlier weight must be a finite number >= 0, got {self.weight}")
        if self.cap < 1:
            raise InputError(f"the inlier cap must be at least 1, got {self.cap}")

    def __call__(self, evidence: pd.DataFrame) -> np.ndarray:
        bonus = np.minimum(evidence["inliers"].to_numpy(np.float64), self.cap) / self.cap
        return evidence["score"].to_numpy(np.float64) + self.weight * bonus


Combiner = Callable[["pd.DataFrame"], np.ndarray]


def rescore(evidence: pd.DataFrame, combiner: Combiner) -> np.ndarray:
    """The combined score of every evidence row (unverified rows count as zero evidence); refuses a non-finite
    score or a result of the wrong length."""
    scores = np.asarray(combiner(combiner_inputs(evidence)), dtype=np.float64)
    if scores.shape != (len(evidence),):
        raise InputError(f"the combiner gave {scores.shape} scores for {len(evidence)} pairs")
    if not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise InputError(f"the combiner gave a non-finite score for ({evidence['query_id'].iloc[row]}, "
                         f"{evidence['reference_id'].iloc[row]})")
    return scores


# ----------------------------------------------------------------------------------- the stage


def evidence_path(output: str | Path) -> Path:
    """The evidence sidecar of re-scored predictions: ``OUT.evidence.csv`` beside ``OUT.csv``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.evidence.csv")


def calibration_path(output: str | Path) -> Path:
    """Where ``isc-verify --calibrate-gt`` saves its calibration unless told: ``OUT.calibration.json``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.calibration.json")


def default_cache(output: str | Path) -> Path:
    """Where the features are cached unless told: ``isc-verify-cache/`` beside the output."""
    return Path(output).parent / "isc-verify-cache"


@dataclass
class VerifyResult:
    """What :func:`verify` did (the fields in the order of ``isc-verify --json``); counts of every rank on
    the first rank, of its own shard on the others."""

    output: str
    evidence: str
    cache: str
    rank: int
    world_size: int
    predictions: int  # rows re-scored
    queries: int
    pairs: int  # pairs verified (each query's k best, down to deep_k for those without evidence)
    failed_pairs: int  # of those, pairs with a broken image (zero evidence, the error in the sidecar)
    images: int  # distinct images the pairs need
    described: int  # of those, described by this run
    cached: int  # found in the cache
    cache_bytes_per_image: float | None
    features_seconds: float
    matching_seconds: float
    images_per_second: float | None  # described by this run
    pairs_per_second: float | None
    broken: dict[str, str]  # id: reason
    regions_described: int = 0  # matched regions cut and described by the descriptor model (two per pair)


def _check_ids(predictions: pd.DataFrame, column: str, images: Mapping[str, Path], what: str) -> None:
    ids = predictions[column].drop_duplicates()
    absent = ids[~ids.isin(images.keys())]
    if len(absent):
        raise InputError(f"{len(absent)} {what} id(s) of the predictions are not among the {what} images, "
                         f"first {absent.iloc[0]}")


def _check_inputs(predictions: pd.DataFrame, queries: Mapping[str, Path], references: Mapping[str, Path],
                  options: VerifyOptions, regions: RegionDescriber | None, max_broken: float) -> None:
    """InputError for what :func:`verify` cannot verify, before any work."""
    if options.region_inliers and regions is None:
        raise InputError("region evidence needs the descriptor model that searched, to describe the regions")
    if options.region_inliers and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # before any rank joins
        raise InputError("region evidence is described by one process: verify without torchrun to describe regions")
    if len(predictions) == 0:
        raise InputError("no predictions to verify")
    if not 0 <= max_broken:
        raise InputError(f"max_broken must be >= 0, got {max_broken}")
    _check_ids(predictions, "query_id", queries, "query")
    _check_ids(predictions, "reference_id", references, "reference")
    # one id on both sides is one image only when it is one path (one folder searched against itself)
    overlap = next((i for i in sorted(set(predictions["query_id"]) & set(predictions["reference_id"]))
                    if Path(queries[i]) != Path(references[i])), None)
    if overlap is not None:
        raise InputError(f"id {overlap} is both a query and a reference image: the feature cache keys images by id")


def _evidence_by_rank(checked: pd.DataFrame, paths: Mapping[str, Path], cache_root: Path, options: VerifyOptions,
                      strict: bool, quiet: bool) -> tuple[int, int, tuple, list]:
    """(rank, world size, this rank's (evidence, counts), every rank's on the first): each rank verifies its
    share of the queries; a failure on any rank is raised on every rank, none left waiting."""
    from isc.core.distributed import join_process_group, leave_process_group

    rank, world, started = join_process_group("cpu")
    try:
        query_ids = sorted(checked["query_id"].unique())
        shard = set(query_ids[rank * len(query_ids) // world:(rank + 1) * len(query_ids) // world])
        mine = checked[checked["query_id"].isin(shard)]
        workers = options.workers if options.workers is not None else \
            max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        label = f" [rank {rank}/{world}]" if world > 1 else ""
        try:
            shard_result: tuple | Exception = evidence_in_depth(mine, options, lambda pairs: shard_evidence(
                pairs, paths, cache_root, options, workers, strict, label, quiet))
        except Exception as e:  # still gathered: no rank waits forever for one that failed
            shard_result = e
        gathered = _gather(shard_result, world)
    finally:
        leave_process_group(started)
    failed = next((g for g in [shard_result, *gathered] if isinstance(g, Exception)), None)
    if failed is not None:
        raise failed
    return rank, world, shard_result, gathered


def _gather(value: object, world: int) -> list[object]:
    """Every rank's ``value`` on the first rank (and [value] alone)."""
    if world == 1:
        return [value]
    import torch.distributed as dist

    gathered = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered or []


def verify(
    predictions: pd.DataFrame,
    queries: Mapping[str, Path],
    references: Mapping[str, Path],
    output: str | Path,
    *,
    options: VerifyOptions = VerifyOptions(),
    cache: str | Path | None = None,
    combiner: Combiner = InlierBonus(),
    fit: Callable[[pd.DataFrame], Combiner] | None = None,
    strict: bool = False,
    max_broken: float = 0.01,
    quiet: bool = False,
    record: Mapping[str, object] | None = None,
    regions: RegionDescriber | None = None,
    max_rows: int | None = None,
    query_bias: np.ndarray | None = None,
) -> VerifyResult:
    """Verify each query's ``options.k`` best candidates of ``predictions`` (deeper where ``options.deep_k`` says:
    :mod:`isc.verify.adaptive`) and write the re-scored predictions
    ``output``, the evidence sidecar (:func:`evidence_path`) and the provenance sidecar.

    ``queries``/``references``: ``{id: path}`` holding every id of the predictions. ``cache``: the feature
    cache folder (default :func:`default_cache`). ``combiner``: evidence DataFrame (:data:`EVIDENCE_COLUMNS`
    plus ``best_score`` and ``best_inliers`` per query) -> new scores; ``fit``: evidence -> the combiner to use
    instead (a calibration fitted on this run's labelled pairs); candidates beyond k and pairs with a
    broken image count as zero evidence (``verified`` False; ``error`` says why for the latter).
    ``strict``: the first broken image raises InputError; more than ``max_broken`` of the images broken
    warns, all of them raises :class:`isc.core.files.NoImageRead`. ``record``: more for the provenance.
    ``regions``: the descriptor model that describes the matched regions when ``options.region_inliers`` asks for
    them (:mod:`isc.verify.regions`; the evidence then has a ``region_similarity`` column). ``max_rows``: the
    re-scored predictions cut to their best ``max_rows`` (equal scores by query id, then reference id; the
    evidence keeps every pair), for a search that kept more candidates than the matching track allows.
    ``query_bias``: one number per row of ``predictions`` (:func:`isc.search.normalisation.pair_query_biases`), the
    evidence's ``query_bias`` column, a feature of a calibration.
    Under torchrun the queries are sharded across ranks and the first rank writes the files.
    """

    from isc.core.descriptors import provenance, provenance_path
    from isc.core.files import write_json

    _check_inputs(predictions, queries, references, options, regions, max_broken)
    output = Path(output)
    cache_root = Path(cache) if cache is not None else default_cache(output)
    ranked = ranked_candidates(predictions, len(predictions))
    checked = ranked[ranked["rank"] < verified_depth(options)]
    paths = {**references, **queries}
    rank, world, shard_result, gathered = _evidence_by_rank(checked, paths, cache_root, options, strict, quiet)
    if rank != 0:
        return _result(output, cache_root, rank, world, 0, 0, [shard_result[1]])
    all_counts = [c for _, c in gathered]
    broken = {i: reason for c in all_counts for i, reason in sorted(c["broken"].items())}
    evidence = _merged_evidence([e for e, _ in gathered], ranked, broken, max_broken, output)
    described_regions = 0
    if options.region_inliers:  # here, after the SIFT pool: its workers never load the model
        similarity, described_regions = region_similarities(
            evidence, paths, options.region_inliers, regions, cache_root / "regions",
            cache_root / "regions" / f"{output.stem}.h5", quiet)
        evidence = evidence.assign(**{REGION_COLUMN: similarity})
    if query_bias is not None:
        evidence = evidence.assign(**{QUERY_BIAS_COLUMN: _by_pair(predictions, query_bias, evidence)})
    if fit is not None:
        combiner = fit(evidence)
    new_scores = rescore(evidence, combiner)
    evidence = evidence.assign(new_score=new_scores)
    _write_scores(output, evidence, max_rows)
    result = dataclasses.replace(
        _result(output, cache_root, rank, world, len(evidence), evidence["query_id"].nunique(), all_counts),
        regions_described=described_regions)
    write_json(provenance_path(output), provenance(
        command="isc-verify", options={**dataclasses.asdict(options), "combiner": repr(combiner), "strict": strict,
                                       "max_broken": max_broken},
        **(record or {}), evidence=str(evidence_path(output)),
        counts={"predictions": result.predictions, "queries": result.queries, "pairs": result.pairs,
                "failed_pairs": result.failed_pairs, "images": result.images, "broken": len(broken),
                "regions_described": result.regions_described}))
    return result


def _by_pair(predictions: pd.DataFrame, values: np.ndarray, evidence: pd.DataFrame) -> np.ndarray:
    """``values`` (one per row of ``predictions``) in the order of ``evidence``'s pairs; InputError when not finite."""
    import pandas as pd

    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(predictions),) or not np.isfinite(values).all():
        raise InputError(f"{len(values)} query biases for {len(predictions)} predictions, or non-finite ones")
    pairs = pd.MultiIndex.from_arrays([predictions["query_id"], predictions["reference_id"]])
    return pd.Series(values, index=pairs).groupby(level=[0, 1]).first().reindex(
        pd.MultiIndex.from_arrays([evidence["query_id"], evidence["reference_id"]])).to_numpy()


def _write_scores(output: Path, evidence: pd.DataFrame, max_rows: int | None = None) -> None:
    """The re-scored predictions (at most ``max_rows``, the best) and the evidence sidecar, the provenance of an
    older run removed first."""
    from isc.core.descriptors import provenance_path
    from isc.core.tables import write_predictions

    provenance_path(output).unlink(missing_ok=True)  # a crash between the writes must not leave an older record
    scores = evidence[["query_id", "reference_id", "new_score"]].rename(columns={"new_score": "score"})
    if max_rows is not None and len(scores) > max_rows:
        scores = scores.sort_values(["score", "query_id", "reference_id"], ascending=[False, True, True],
                                    kind="stable").head(max_rows)
    write_predictions(output, scores)
    with atomic_path(evidence_path(output)) as tmp:
        evidence.to_csv(tmp, index=False, float_format="%.7g")


def _merged_evidence(shards: Sequence[pd.DataFrame], ranked: pd.DataFrame, broken: Mapping[str, str],
                     max_broken: float, output: Path) -> pd.DataFrame:
    """Every rank's evidence and the candidates not verified (zero evidence), by query and rank; NoImageRead when
    no pair could be verified, a warning when more than ``max_broken`` of the images are broken."""
    import pandas as pd

    evidence = pd.concat(shards).sort_values(["query_id", "rank"], kind="stable")
    images = len(set(evidence["query_id"]) | set(evidence["reference_id"]))
    if (evidence["error"] != "").all():
        raise NoImageRead(f"none of the {len(evidence)} pairs could be verified: {len(broken)} of their {images} "
                          f"images are broken (first {next(iter(broken.items()))})")
    if len(broken) > max_broken * images:
        warnings.warn(f"{len(broken):,} of {images:,} images ({len(broken) / images:.1%}) are broken, more than "
                      f"{max_broken:.1%}: their pairs count as unverified (listed in {evidence_path(output)})",
                      stacklevel=3)
    verified_ranks = pd.MultiIndex.from_frame(evidence[["query_id", "rank"]])
    unchecked = ranked[~pd.MultiIndex.from_frame(ranked[["query_id", "rank"]]).isin(verified_ranks)].assign(
        verified=False, matches=0, inliers=0, inlier_ratio=0.0, reference_coverage=0.0, transform="", error="")
    evidence = pd.concat([evidence, unchecked]).sort_values(["query_id", "rank"], kind="stable")
    return evidence[list(EVIDENCE_COLUMNS)].reset_index(drop=True)


def _result(output: Path, cache_root: Path, rank: int, world: int, predictions: int, queries: int,
            counts: Sequence[Mapping]) -> VerifyResult:
    def total(key: str) -> int | float:
        return sum(c[key] for c in counts)

    images = set().union(*(c["images"] for c in counts))
    described = len(set().union(*(c["described"] for c in counts)))  # by two ranks at once on a cold cache: once
    cache_bytes = {i: size for c in counts for i, size in c["cache_bytes"].items()}
    features_seconds = max(c["features_seconds"] for c in counts)
    matching_seconds = max(c["matching_seconds"] for c in counts)
    return VerifyResult(
        output=str(output), evidence=str(evidence_path(output)), cache=str(cache_root), rank=rank, world_size=world,
        predictions=predictions, queries=queries, pairs=total("pairs"),
        failed_pairs=total("pairs") - total("matched"), images=len(images), described=described,
        cached=len(images) - described,
        cache_bytes_per_image=round(sum(cache_bytes.values()) / len(cache_bytes)) if cache_bytes else None,
        features_seconds=round(features_seconds, 3), matching_seconds=round(matching_seconds, 3),
        images_per_second=round(described / features_seconds, 1) if features_seconds else None,
        pairs_per_second=round(total("matched") / matching_seconds, 1) if matching_seconds else None,
        broken={i: r for c in counts for i, r in c["broken"].items()})
