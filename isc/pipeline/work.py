"""What the steps of ``isc-run`` share about the work folder: the images of a split and their descriptor file
unless complete (:func:`describe`), the ground truth of a phase, which descriptor files the matching track
searches, the descriptor track's files, descriptor files whitened unless up to date (several models' joined
first: :func:`whiten_files`), and how a step made again says why."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from isc.core.competition import metadata_file, query_phase, split_folder
from isc.core.files import InputError
from isc.core.made_from import MISSING, MadeFrom
from isc.core.tables import read_metadata
from isc.extract.extraction import ExtractOptions, extract, full_views, is_complete
from isc.extract.image_files import list_split_images
from isc.models import DescriptorModel
from isc.search.descriptor_track import DescriptorTrack, write_track_file
from isc.search.ensemble import learn_joined_pca, write_joined_whitened
from isc.search.normalisation import pair_query_biases
from isc.search.pca import PCAWhitening, apply_pca_file
from isc.search.vectors import prepare_descriptors
from isc.verify.local_features import VerifyOptions
from isc.verify.regions import RegionDescriber

if TYPE_CHECKING:  # annotations only
    import numpy as np
    import pandas as pd

    from isc.search.matching import SearchOptions


def redone(reason: str, result: str) -> str:
    """A step's result after why it was made again (nothing said of a file made for the first time)."""
    return result if reason == MISSING else f"{reason}: {result}"


def matching_queries(files: dict[str, Path], phase: int) -> Path | None:
    """The query descriptors the matching track uses: the crops' file when there is one, else the plain one."""
    return files.get(f"query_phase{phase}_crops", files.get(f"query_phase{phase}"))


def matching_references(files: dict[str, Path]) -> Path:
    """The reference descriptors the matching track uses: the crops' file when there is one, else the plain one."""
    return files.get("reference_crops", files["reference"])


def whiten_file(pca: Path, raw: Path, output: Path, dim: int, work: Path) -> str | None:
    """``raw`` whitened by ``pca`` (``dim`` dimensions) into ``output`` unless it is up to date (the record of
    ``work``'s files); returns why it was made (None: not)."""
    wanted = MadeFrom.of({"PCA dimension": dim}, [raw, pca], work)
    why = wanted.why_redo(output)
    if why:
        apply_pca_file(pca, raw, output)
        wanted.record(output)
    return why


def query_biases(predictions: pd.DataFrame, query: tuple[list[str], np.ndarray], reference: tuple[list[str], np.ndarray],
                 training: np.ndarray | None, search: SearchOptions) -> np.ndarray | None:
    """Each prediction's query bias (:func:`isc.search.normalisation.pair_query_biases`) as ``search`` normalised its
    score (``query``, ``reference``: the searched ``(ids, rows)``, a view a row); None without training descriptors
    or with the references normalised too: the calibration then goes without it."""
    if training is None or search.norm.references:
        return None
    return pair_query_biases(list(predictions["query_id"]), list(predictions["reference_id"]),
                             (list(query[0]), prepare_descriptors(query[1], "query")),
                             (list(reference[0]), prepare_descriptors(reference[1], "reference")),
                             prepare_descriptors(training, "training"), search.norm, search.backend)


def region_describer(model: DescriptorModel, extraction: ExtractOptions, verify: VerifyOptions) -> RegionDescriber | None:
    """The search's model, run as extraction runs it, describing the matched regions when ``verify`` asks for them."""
    return RegionDescriber(model, extraction) if verify.region_inliers else None


def split_images(data: Path, split: str, limit: int | None, phases: Sequence[int]) -> dict[str, dict[str, Path]]:
    """The images of ``split`` under ``data`` to describe, by descriptor file name: one file per split, queries
    one per phase of ``phases``; ``limit``: the split's first images only (None: all).

    With a metadata CSV beside the images, only its ids count (a folder may hold extra files).
    """
    images = list_split_images(data, split)
    metadata = metadata_file(data, split)
    if metadata.is_file():
        listed = set(read_metadata(metadata, split)["image_id"])
        missing = sorted(listed - set(images))
        if missing and limit is None:
            raise InputError(f"{split_folder(data, split)}: {len(missing):,} images of {metadata} are "
                             f"missing, {missing[0]} first (download them first)")
        images = {i: path for i, path in images.items() if i in listed}
    if limit is not None:
        images = dict(sorted(images.items())[:limit])  # the ids that download fetched
    if split != "query":
        return {split: images}
    by_phase = {f"query_phase{p}": {i: path for i, path in images.items() if query_phase(i) == p} for p in phases}
    return {name: chosen for name, chosen in by_phase.items() if chosen}


def track_files(
    track: DescriptorTrack, files: dict[str, Path], phase: int, descriptors: Path, work: Path,
) -> tuple[list[Path], list[str | None]]:
    """The descriptor track's [query, reference] files of ``phase`` in ``descriptors``, made from the plain ones
    (the query's from its views when they are pooled) and the training descriptors as ``track`` says, unless up
    to date; returns them and why each was made (None: not)."""
    views = files.get(f"query_phase{phase}_crops") if track.pooling else None
    training = files.get("training") if track.negatives else None
    made, why = [], []
    for source, extra in ((files[f"query_phase{phase}"], views), (files["reference"], None)):
        output = descriptors / f"{source.name.split('_pca')[0].removesuffix('.h5')}_track.h5"
        wanted = MadeFrom.of({"descriptor track": track.recorded()}, filter(None, [source, extra, training]), work)
        why.append(wanted.why_redo(output))
        if why[-1]:
            write_track_file(source, training, track, output, views=extra)
            wanted.record(output)
        made.append(output)
    return made, why


def phase_ground_truth(combined: pd.DataFrame | None, phase: int, kept: Collection[str] | None) -> pd.DataFrame | None:
    """The rows of the ground truth whose queries belong to ``phase`` (None when there are none); ``kept``: the
    queries a trial run kept (None: all), for a trial scores the queries it kept, not the dataset's."""
    if combined is None:
        return None
    rows = combined[combined["query_id"].map(query_phase) == phase]
    if kept is not None:
        rows = rows[rows["query_id"].isin(kept)]
    return rows.reset_index(drop=True) if len(rows) else None


def whiten_files(raw: dict[str, Path], names: Sequence[str], dim: int, descriptors: Path, work: Path,
                 ensemble: Sequence[tuple[str, float]] = (), others: dict[str, dict[str, Path]] | None = None,
                 ) -> tuple[dict[str, Path], list[str | None]]:
    """Each of ``names`` whitened into ``descriptors`` by a PCA to ``dim`` learnt on the training file, unless up
    to date (the record of ``work``'s files); with an ``ensemble`` (other models, each (name, weight)), ``raw``'s
    file joined first with each of those models' file of ``others`` (by model, then name; a crops file with their
    full views), into files of their own (``*_ensemble``). Returns the files by name and why each was made (None:
    not), the PCA's first."""
    settings = {"PCA dimension": dim, **({"descriptor ensemble": [list(part) for part in ensemble]} if ensemble else {})}
    suffix = "_ensemble" if ensemble else ""

    def parts(name: str) -> list[tuple[Path, float]]:
        return [(others[model][name.removesuffix("_crops")], weight) for model, weight in ensemble] if others else []

    pca_file = descriptors / f"pca{dim}{suffix}.npz"
    learnt = MadeFrom.of(settings, [raw["training"], *(path for path, _ in parts("training"))], work)
    why: list[str | None] = [learnt.why_redo(pca_file)]
    pca = None
    if why[0]:
        pca = learn_joined_pca(raw["training"], parts("training"), pca_file, dim)
        learnt.record(pca_file)
    files = {}
    for name in names:
        output = files[name] = descriptors / f"{name}_pca{dim}{suffix}.h5"
        wanted = MadeFrom.of(settings, [raw[name], *(path for path, _ in parts(name)), pca_file], work)
        why.append(wanted.why_redo(output))
        if why[-1]:
            pca = pca or PCAWhitening.load(pca_file)
            write_joined_whitened(pca, raw[name], parts(name), output)
            wanted.record(output)
    return files, why


def describe(model: DescriptorModel, images: dict[str, Path], output: Path, options: ExtractOptions,
             attrs: dict[str, object], crops_file: Path | None, quiet: bool) -> tuple[Path, bool, str]:
    """``output``: ``images`` described by ``model`` as ``options`` say (``attrs`` recorded), unless complete, or
    the full views of ``crops_file`` where given; returns it, whether it was up to date, and its step's result."""
    if is_complete(output, images, options.config(model)):
        return output, True, "up to date"
    if crops_file is not None:
        rows = full_views(crops_file, output)
        return output, False, f"{rows:,} full views of {crops_file.name}, not extracted again"
    result = extract(images, output, model, options, quiet=quiet, attrs=attrs)
    broken = f", {len(result.broken)} broken" if result.broken else ""
    broken += f", {result.resumed:,} resumed from an interrupted run" if result.resumed else ""
    scales = "" if options.scales == (1.0,) else f" x {','.join(f'{s:g}' for s in options.scales)}"
    return output, False, (f"{model.dim}-d {model.name} @{model.image_size} px{scales}, "
                           f"{result.images_per_second} images/s on {result.device}{broken}")
