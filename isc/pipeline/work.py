"""What the steps of ``isc-run`` share about the work folder: the images of a split and the ground truth
of a phase, which descriptor files the matching track searches, the descriptor track's files, a descriptor file whitened unless up to date, and how a step made again says why."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from isc.core.competition import metadata_file, query_phase, split_folder
from isc.core.files import InputError
from isc.core.made_from import MISSING, MadeFrom
from isc.core.tables import read_metadata
from isc.extract.extraction import ExtractOptions
from isc.extract.image_files import list_split_images
from isc.models import DescriptorModel
from isc.search.descriptor_track import DescriptorTrack, write_track_file
from isc.search.pca import apply_pca_file
from isc.verify.local_features import VerifyOptions
from isc.verify.regions import RegionDescriber

if TYPE_CHECKING:
    import pandas as pd  # annotations only


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
