"""``isc-run``'s calibration: the combination of a pair's score and its verification evidence, the one given,
else a logistic model fitted on edited copies of training images that are searched and verified as the
matching track's queries are (:mod:`isc.verify.calibrate`), else (too few training images) the fixed inlier
bonus. Its files, under the work folder: ``calibration.json`` and ``calibration/`` (the copies, their
descriptors and their verified candidates)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.descriptors import read_descriptor_attrs, read_descriptors
from isc.core.files import write_json
from isc.core.made_from import MadeFrom
from isc.extract.extraction import ExtractOptions, extract, is_complete
from isc.models import DescriptorModel
from isc.pipeline.work import matching_references, query_biases, redone, region_describer, whiten_file
from isc.search.matching import SearchOptions, search
from isc.verify.calibrate import DERIVED_FEATURES, Calibration, calibrate, copy_labels, make_copies
from isc.verify.local_features import VerifyOptions
from isc.verify.verification import (
    Combiner,
    InlierBonus,
    calibration_conditions,
    evidence_path,
    read_evidence,
    verify,
)


@dataclass(frozen=True)
class CopiesCalibration:
    """What the calibration is made from: the work folder (its ``descriptors/`` and its records), the model
    that describes the copies, and the settings of the run whose matching track it calibrates."""

    work: Path
    model: DescriptorModel
    verify: VerifyOptions
    search: SearchOptions
    extraction: ExtractOptions
    whitened: int  # the PCA dimension of the descriptors the matching track searches (0: as extracted)
    query_crops: bool  # with ``extraction.grid``: the queries' grid views too
    reference_crops: bool
    copies: int  # training images copied (edited) to fit on
    copies_k: int | None  # candidates verified per copy (None: as many as per query)
    copies_crops: bool  # the copies described with crops where the queries are
    given: Path | None = None  # a saved calibration, instead of one fitted on copies
    quiet: bool = False

    @property
    def query_grid(self) -> int:
        """The grid views a side of the queries (0: none, or no crops)."""
        return self.extraction.grid if self.query_crops else 0

    @property
    def copies_grid(self) -> int:
        """The grid views a side of the copies: the queries' where the copies have crops."""
        return self.query_grid if self.copies_crops else 0

    @property
    def verified_per_copy(self) -> int:
        """Candidates verified per self-made copy: ``copies_k``, at most the queries' ``k``."""
        return min(self.verify.k, self.copies_k or self.verify.k)


@dataclass
class Calibrated:
    """The combiner, and the step's line: what (``given``, ``copies``), images copied, skipped, its result."""

    combiner: Combiner
    target: str
    images: int | None
    skipped: bool
    result: str
    files: list[Path] = field(default_factory=list)


def calibrate_run(
    setup: CopiesCalibration, files: dict[str, Path], images: Callable[[str], dict[str, Path]],
) -> Calibrated:
    """The combiner of the run's verification: ``setup.given``, else one fitted on edited copies of training
    images (``files``: the descriptor files the matching track searches, by name; ``images(split)``: a split's
    images by id), made again only when its record differs, else the fixed inlier bonus."""
    conditions = {**calibration_conditions(setup.verify, {"inputs": {"reference": {
        "model_attributes": read_descriptor_attrs(files["reference"])}}}),
        "search": {"norm": setup.search.norm.recorded(), "k": setup.search.k, "pca_dim": setup.whitened,
                   "query_crops": setup.query_crops, "reference_crops": setup.reference_crops,
                   # only where on: a calibration fitted before the grid (or cut crops) existed still applies
                   **({"query_grid": setup.query_grid} if setup.query_grid else {}),
                   **({"crop_views": "cut"} if setup.extraction.cut_views and (setup.query_crops or setup.reference_crops)
                      else {})}}
    if setup.given is not None:
        calibration = Calibration.load(setup.given)
        calibration.check_conditions(conditions, setup.given)
        return Calibrated(calibration, "given", None, True, f"{calibration!r} from {setup.given}")
    path = setup.work / "calibration.json"
    if "training" not in files:
        return Calibrated(InlierBonus(), "copies", None, True, "no training images: fixed inlier bonus")
    training = images("training")
    copies = min(setup.copies, len(training) // 2)
    if copies < 10:
        return Calibrated(InlierBonus(), "copies", None, True,
                          f"{len(training)} training images, too few to copy: fixed inlier bonus")
    wanted = MadeFrom.of({**conditions, "calibration copies": copies, "copies verified": setup.verified_per_copy,
                          "copies with crops": setup.query_crops and setup.copies_crops,
                          "derived features": list(DERIVED_FEATURES),  # a calibration fitted without them is refitted
                          "query bias": not setup.search.norm.references,  # the evidence's query_bias column
                          **({"copies grid": setup.copies_grid} if setup.copies_grid else {})},
                         [matching_references(files), files["training"]], setup.work)
    why = wanted.why_redo(path)
    if not why:
        calibration = Calibration.load(path)
        return Calibrated(calibration, "copies", None, True, f"up to date: {calibration!r}", [path])
    evidence = copies_evidence(setup, files, training, copies, images("reference"))
    labels = copy_labels(evidence)
    found = int(labels.sum())
    if found in (0, len(labels)):
        return Calibrated(InlierBonus(), "copies", copies, False, f"{found} of {len(labels)} candidate pairs are "
                          "the copies' sources: nothing to learn from, fixed inlier bonus")
    calibration = calibrate(evidence, labels, f"{copies} edited copies of training images", conditions)
    calibration.save(path)
    wanted.record(path)
    return Calibrated(calibration, "copies", copies, False,
                      redone(why, f"{found} of {copies} sources among the copies' candidates; {calibration!r}"), [path])


def copies_evidence(
    setup: CopiesCalibration, files: dict[str, Path], training: dict[str, Path], copies: int,
    references: dict[str, Path],
) -> pd.DataFrame:
    """The verification evidence of edited copies of ``copies`` training images (chosen by a fixed seed),
    each searched as the matching track searches a query, among the references plus the copied images,
    the score normalised by the other training images."""
    folder = setup.work / "calibration"
    ids = sorted(training)
    chosen = np.sort(np.random.default_rng(0).choice(len(ids), copies, replace=False))
    sources = {ids[i]: training[ids[i]] for i in chosen}
    copy_images = made_copies(sources, folder / "copies", setup.work)
    crops = setup.query_crops and setup.copies_crops
    raw = folder / ("copies_crops.h5" if crops else "copies.h5")
    options = replace(setup.extraction, crops=crops, grid=setup.copies_grid)  # described with the queries' views
    if not is_complete(raw, copy_images, options.config(setup.model)):
        extract(copy_images, raw, setup.model, options, quiet=setup.quiet, attrs={"source": str(folder / "copies")})
    described = raw
    if setup.whitened:
        described = folder / f"{raw.stem}_pca{setup.whitened}.h5"
        whiten_file(setup.work / "descriptors" / f"pca{setup.whitened}.npz", raw, described, setup.whitened,
                    setup.work)
    copy_ids, copy_x, _ = read_descriptors(described, views=True)
    reference_ids, reference_x, _ = read_descriptors(matching_references(files), views=True)
    training_ids, training_x, _ = read_descriptors(files["training"], split="training")
    is_source = np.isin(np.asarray(training_ids, dtype=object), list(sources))
    candidates = ([*reference_ids, *np.asarray(training_ids, dtype=object)[is_source]],
                  np.vstack([reference_x, training_x[is_source]]))
    predictions = search(copy_ids, copy_x, *candidates, setup.search, training=training_x[~is_source],
                         quiet=setup.quiet)
    output = folder / "copies_verified.csv"
    verify(predictions, copy_images, {**references, **sources}, output,
           options=replace(setup.verify, k=setup.verified_per_copy), cache=setup.work / "verify-cache",
           quiet=setup.quiet, regions=region_describer(setup.model, setup.extraction, setup.verify),
           query_bias=query_biases(predictions, (copy_ids, copy_x), candidates, training_x[~is_source], setup.search))
    return read_evidence(evidence_path(output))


def made_copies(sources: dict[str, Path], folder: Path, work: Path) -> dict[str, Path]:
    """The edited copies of ``sources``, made again when the sources changed: make_copies keeps a copy already
    written, whose edit was drawn for its rank among the sources of its run."""
    listed = folder.with_suffix(".json")  # which copy is of which source: what the record is kept beside
    wanted = MadeFrom.of({"copies": len(sources)}, sources.values(), work)
    if wanted.why_redo(listed):
        shutil.rmtree(folder, ignore_errors=True)
        copies = make_copies(sources, folder)
        write_json(listed, {copy_id: path.name for copy_id, path in copies.items()})
        wanted.record(listed)
        return copies
    return make_copies(sources, folder)  # each copy is there (or made again as it was): their paths
