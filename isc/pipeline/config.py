"""What ``isc-run`` is told (:class:`RunConfig`), the other models of its descriptor track
(:func:`descriptor_ensemble`) and the files a run of it may write (:func:`planned_outputs`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from isc.core.competition import DESCRIPTOR_TRACK_MAX_DIM, PHASES
from isc.core.descriptors import provenance_path
from isc.core.files import InputError
from isc.download.s3 import DownloadOptions
from isc.extract.extraction import ExtractOptions
from isc.models import DEFAULT_MODEL
from isc.models.registry import model_entry
from isc.search.descriptor_track import DescriptorTrack
from isc.search.matching import SearchOptions
from isc.submit.manifest import default_submission_path, default_submissions_dir, manifest_path
from isc.verify.local_features import VerifyOptions
from isc.verify.verification import evidence_path


@dataclass
class RunConfig:
    """What ``isc-run`` needs: where to work, where the images come from, which model, which phases."""

    work: Path
    data: Path | None = None  # a local copy holding <split>_images/; None: download into work/data
    download: DownloadOptions = DownloadOptions()  # where the images come from (isc-download's options)
    limit: int | None = None  # the first N images of each split (a trial run)
    training_limit: int | None = None  # the first N training images: enough for PCA and normalisation
    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    image_size: int | None = None
    # isc-extract's options (crops as query_crops and reference_crops say); every image described at its size and at
    # half of it, averaged: both tracks gain on two photo sets, +0.020 to +0.038 µAP (docs/BENCHMARKS.md)
    extraction: ExtractOptions = ExtractOptions(scales=(1.0, 0.5))
    pca_dim: int = DESCRIPTOR_TRACK_MAX_DIM  # 0: no whitening
    descriptor_track: DescriptorTrack = DescriptorTrack()  # views pooled, negatives subtracted for the descriptor track
    # the matching track's search (isc-search's options), its scores normalised by the training descriptors
    search: SearchOptions = SearchOptions()
    query_crops: bool = True  # the matching track's queries as their full view and 5 crops (docs/BENCHMARKS.md)
    # the matching track searches the descriptors as extracted: whitened ones lose copies from the candidates
    matching_whitened: bool = False
    # the matching track's candidates verified (None: not); the regions of pairs with 8 inliers or more described:
    # +0.010 [+0.005, +0.015] µAP on set A, +0.006 [+0.002, +0.011] on set B (docs/BENCHMARKS.md)
    verify: VerifyOptions | None = VerifyOptions(region_inliers=8)
    calibration: Path | None = None  # a saved calibration to combine with, instead of one fitted on copies
    # training images copied (edited) to fit the calibration on: 100 score as 300 on two photo sets, for a third
    # of the calibration's work
    calibration_copies: int = 100
    calibration_k: int | None = None  # candidates verified per copy (None: as many as per query)
    # the copies described by their full view (True: with crops where the queries have them): the same µAP on two
    # photo sets at two sizes for half the calibration's work
    calibration_crops: bool = False
    reference_crops: bool = False  # the matching track's references likewise (6x the reference extraction and index)
    phases: Sequence[int] = PHASES
    ground_truth: Sequence[Path] = ()
    restrict_to_gt_queries: bool = False
    submissions: Path = field(default_factory=default_submissions_dir)
    quiet: bool = False


# the one ensemble that won on both photo sets: sscd + sscd_distilled at 0.5, +0.013 [+0.004, +0.023] µAP on set A,
# +0.016 [+0.003, +0.031] on set B (docs/BENCHMARKS.md, "The descriptor track's levers")
DEFAULT_ENSEMBLES: dict[str, tuple[tuple[str, float], ...]] = {"sscd": (("sscd_distilled", 0.5),)}


def descriptor_ensemble(config: RunConfig) -> tuple[tuple[str, float], ...]:
    """The other models, each (name, weight), whose descriptors join the run's model's for the descriptor track:
    those ``config.descriptor_track`` names, else the default of the run's model where every one is installed
    and the run whitens (none for a model without one)."""
    given = config.descriptor_track.ensemble
    if given is None:
        default = DEFAULT_ENSEMBLES.get(config.model or "", ()) if config.checkpoint is None and config.pca_dim else ()
        return default if all(model_entry(name).installed() for name, _ in default) else ()
    if given and not config.pca_dim:
        raise InputError("the descriptor ensemble is joined before the PCA: it needs a PCA dimension (not 0)")
    if config.model in {name for name, _ in given}:
        raise InputError(f"{config.model} is the run's model: the descriptor ensemble joins other models to it")
    return given


def matching_search(config: RunConfig, queries: int) -> SearchOptions:
    """The matching track's search of ``queries`` queries: ``config.search``, but when the candidates are verified
    every query keeps its ``k`` (verified deeper where ``deep_k`` says), however many queries there are; the verified
    predictions are then cut back to ``max_results``, the track's limit (``Pipeline.verify``)."""
    if config.verify is None:
        return config.search
    return replace(config.search, max_results=max(config.search.max_results, queries * config.search.k))


def other_model_folder(descriptors: Path, model: str) -> Path:
    """The folder of ``descriptors`` holding another model's files, named by the model (``onnx:a/b.onnx`` ->
    ``onnx_a_b.onnx``)."""
    return descriptors / re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def planned_outputs(config: RunConfig) -> list[Path]:
    """The files a run of ``config`` may write (descriptors, the other models' too, predictions, submissions and
    their manifests); InputError when its descriptor ensemble is refused (:func:`descriptor_ensemble`)."""
    work, phases = Path(config.work), sorted(config.phases)
    names = ["training", "reference", *(f"query_phase{p}" for p in phases),
             *(f"query_phase{p}_crops" for p in phases if config.query_crops),
             *(["reference_crops"] if config.reference_crops else [])]
    submissions = [default_submission_path(config.submissions, track, p)
                   for p in phases for track in ("matching", "descriptors")]
    verified = [work / f"predictions_phase{p}_verified.csv" for p in phases] if config.verify else []
    track = [work / "descriptors" / f"{name}_track.h5" for name in ["reference", *(f"query_phase{p}" for p in phases)]
             if config.descriptor_track.active]
    searched = [work / f"predictions_phase{p}.csv" for p in phases]
    others = [other_model_folder(work / "descriptors", model) / f"{name}.h5"
              for model, _ in descriptor_ensemble(config) for name in names if not name.endswith("_crops")]
    return [work / "run_summary.json", *(work / "descriptors" / f"{name}.h5" for name in names), *others,
            *searched, *map(provenance_path, searched), *verified, *track, *map(evidence_path, verified),
            *([work / "calibration.json"] if config.verify and config.calibration is None else []),
            *submissions, *map(manifest_path, submissions)]

