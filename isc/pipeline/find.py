"""Copies in a collection of one's own: a folder of queries against a folder of references, or one folder
against itself, with any file names.

:func:`describe` extracts a folder's descriptors into a cache file, describing again only the images added or
changed since the cache was written (isc-extract's resume log, started from the cache's rows);
:func:`candidate_pairs` searches each query's nearest references (query crops, score normalisation when
training images are given, self-matches left out); :func:`matches_above` keeps the pairs at or above a
score threshold, :func:`groups_of` joins them into groups (connected components), and
:func:`write_matches` writes them as CSV or JSON; :func:`find_copies` does it all.

The defaults are the best the photo benchmarks found (docs/BENCHMARKS.md): SSCD, each query described as
its full view and 5 crops (a pair scores its best view), and the training-set score normalisation when a
training folder is given. A verification step (local features re-scoring the candidates) belongs between
:func:`candidate_pairs` and :func:`matches_above`: it re-scores the candidate pairs, and the threshold then
applies to its score."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from isc.core.descriptors import DescriptorFile, decode_id, model_differences, read_descriptor_attrs
from isc.core.files import InputError, atomic_path, write_json
from isc.core.partial_log import PartialWriter, partial_path
from isc.extract.extraction import ExtractOptions, extract, extraction_config, is_complete
from isc.extract.image_files import list_images
from isc.models import DescriptorModel
from isc.search.matching import DEFAULT_K, SearchOptions, search

if TYPE_CHECKING:
    import pandas as pd  # annotations only: the search loads it, the worker processes need not

# SSCD with query crops: precision 0.98 on photo set B (docs/BENCHMARKS.md, isc-find), plain scores (recall
# 0.69) and scores normalised by the set's training images (recall 0.67)
DEFAULT_THRESHOLD = 0.5
DEFAULT_THRESHOLD_NORMALISED = 0.45


@dataclass
class Described:
    """A folder's images and their descriptors: ``paths`` by id; ``ids`` and ``descriptors`` by row (with
    crops, :data:`~isc.extract.decode.CROP_VIEWS` adjacent rows per id, the full view first)."""

    paths: dict[str, Path]
    ids: list[str]
    descriptors: np.ndarray
    views: int
    described: int  # images described by this call, the others read from the cache

    def full_views(self) -> tuple[list[str], np.ndarray]:
        """One row per image, its full view: (ids, descriptors)."""
        return self.ids[:: self.views], self.descriptors[:: self.views]


def cache_path(cache_dir: str | Path, role: str, model: DescriptorModel, crops: bool) -> Path:
    """The cache file of a folder's descriptors: ``CACHE/<role>_<model>[_crops].h5``."""
    return Path(cache_dir) / f"{role}_{model.name.replace('/', '_')}{'_crops' if crops else ''}.h5"


def seed_resume_log(cache: Path, config: Mapping[str, object]) -> bool:
    """Start the resume log of an extraction into ``cache`` from the rows the cache already holds, when the
    same model made them, so that only images added or changed since are described; returns whether it did."""
    partial = partial_path(cache, 0, 1)
    if partial.exists() or not cache.is_file():
        return False  # a killed run's log is resumed as it is
    try:
        if model_differences(dict(config), read_descriptor_attrs(cache)):
            return False
        with h5py.File(cache, "r") as f:
            ids, descriptors, stamps = f["ids"][()], f["descriptors"][()], f["file_stamps"][()]
    except (InputError, OSError, KeyError):
        return False  # not a cache of this toolkit's: described again, then replaced
    views = int(config.get("views_per_id", 1))
    writer = PartialWriter(partial, dict(config), resume=False)
    try:
        # the log holds one row of all the views per image
        writer.append([decode_id(i) for i in ids[::views]], descriptors.reshape(len(ids) // views, -1),
                      [tuple(s) for s in stamps[::views].tolist()])
    finally:
        writer.close()
    return True


def describe(
    folder: str | Path, cache: str | Path, model: DescriptorModel, extraction: ExtractOptions = ExtractOptions(),
    quiet: bool = False,
) -> Described:
    """The descriptors of every image under ``folder`` (ids: paths relative to it, without suffix), from the
    cache file ``cache`` where it is up to date, else extracted into it as ``extraction`` says (only new or
    changed images, the broken ones listed, never refused)."""
    images = list_images(folder)
    cache = Path(cache)
    config = extraction_config(model, extraction.scales, extraction.flip, extraction.crops)
    processed = 0
    if not is_complete(cache, images, config):
        seed_resume_log(cache, config)
        processed = extract(images, cache, model, extraction, resume=True, max_broken=1.0, quiet=quiet,
                            attrs={"source": str(folder)}).processed
    described = DescriptorFile.read(cache, views=True)
    views = int(described.attrs.get("views_per_id", 1))
    return Described(images, described.ids, described.descriptors, views, processed)


def candidate_pairs(
    queries: Described, references: Described, training: Described | None = None, same_images: bool = False,
    options: SearchOptions = SearchOptions(), quiet: bool = False,
) -> pd.DataFrame:
    """Each query's ``options.k`` nearest references, ``query_id, reference_id, score`` by decreasing score; a
    query with crops scores a pair by its best view; with ``training``, scores are normalised (``options.norm``);
    ``same_images``: the two sides are one folder, a pair of an image with itself is left out."""
    reference_ids, reference = references.full_views()
    training_x = None if training is None else training.full_views()[1]
    return search(queries.ids, queries.descriptors, reference_ids, reference, options, training=training_x,
                  max_results=len(queries.ids) * options.k, exclude_self=same_images, quiet=quiet)


def matches_above(candidates: pd.DataFrame, threshold: float, same_images: bool = False) -> pd.DataFrame:
    """The candidate pairs scoring at least ``threshold``; within one folder each pair once (a, b), with the
    better score of (a, b) and (b, a)."""
    matches = candidates[candidates["score"] >= threshold]
    if same_images:
        first = matches[["query_id", "reference_id"]].min(axis=1)
        second = matches[["query_id", "reference_id"]].max(axis=1)
        matches = matches.assign(query_id=first, reference_id=second).drop_duplicates(["query_id", "reference_id"])
    return matches.reset_index(drop=True)


def groups_of(matches: pd.DataFrame, same_images: bool = False) -> list[list[tuple[str, str]]]:
    """The connected components of the matched pairs: each a list of (side, id), sorted, largest group first;
    ``same_images``: both sides are one folder, an id is one image (side ``query``)."""
    reference_side = "query" if same_images else "reference"
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    for query, reference in zip(matches["query_id"], matches["reference_id"], strict=True):
        parent[root(("query", query))] = root((reference_side, reference))
    members: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in list(parent):
        members.setdefault(root(node), []).append(node)
    return sorted((sorted(group) for group in members.values()), key=lambda g: (-len(g), g))


def write_matches(
    path: str | Path, matches: pd.DataFrame, paths: Mapping[str, Mapping[str, Path]], record: Mapping[str, object],
    same_images: bool = False,
) -> None:
    """Write the matches: a ``.json`` file holds ``record``, the groups (lists of image paths) and the pairs;
    any other suffix a CSV ``query_id,reference_id,score,query_path,reference_path`` (quoted as needed)."""
    table = matches.assign(query_path=[str(paths["query"][i]) for i in matches["query_id"]],
                           reference_path=[str(paths["reference"][i]) for i in matches["reference_id"]])
    if Path(path).suffix.lower() != ".json":
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        return
    groups = [[str(paths[side][i]) for side, i in group] for group in groups_of(matches, same_images)]
    pairs = [{"query": q, "reference": r, "score": round(float(s), 6)}
             for q, r, s in zip(table["query_path"], table["reference_path"], table["score"], strict=True)]
    write_json(path, {**record, "groups": groups, "pairs": pairs})


@dataclass
class FindResult:
    """What :func:`find_copies` found: the candidates and the matches above the threshold (``query_id,
    reference_id, score``), each side's image paths by id, and what it did (``record``)."""

    candidates: pd.DataFrame
    matches: pd.DataFrame
    paths: dict[str, dict[str, Path]]
    record: dict[str, object]
    same_images: bool  # one folder searched against itself


def find_copies(
    folders: list[str | Path], cache_dir: str | Path, model: DescriptorModel,
    extraction: ExtractOptions = ExtractOptions(), *, threshold: float | None = None,
    training: str | Path | None = None, crops: bool = True, k: int = DEFAULT_K, quiet: bool = False,
) -> FindResult:
    """The copies of ``folders``: ``[QUERIES, REFERENCES]``, each query's copies among the references, or
    ``[FOLDER]``, the copies within one folder (a pair of an image with itself left out); descriptors made as
    ``extraction`` says (``crops``: the queries' crops too) and cached in ``cache_dir``. ``threshold``: by default
    :data:`DEFAULT_THRESHOLD`, or with ``training`` (scores normalised by those images)
    :data:`DEFAULT_THRESHOLD_NORMALISED`."""
    if len(folders) not in (1, 2):
        raise InputError(f"give one folder, or a query folder and a reference folder, not {len(folders)}")
    same_images = len(folders) == 1 or Path(folders[0]).resolve() == Path(folders[1]).resolve()
    queried, plain = replace(extraction, crops=crops), replace(extraction, crops=False)
    if same_images:
        queries = references = describe(folders[0], cache_path(cache_dir, "folder", model, crops), model, queried,
                                        quiet)
    else:
        queries = describe(folders[0], cache_path(cache_dir, "queries", model, crops), model, queried, quiet)
        references = describe(folders[1], cache_path(cache_dir, "references", model, False), model, plain, quiet)
    described_training = None if training is None else describe(
        training, cache_path(cache_dir, "training", model, False), model, plain, quiet)
    if threshold is None:
        threshold = DEFAULT_THRESHOLD if training is None else DEFAULT_THRESHOLD_NORMALISED
    options = SearchOptions(k=k)
    candidates = candidate_pairs(queries, references, described_training, same_images, options, quiet)
    matches = matches_above(candidates, threshold, same_images)
    record = {
        "model": model.name, "threshold": threshold, "query_crops": crops, "k": k,
        "score_normalisation": None if training is None else {**options.norm.recorded(), "training": str(training)},
        "folders": [str(f) for f in folders], "queries": len(queries.paths), "references": len(references.paths),
        "described": queries.described + (0 if same_images else references.described)
        + (0 if described_training is None else described_training.described),
    }
    return FindResult(candidates, matches, {"query": queries.paths, "reference": references.paths}, record,
                      same_images)
