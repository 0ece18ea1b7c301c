"""The whole pipeline in one call: download → extract → whiten → search → eval → submit.

Each step is skipped when its outputs are complete: downloads are checked against the metadata's MD5s,
descriptor files against the image ids, the model (its weights, image size, crops and test-time augmentation)
and the size and change time of every image (a replaced image is extracted again), every derived file (PCA,
whitened descriptors, predictions, the calibration and its copies, verified predictions, submissions) by the
record beside it of what made it (:mod:`isc.core.made_from`: the settings that change its content and a
fingerprint of each input), which must equal what this run would use; a step made again says why in its
line. An interrupted run, re-run with the same arguments, goes on where it stopped. Outputs that a setting turns
off (the verified predictions after ``verify=None``, say) stay on disk, but nothing of this run reads them.
Files under the work folder::

    data/<split>_images/, data/<split>_metadata.csv         downloaded images and metadata
    descriptors/<split>.h5, descriptors/query_phase<P>.h5   model descriptors (queries one file per phase)
    descriptors/query_phase<P>_crops.h5                     with query crops: each query's full view and 5 crops,
                                                            for the matching track; query_phase<P>.h5 is then
                                                            its full views (the same descriptors, not extracted again)
    descriptors/reference_crops.h5                          with reference crops: likewise for the references
    descriptors/pca<D>.npz, descriptors/*_pca<D>.h5         PCA-whitening learnt on the training descriptors
    descriptors/<model>/<split>.h5, query_phase<P>.h5       the descriptor ensemble's other models (full views);
    descriptors/pca<D>_ensemble.npz, *_pca<D>_ensemble.h5   every model's joined, whitened: the descriptor track's
    predictions_phase<P>.csv                                matching-track predictions, score-normalised
    predictions_phase<P>_verified.csv (+ .evidence.csv)     the same, each query's best candidates verified by
                                                            local features (isc-verify) and re-scored
    calibration.json, calibration/                          the logistic combination of score and evidence, fitted
                                                            on edited copies of training images it makes itself
    verify-cache/                                           local features of every image verified (both phases);
                                                            regions/: the matched regions' cuts and descriptors
    run_summary.json                                        the steps, their times and the µAP reached

Submissions go to ``submissions/phase<P>_{matching.csv,descriptors.h5}`` with their manifests."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from isc.core.competition import DESCRIPTOR_TRACK_MAX_DIM, PHASES, SPLITS, metadata_file, split_folder
from isc.core.descriptors import described_images, provenance_path, read_descriptor_attrs, read_descriptors
from isc.core.files import InputError, SettingError
from isc.core.made_from import MadeFrom
from isc.core.tables import competition_ground_truth, read_predictions
from isc.download.sync import sync_split
from isc.extract.image_files import list_split_images
from isc.models import DescriptorModel, create_model, given_options
from isc.pipeline.calibration import CopiesCalibration, calibrate_run
from isc.pipeline.config import RunConfig, descriptor_ensemble, matching_search, other_model_folder
from isc.pipeline.summary import RunSummary, Step, p90_text
from isc.pipeline.work import (
    describe,
    matching_queries,
    matching_references,
    phase_ground_truth,
    query_biases,
    redone,
    region_describer,
    split_images,
    track_files,
    whiten_files,
)
from isc.search.matching import search_files
from isc.submit.descriptors import submit_descriptors
from isc.submit.manifest import default_submission_path, manifest_path
from isc.submit.matching import submit_matching
from isc.submit.scoring import record_evaluation, score_submission
from isc.verify.calibrate import Calibration
from isc.verify.verification import Combiner, calibration_conditions, evidence_path, verify

log = logging.getLogger(__name__)


class Pipeline:
    """``Pipeline(config).run()`` runs every step of :class:`RunConfig` and returns a :class:`RunSummary`."""

    def __init__(self, config: RunConfig) -> None:
        if config.pca_dim < 0:
            raise InputError(f"the PCA dimension must be 0 (none) or more, got {config.pca_dim}")
        unknown = set(config.phases) - set(PHASES)
        if unknown or not config.phases:
            raise InputError(f"phases are {' and '.join(map(str, PHASES))}, got {sorted(config.phases)}")
        if config.verify is not None and (config.verify.deep_k or 0) > config.search.k:
            raise SettingError("verify_deep_k", f"must be at most the candidates the search keeps per query "
                               f"({config.search.k}), got {config.verify.deep_k}")
        if config.calibration_copies < 0:
            raise InputError(f"the calibration copies must be 0 or more, got {config.calibration_copies}")
        if config.calibration_k is not None and config.calibration_k < 1:
            raise SettingError("calibration_k", f"must be at least 1, got {config.calibration_k}")
        if config.descriptor_track.pooling is not None and not config.query_crops:
            raise InputError("the descriptor track pools each query's views: the queries need their crops")
        self.config = config
        self.ensemble = descriptor_ensemble(config)
        # built now: an unknown model is refused before hours of downloads
        self.others = [create_model(name, **given_options(image_size=config.image_size)) for name, _ in self.ensemble]
        self.work = Path(config.work)
        self.data = Path(config.data) if config.data else self.work / "data"
        self.descriptors = self.work / "descriptors"
        self.summary = RunSummary()

    def _step(self, stage: str, target: str, images: int | None, began: float, skipped: bool, result: str,
              files: Sequence[Path] = ()) -> None:
        step = Step(stage, target, images, round(time.perf_counter() - began, 2), skipped, result, list(map(str, files)))
        self.summary.steps.append(step)
        log.info("%s %s: %s", stage, target, result)

    # ------------------------------------------------------------------------------------------ steps

    def download(self) -> None:
        c = self.config
        for split in SPLITS:
            began = time.perf_counter()
            if c.data is not None:
                count = len(list_split_images(self.data, split))
                self._step("download", split, count, began, True, f"local images in {self.data}")
                continue
            report, report_path = sync_split(split, self.data, c.download, limit=self.limit(split), quiet=c.quiet)
            if not report.ok:
                raise InputError(f"the {split} images are incomplete ({len(report.failed)} failed, "
                                 f"{len(report.missing)} missing; details in {report_path}); re-run to resume")
            fetched = f"{report.downloaded:,} downloaded ({report.bytes / 1e6:,.1f} MB), " if report.downloaded else ""
            self._step("download", split, report.selected, began, report.downloaded == 0,
                       f"{fetched}{report.skipped:,} already verified", [report_path])

    def limit(self, split: str) -> int | None:
        """How many of the split's first images the run uses (None: all)."""
        limits = [self.config.limit, self.config.training_limit if split == "training" else None]
        return min((n for n in limits if n is not None), default=None)

    def images(self, split: str) -> dict[str, dict[str, Path]]:
        """The images to describe, by descriptor file name (:func:`isc.pipeline.work.split_images`)."""
        return split_images(self.data, split, self.limit(split), self.config.phases)

    @functools.cached_property
    def model(self):  # noqa: ANN201 - a DescriptorModel, created once for every extraction of the run
        return create_model(self.config.model, checkpoint=self.config.checkpoint,
                            **given_options(image_size=self.config.image_size))

    def extract(self) -> dict[str, Path]:
        """Describe every split (queries per phase; with query or reference crops, the split as ``<name>_crops``
        and the plain file as its full views); returns the descriptor files by name."""
        c = self.config
        files: dict[str, Path] = {}
        for split in SPLITS:
            named = self.images(split)
            if (split == "query" and c.query_crops) or (split == "reference" and c.reference_crops):
                # the crops first: the plain file is their full views
                named = {**{f"{name}_crops": images for name, images in named.items()}, **named}
            for name, images in named.items():
                files[name] = self._describe(self.model, split, name, images, self.descriptors,
                                             files.get(f"{name}_crops"))
        return files

    def extract_others(self) -> dict[str, dict[str, Path]]:
        """The full views of every split described by each other model of the descriptor ensemble, in its own
        folder of descriptors/; returns the files by model name, then by name."""
        return {name: {file: self._describe(model, split, file, images, other_model_folder(self.descriptors, name))
                       for split in SPLITS for file, images in self.images(split).items()}
                for (name, _), model in zip(self.ensemble, self.others, strict=True)}

    def _describe(self, model: DescriptorModel, split: str, name: str, images: dict[str, Path], folder: Path,
                  crops_file: Path | None = None) -> Path:
        """``folder``/``name``.h5 (:func:`isc.pipeline.work.describe`); its step line names the model when it is not
        the run's."""
        began = time.perf_counter()
        c = self.config
        attrs = {"source": str(split_folder(self.data, split)), "split": split,
                 "checkpoint": c.checkpoint if model is self.model else None}
        # the grid views are the queries' (and their copies'), never the references'
        options = replace(c.extraction, crops=name.endswith("_crops"), grid=c.extraction.grid if split == "query" else 0)
        output, skipped, result = describe(model, images, folder / f"{name}.h5", options, attrs, crops_file, c.quiet)
        target = name.replace("_phase", " phase ").replace("_crops", " crops")
        self._step("extract", target + ("" if model is self.model else f" {model.name}"), len(images), began, skipped,
                   result, [output])
        return output

    def whiten(self, raw: dict[str, Path], names: Sequence[str] | None = None,
               others: dict[str, dict[str, Path]] | None = None) -> dict[str, Path]:
        """PCA-whitening learnt on the training descriptors, applied to ``names`` (None: every file); with
        ``others``, the ensemble's other models' files by model, each file joined with theirs first; returns the
        files to use (:func:`isc.pipeline.work.whiten_files`)."""
        dim = self.config.pca_dim
        if not dim:
            return raw
        began = time.perf_counter()
        if "training" not in raw:
            raise InputError("PCA-whitening is learnt on the training descriptors: no training images "
                             "(or whiten nothing: PCA dimension 0)")
        ensemble = self.ensemble if others else ()
        whitened, why = whiten_files(raw, names or list(raw), dim, self.descriptors, self.work, ensemble, others)
        joined = " + ".join([self.model.name, *(f"{name} x{weight:g}" for name, weight in ensemble)])
        said = (f"{joined}: " if ensemble else "") + ("learnt on the training descriptors, " if why[0] else "")
        suffix = "_ensemble" if ensemble else ""
        self._step("whiten", f"PCA {dim}{suffix.replace('_', ' ')}", None, began, not any(why),
                   redone(next(filter(None, why)), f"{said}applied to {sum(map(bool, why[1:]))} files") if any(why)
                   else "up to date", [self.descriptors / f"pca{dim}{suffix}.npz"])
        return whitened

    def join(self, raw: dict[str, Path]) -> dict[str, Path]:
        """The descriptor track's files of the ensemble: the files it uses of every model joined, then whitened."""
        track = self.config.descriptor_track
        names = [*(["training"] if track.negatives else []), "reference",
                 *(name for name in raw if name.startswith("query_phase") and (track.pooling or "_crops" not in name))]
        return self.whiten(raw, names, self.extract_others())

    def _made_from(self, settings: dict[str, object], inputs: Iterable[Path]) -> MadeFrom:
        """What a file of the work folder is made from now (isc.core.made_from's rule)."""
        return MadeFrom.of(settings, inputs, self.work)

    def search(self, files: dict[str, Path], phase: int) -> Path | None:
        """The matching track's predictions, from the query crops when there are."""
        query = matching_queries(files, phase)
        if query is None:
            return None
        began = time.perf_counter()
        output, reference, c = self.work / f"predictions_phase{phase}.csv", matching_references(files), self.config
        search = matching_search(c, described_images(query))
        wanted = self._made_from(
            {"phase": phase, "search": search.recorded(), "query crops": c.query_crops,
             "reference crops": c.reference_crops, "matching whitened": bool(c.matching_whitened and c.pca_dim)},
            [query, reference, *([files["training"]] if "training" in files else [])])
        why = wanted.why_redo(output, provenance_path(output))
        if not why:
            self._step("search", f"phase {phase}", None, began, True, "up to date", [output])
            return output
        # isc-search's stage: the same-model check, and the provenance that the submission's manifest quotes
        predictions, record = search_files(query, reference, output, files.get("training"), search, phase=phase,
                                           quiet=c.quiet)
        wanted.record(output)
        searched = record["inputs"]
        normalised = f", normalised with {searched['training']['rows']:,} training images" \
            if "training" in searched else ""
        views = "".join(f", {searched[what]['rows'] // searched[what]['images']} views per {what}"
                        for what in ("query", "reference") if searched[what]["rows"] > searched[what]["images"])
        self._step("search", f"phase {phase}", searched["query"]["images"], began, False,
                   redone(why, f"{len(predictions):,} predictions{normalised}{views}"), [output])
        return output

    def calibrate(self, files: dict[str, Path]) -> Combiner:
        """The combination of a pair's score and its verification evidence (:mod:`isc.pipeline.calibration`)."""
        c = self.config
        began = time.perf_counter()
        setup = CopiesCalibration(
            work=self.work, model=self.model, verify=c.verify, search=c.search, extraction=c.extraction,
            whitened=c.pca_dim if c.matching_whitened else 0, query_crops=c.query_crops,
            reference_crops=c.reference_crops, copies=c.calibration_copies, copies_k=c.calibration_k,
            copies_crops=c.calibration_crops, given=c.calibration, quiet=c.quiet)
        done = calibrate_run(setup, files, lambda split: self.images(split)[split])
        self._step("calibrate", done.target, done.images, began, done.skipped, done.result, done.files)
        return done.combiner

    def verify(self, predictions: Path, phase: int, combiner: Combiner, files: dict[str, Path]) -> Path:
        """The predictions (searched in ``files``) with each query's best candidates verified by local features and
        re-scored."""
        c = self.config
        began = time.perf_counter()
        output = self.work / f"predictions_phase{phase}_verified.csv"
        # a fitted calibration by its file; the fixed bonus by its weights
        calibrated = isinstance(combiner, Calibration)
        calibration = Path(c.calibration) if c.calibration is not None else self.work / "calibration.json"
        with_bias = "training" in files and not c.search.norm.references
        wanted = self._made_from({**calibration_conditions(c.verify, None),
                                  "combiner": "calibration" if calibrated else repr(combiner), "query bias": with_bias},
                                 [predictions, *([calibration] if calibrated else [])])
        why = wanted.why_redo(output, evidence_path(output))
        if not why:
            self._step("verify", f"phase {phase}", None, began, True, "up to date", [output])
            return output
        queries = self.images("query")[f"query_phase{phase}"]
        candidates = read_predictions(predictions)
        bias = query_biases(candidates, read_descriptors(matching_queries(files, phase), views=True)[:2],
                            read_descriptors(matching_references(files), views=True)[:2],
                            read_descriptors(files["training"], split="training")[1], c.search) if with_bias else None
        result = verify(candidates, queries, self.images("reference")["reference"], output,
                        options=c.verify, cache=self.work / "verify-cache", combiner=combiner, quiet=c.quiet,
                        regions=region_describer(self.model, c.extraction, c.verify), max_rows=c.search.max_results,
                        query_bias=bias)
        wanted.record(output)
        broken = f", {len(result.broken)} broken images" if result.broken else ""
        self._step("verify", f"phase {phase}", result.queries, began, False,
                   redone(why, f"{result.pairs:,} pairs (k {c.verify.k}) at {result.pairs_per_second} pairs/s, "
                           f"{result.described:,} images described, {result.cached:,} cached{broken}"), [output])
        return output

    def submit(self, files: dict[str, Path], matching_files: dict[str, Path], phase: int, predictions: Path,
               ground_truth: pd.DataFrame | None) -> None:
        """Both tracks' submissions: the matching track's from ``predictions`` (searched in ``matching_files``),
        the descriptor track's from ``files``; scored when there is a ground truth."""
        c = self.config
        expected_queries, expected_references = (metadata_file(self.data, split) for split in ("query", "reference"))
        expected_queries = expected_queries if expected_queries.is_file() else None
        expected_references = expected_references if expected_references.is_file() else None

        # made from the predictions and descriptors, not from the metadata (rewritten by each download): the
        # metadata chooses the images, so a change there changes the descriptors
        began = time.perf_counter()
        matching = default_submission_path(c.submissions, "matching", phase)
        query = matching_queries(matching_files, phase)
        sources = [*([query] if query else []), matching_references(matching_files),
                   *([matching_files["training"]] if "training" in matching_files else [])]
        wanted = self._made_from({"phase": phase, "verified": c.verify is not None},
                                 [predictions, *sources])
        why = wanted.why_redo(matching, manifest_path(matching))
        if why:
            submit_matching(predictions, phase, matching, expected_queries, expected_references, sources)
            wanted.record(matching)
        self._step("submit", f"phase {phase} matching", None, began, not why,
                   redone(why, "valid") if why else "up to date", [matching])

        began = time.perf_counter()
        query, reference = files[f"query_phase{phase}"], files["reference"]
        dimension = int(read_descriptor_attrs(query)["dimension"])
        descriptors = default_submission_path(c.submissions, "descriptors", phase)
        # a file left by a run of other settings is kept, but never taken for this run's
        earlier = f"; {descriptors.name} there is an earlier run's, with other settings" if descriptors.is_file() else ""
        if dimension > DESCRIPTOR_TRACK_MAX_DIM:
            self._step("submit", f"phase {phase} descriptors", None, began, True,
                       f"not made: {dimension} dimensions, the track allows {DESCRIPTOR_TRACK_MAX_DIM} "
                       f"(the PCA dimension){earlier}")
            descriptors = None
        elif c.limit is not None:
            self._step("submit", f"phase {phase} descriptors", None, began, True,
                       f"not made: an image limit selects a subset, the track needs every query and reference{earlier}")
            descriptors = None
        else:
            query, reference = self._track_files(files, phase)  # made only where the file is
            phase1 = default_submission_path(c.submissions, "descriptors", 1) if phase == 2 else None
            phase1 = phase1 if phase1 and phase1.is_file() else None  # the reference the phase-2 file must reuse
            wanted = self._made_from({"phase": phase, "PCA dimension": c.pca_dim},
                                     [query, reference, *filter(None, [phase1])])
            why = wanted.why_redo(descriptors, manifest_path(descriptors))
            if why:
                submit_descriptors(query, reference, phase, descriptors, expected_queries, expected_references, phase1)
                wanted.record(descriptors)
            reuse = ", phase-1 references reused" if phase1 else ""
            self._step("submit", f"phase {phase} descriptors", None, began, not why,
                       (redone(why, "valid") if why else "up to date") + reuse, [descriptors])

        if ground_truth is not None:
            self.evaluate(phase, {"matching": matching, "descriptors": descriptors}, ground_truth)

    def _track_files(self, files: dict[str, Path], phase: int) -> tuple[Path, Path]:
        """The descriptor track's (query, reference) files: the plain ones, or made from them as
        ``descriptor_track`` says (:func:`isc.pipeline.work.track_files`)."""
        track = self.config.descriptor_track
        if not track.active:
            return files[f"query_phase{phase}"], files["reference"]
        began = time.perf_counter()
        made, why = track_files(track, files, phase, self.descriptors, self.work)
        self._step("describe", f"phase {phase} descriptor track", None, began, not any(why),
                   redone(next(filter(None, why)), f"{json.dumps(track.recorded())}") if any(why) else "up to date",
                   made)
        return made[0], made[1]

    def evaluate(self, phase: int, submissions: dict[str, Path | None], ground_truth: pd.DataFrame) -> None:
        """Each submission made for ``phase`` (by track; None: not made) scored against its ground truth as the
        organisers scored it, the score recorded in its manifest."""
        source = ", ".join(map(str, self.config.ground_truth))
        for track, submission in submissions.items():
            if submission is None:
                continue
            began = time.perf_counter()
            metrics, _ = score_submission(submission, track, ground_truth,
                                          restrict_to_gt_queries=self.config.restrict_to_gt_queries,
                                          backend=self.config.search.backend)
            record_evaluation(submission, metrics, ground_truth, source)
            name = f"phase {phase} {track}"
            self.summary.metrics[name] = metrics.summary()
            self._step("eval", name, None, began, False,
                       f"µAP {metrics.muap:.4f}, recall at P90 {p90_text(self.summary.metrics[name])}")

    def run(self) -> RunSummary:
        # the ground truth first: a bad one is refused before hours of downloads and extraction
        truth = pd.concat([competition_ground_truth(path) for path in self.config.ground_truth],
                          ignore_index=True) if self.config.ground_truth else None
        self.download()
        raw = self.extract()
        files = self.whiten(raw)
        # a trial (an image limit) makes no descriptor-track file: nothing to join for it
        track = self.join(raw) if self.ensemble and self.config.limit is None else files
        matching_files = files if self.config.matching_whitened else raw
        combiner = None
        submitted = set()
        for phase in self.config.phases:
            predictions = self.search(matching_files, phase)
            if predictions is None:
                began = time.perf_counter()
                self._step("search", f"phase {phase}", 0, began, True, "no query images of this phase")
                continue
            if self.config.verify is not None:
                combiner = combiner or self.calibrate(matching_files)  # fitted once, used for both phases
                predictions = self.verify(predictions, phase, combiner, matching_files)
            trial = truth is not None and self.config.limit is not None  # a trial scores the queries it kept
            kept = self.images("query").get(f"query_phase{phase}", {}) if trial else None
            self.submit(track, matching_files, phase, predictions, phase_ground_truth(truth, phase, kept))
            submitted.add(phase)
        # said, not removed: a user's earlier submission is theirs to keep or delete
        self.summary.left_over = [str(path) for phase in PHASES if phase not in submitted
                                  for track in ("matching", "descriptors")
                                  if (path := default_submission_path(self.config.submissions, track, phase)).is_file()]
        self.summary.write(self.work / "run_summary.json")
        return self.summary
