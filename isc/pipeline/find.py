"""Copies in a collection of one's own: a folder of queries against a folder of references, or one folder
against itself, with any file names.

:func:`describe` extracts a folder's descriptors into a cache file, describing again only the images added or
changed since the cache was written (isc-extract's resume log, started from the cache's rows);
:func:`search_candidates` searches each query's nearest references (query crops, score normalisation when
training images are given, self-matches left out), and two folders are searched both ways and merged
(:func:`both_ways`); :func:`verify_candidates` re-scores the candidates by local features (isc-verify's
engine) when asked; :func:`matches_above` keeps the pairs at or above a score threshold;
:func:`find_copies` does it all, with a cache per folder and model (:func:`cache_path`), and splits the
candidates into matches, each marked when it is an exact copy, and near misses. The groups and the outputs
are :mod:`isc.pipeline.groups`'s.

The defaults are the best the photo benchmarks found (docs/BENCHMARKS.md): SSCD, each image described as
its full view and 5 crops (a pair scores its best view), and the training-set score normalisation when a
training folder is given."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from isc.core.descriptors import DescriptorFile
from isc.core.files import InputError, SettingError
from isc.core.pairs import Pairs, group_ranks, id_codes, pair_codes
from isc.extract.extraction import ExtractOptions, extract, is_complete
from isc.extract.image_files import list_images
from isc.models import DescriptorModel
from isc.pipeline.groups import exact_copy
from isc.pipeline.thresholds import default_scales, default_threshold
from isc.search.matching import DEFAULT_K, SearchOptions, search_pairs
from isc.verify.local_features import VerifyOptions

if TYPE_CHECKING:
    # imported where used: an unverified run never loads verification's modules
    from isc.verify.verification import Combiner, VerifyResult


# grid views a side beside the crops (isc-run's --query-grid): off, for the thresholds were chosen on
# images described without them
DEFAULT_GRID = 0
# crops cut from the full view as resized (isc.extract.decode.cut_views): on photo sets A and B the same copies
# within the bootstrap intervals for about half the model's work (docs/BENCHMARKS.md, "Crops cut from the full view")
DEFAULT_CUT_VIEWS = True
# a folder of at most this many images is decoded in this process unless the workers are told: starting the
# decoding processes took 0.4 s of processor time for 55 images, more than decoding them (docs/BENCHMARKS.md)
IN_PROCESS_DECODING = 64


def default_combiner() -> Combiner:
    """isc-run's combination without labels: score + 0.2 x min(inliers, 10) / 10."""
    from isc.verify.verification import InlierBonus  # here: only a verified run loads verification's modules

    return InlierBonus()


def verifies_by_default(training: str | Path | None) -> bool:
    """Whether the candidates are verified unless told: where verification was measured to find more copies
    at the same precision (plain scores; no threshold was measured for verified normalised scores)."""
    return training is None


@dataclass
class Described:
    """A folder's images and their descriptors: ``paths`` by id; ``ids`` and ``descriptors`` by row (with
    crops, ``views`` adjacent rows per id, the full view first)."""

    paths: dict[str, Path]
    ids: list[str]
    descriptors: np.ndarray
    views: int
    described: int  # images described by this call, the others read from the cache
    unreadable: dict[str, str]  # id: why, the images of ``paths`` without descriptors

    def full_views(self) -> tuple[list[str], np.ndarray]:
        """One row per image, its full view: (ids, descriptors)."""
        return self.ids[:: self.views], self.descriptors[:: self.views]


def default_cache_dir() -> Path:
    """Where the descriptors are cached unless told: the user's cache folder (``$XDG_CACHE_HOME``, else
    ``~/.cache``), ``isc/find/``; never inside the image folders."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "isc" / "find"


def cache_path(cache_dir: str | Path, folder: str | Path, model: DescriptorModel, crops: bool, grid: int = 0,
               cut: bool = False, scales: Sequence[float] = (1.0,)) -> Path:
    """The cache file of a folder's descriptors, keyed by the folder (its resolved path), the model, the views and
    the sizes, whatever the output: ``CACHE/<folder name>-<hash>/<model>[_crops[_grid<N>][_cut]][_s<S1>-<S2>].h5``
    (the sizes named where they are not the image's own alone)."""
    resolved = Path(folder).resolve()
    key = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:16]
    # the name only helps a reader (the hash keys it): cut so that a long one stays within a file name's 255 bytes
    views = f"_crops{f'_grid{grid}' if grid else ''}{'_cut' if cut else ''}" if crops else ""
    # one file per set of sizes: a run at other sizes keeps the other's descriptors instead of describing over them
    sizes = "" if tuple(scales) == (1.0,) else "_s" + "-".join(f"{s:g}" for s in scales)
    return Path(cache_dir) / f"{resolved.name[:40]}-{key}" / f"{model.name.replace('/', '_')}{views}{sizes}.h5"


def describe(
    folder: str | Path, cache: str | Path, model: DescriptorModel, extraction: ExtractOptions = ExtractOptions(),
    quiet: bool = False, images: Mapping[str, Path] | None = None,
) -> Described:
    """The descriptors of every image under ``folder`` (ids: paths relative to it, without suffix; ``images``:
    its listing when already made), from the cache file ``cache`` where it is up to date, else extracted into it
    as ``extraction`` says (only new or changed images; the broken ones listed as unreadable, never refused;
    decoded in this process when the folder holds at most :data:`IN_PROCESS_DECODING` images and
    ``extraction.workers`` is None)."""
    images = dict(list_images(folder, suffix_on_clash=True) if images is None else images)
    cache = Path(cache)
    config = extraction.config(model)
    processed = 0
    if not is_complete(cache, images, config):
        if extraction.workers is None and len(images) <= IN_PROCESS_DECODING:
            extraction = replace(extraction, workers=0)
        processed = extract(images, cache, model, extraction, resume=True, update=True, max_broken=1.0, quiet=quiet,
                            attrs={"source": str(folder)}).processed
    described = DescriptorFile.read(cache, views=True)
    views = int(described.attrs.get("views_per_id", 1))
    reasons = json.loads(described.attrs.get("broken", "{}"))
    found = set(described.ids)
    unreadable = {i: reasons.get(i, "not described") for i in images if i not in found}
    return Described(images, described.ids, described.descriptors, views, processed, unreadable)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` leads to: two paths of one file (a link, a folder inside the other)
    share it; None when it cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def shared_files(images: Mapping[str, Path], others: Mapping[str, Path]) -> dict[str, str]:
    """``{id in images: id in others}`` of the images that are the very file of one of ``others``."""
    files = {file_identity(path): other for other, path in sorted(others.items(), reverse=True)}
    files.pop(None, None)
    return {image: files[key] for image, path in images.items() if (key := file_identity(path)) in files}


def search_candidates(
    queries: Described, references: Described, training: Described | None = None, same_images: bool = False,
    options: SearchOptions = SearchOptions(), quiet: bool = False, same_files: Mapping[str, str] | None = None,
) -> Pairs:
    """Each query's ``options.k`` nearest references, ``query_id, reference_id, score`` by decreasing score; a
    query with crops scores a pair by its best view; with ``training``, scores are normalised (``options.norm``);
    ``same_images``: the two sides are one folder, a pair of an image with itself is left out; ``same_files``:
    ``{query id: reference id}`` of queries that are a reference's very file, whose pair is left out too."""
    reference_ids, reference = references.full_views()
    training_x = None if training is None else training.full_views()[1]
    query_ids = queries.ids
    if same_files:  # one name per file on both sides, so that the search leaves out a file's pair with itself
        query_ids = [f"r{same_files[i]}" if i in same_files else f"q{i}" for i in queries.ids]
        original = dict(zip(query_ids, queries.ids, strict=True))
        reference_ids = [f"r{i}" for i in reference_ids]
    # a lone reference leaves nothing to search in place of a query's own file: that pair is dropped below
    exclude_self = same_images or (bool(same_files) and len(reference_ids) > 1)
    found, _ = search_pairs(query_ids, queries.descriptors, reference_ids, reference, options, training=training_x,
                            max_results=len(queries.ids) * options.k, exclude_self=exclude_self, quiet=quiet)
    if same_files:
        found = Pairs([original[i] for i in found.query_id], [i[1:] for i in found.reference_id], found.score)
        found = found.take(np.array([same_files.get(q) != r for q, r in zip(found.query_id, found.reference_id,
                                                                            strict=True)], dtype=bool))
    return found


def both_ways(forward: Pairs, backward: Pairs) -> Pairs:
    """The union of the pairs of folder A searched in folder B (``forward``) and of B in A (``backward``, its
    sides swapped back), each pair once with its better score: the result does not depend on which folder is
    given first. By decreasing score, ties by query id then reference id."""
    union = Pairs(np.concatenate([forward.query_id, backward.reference_id]),
                  np.concatenate([forward.reference_id, backward.query_id]),
                  np.concatenate([forward.score, backward.score]))
    query, reference = id_codes(union.query_id), id_codes(union.reference_id)
    # each pair's rows best first: its first row holds its better score
    order = np.lexsort((-union.score, reference, query))
    return union.take(order[group_ranks(pair_codes(query[order], reference[order])) == 0]).ranked()


def verify_candidates(
    pairs: Pairs, paths: Mapping[str, Mapping[str, Path]], cache_dir: str | Path,
    options: VerifyOptions, combiner: Combiner | None = None, quiet: bool = False,
) -> tuple[Pairs, VerifyResult]:
    """The candidates re-scored by local features (isc-verify's engine, its feature cache under
    ``cache_dir``/features): a pair is verified when it is among the ``options.k`` best of its query or of its
    reference (so either side's best are checked, whichever folder is called the queries), and scored by
    ``combiner`` (default :func:`default_combiner`); the others keep their score (zero evidence). ``paths``: each
    side's image paths by id."""
    from isc.verify.verification import evidence_path, read_evidence, rescore, verify

    combiner = default_combiner() if combiner is None else combiner
    candidates = pairs.to_frame()  # verification's engine works on tables

    def best(side: str) -> np.ndarray:
        ordered = candidates.sort_values([side, "score", "query_id", "reference_id"],
                                         ascending=[True, False, True, True], kind="stable")
        return (ordered.groupby(side, sort=False).cumcount() < options.k).reindex(candidates.index).to_numpy()

    chosen = candidates[best("query_id") | best("reference_id")]
    # an image is keyed by its resolved path: one folder on both sides shares one feature cache entry
    files = {side: {i: Path(path).resolve() for i, path in side_paths.items()} for side, side_paths in paths.items()}
    first = chosen["query_id"].map(lambda i: str(files["query"][i]))
    second = chosen["reference_id"].map(lambda i: str(files["reference"][i]))
    # matching is not symmetric: each pair is matched from its smaller path, whichever side it is on
    keyed = chosen.assign(query_id=np.minimum(first, second), reference_id=np.maximum(first, second))
    keyed = keyed.drop_duplicates(["query_id", "reference_id"])  # in one folder (a, b) and (b, a) are one pair
    images = {str(path): path for side in files.values() for path in side.values()}
    per_query = int(keyed["query_id"].value_counts().max())  # every chosen pair of a query is verified
    output = Path(cache_dir) / "verified.csv"
    result = verify(keyed, images, images, output, options=replace(options, k=per_query),
                    cache=Path(cache_dir) / "features", combiner=combiner, quiet=quiet,
                    record={"candidates": "isc-find"})
    evidence = read_evidence(evidence_path(output))
    inliers = dict(zip(zip(evidence["query_id"], evidence["reference_id"], strict=True), evidence["inliers"],
                       strict=True))
    scored = candidates.assign(inliers=[0] * len(candidates))
    scored.loc[chosen.index, "inliers"] = [inliers[min(pair), max(pair)] for pair in zip(first, second, strict=True)]
    return Pairs(candidates["query_id"], candidates["reference_id"], rescore(scored, combiner)).ranked(), result


def matches_above(candidates: Pairs, threshold: float, same_images: bool = False) -> Pairs:
    """The candidate pairs scoring at least ``threshold``, in their order; within one folder each pair once (a, b),
    with the better score of (a, b) and (b, a) (the first of the two in ``candidates``, ranked best first)."""
    matches = candidates.take(candidates.score >= threshold)
    if not same_images:
        return matches
    pairs = [(min(q, r), max(q, r)) for q, r in zip(matches.query_id, matches.reference_id, strict=True)]
    first = {pair: row for row, pair in reversed(list(enumerate(pairs)))}
    rows = sorted(first.values())
    return Pairs([pairs[row][0] for row in rows], [pairs[row][1] for row in rows], matches.score[rows])


@dataclass
class FindResult:
    """What :func:`find_copies` found: the candidates, split by the threshold into the matches (at or above it;
    in one folder each pair once, with its ``exact`` column) and the near misses (below it), each ``query_id,
    reference_id, score``; each side's image paths by id, and what it did (``record``)."""

    candidates: Pairs
    matches: Pairs
    near_misses: Pairs
    paths: dict[str, dict[str, Path]]
    record: dict[str, object]
    same_images: bool  # one folder searched against itself


def describe_folders(
    folders: list[str | Path], cache_dir: str | Path, model: DescriptorModel, queried: ExtractOptions,
    training: str | Path | None, same_images: bool, quiet: bool,
) -> tuple[Described, Described, Described | None, dict[str, str]]:
    """The queries, the references (one folder: the queries again) and the training images (None: none), each
    described into its cache as ``queried`` says (the training images without crops), and ``{query id:
    reference id}`` of the readable queries that are a reference's very file. Refused: training images that
    are query or reference files, a single folder with fewer than 2 readable images."""
    listed = [list_images(folder, suffix_on_clash=True) for folder in folders[:1 if same_images else 2]]
    same_files = {} if same_images else shared_files(listed[0], listed[1])
    training_images = None if training is None else list_images(training, suffix_on_clash=True)
    if training_images is not None:
        for role, images in zip(("query", "reference"), listed * (2 if same_images else 1), strict=True):
            shared = shared_files(training_images, images)
            if shared:
                raise InputError(f"the training images {training} include {len(shared)} of the {role} images (first "
                                 f"{images[next(iter(shared.values()))]}): training images must be unrelated to "
                                 "them, the scores would be normalised by the images' own copies")
    plain, crops = replace(queried, crops=False), queried.crops
    views = {"grid": queried.grid, "cut": queried.cut_views} if crops else {}
    views["scales"] = queried.scales
    if same_images:
        queries = references = describe(folders[0], cache_path(cache_dir, folders[0], model, crops, **views), model,
                                        queried, quiet, listed[0])
        if len(queries.ids) // queries.views < 2:
            raise InputError(f"{folders[0]}: {len(queries.ids) // queries.views} readable image(s) of "
                             f"{len(queries.paths)}: copies within one folder need at least 2")
    else:
        queries = describe(folders[0], cache_path(cache_dir, folders[0], model, crops, **views), model, queried,
                           quiet, listed[0])
        # described as the queries are: the second folder is searched in the first too
        references = describe(folders[1], cache_path(cache_dir, folders[1], model, crops, **views), model,
                              queried, quiet, listed[1])
        same_files = {q: r for q, r in same_files.items() if q not in queries.unreadable
                      and r not in references.unreadable}
    described_training = None if training is None else describe(
        training, cache_path(cache_dir, training, model, False, scales=plain.scales), model, plain, quiet,
        training_images)
    return queries, references, described_training, same_files


def find_copies(
    folders: list[str | Path], cache_dir: str | Path | None, model: DescriptorModel,
    extraction: ExtractOptions | None = None, *, threshold: float | None = None,
    training: str | Path | None = None, crops: bool = True, k: int = DEFAULT_K, quiet: bool = False,
    verification: VerifyOptions | None = None, as_benchmarked: bool = True,
) -> FindResult:
    """The copies of ``folders``: ``[QUERIES, REFERENCES]``, each query's copies among the references, or
    ``[FOLDER]``, the copies within one folder (a pair of an image with itself left out); two folders are
    searched both ways (:func:`both_ways`), so that swapping them swaps the sides of the pairs and nothing else.
    Descriptors made as ``extraction`` says (None: the default cut crops at the model's :func:`default_scales`;
    ``crops``: each image's crops too, cut from its full view where ``extraction.cut_views`` says, and its grid
    views where ``extraction.grid`` says) and cached in ``cache_dir``
    (None: :func:`default_cache_dir`), one file per folder and model. ``verification``: the candidates
    re-scored by local features (:func:`verify_candidates`), None: not. ``threshold``, in (0, 1] (verified:
    up to 1 plus the inlier bonus's weight): by default the model's (:func:`default_threshold`; ``as_benchmarked``
    False, or other scales than its default: the model has other weights or options than the benchmarks', no
    default). Each match says whether it is an exact copy (:func:`exact_copy`)."""
    if len(folders) not in (1, 2):
        raise InputError(f"give one folder, or a query folder and a reference folder, not {len(folders)}")
    combiner = None if verification is None else default_combiner()
    highest = 1 if combiner is None else 1 + combiner.weight  # a cosine, plus the bonus for inliers
    if threshold is not None and not 0 < threshold <= highest:  # above it nothing is ever kept
        raise SettingError("threshold", f"must be in (0, {highest:g}] ({highest:g}: the same image"
                           f"{', verified' if verification is not None else ''}), got {threshold:g}")
    model_scales = default_scales(model.name)
    if extraction is None:
        extraction = ExtractOptions(cut_views=DEFAULT_CUT_VIEWS, scales=model_scales)
    given = threshold is not None
    if not given:  # refused before any image is described
        as_benchmarked = as_benchmarked and tuple(extraction.scales) == model_scales
        threshold = default_threshold(model.name, verification is not None, training is not None, as_benchmarked)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    same_images = len(folders) == 1 or Path(folders[0]).resolve() == Path(folders[1]).resolve()
    queries, references, described_training, same_files = describe_folders(
        folders, cache_dir, model, replace(extraction, crops=crops), training, same_images, quiet)
    options = SearchOptions(k=k, device=extraction.device)  # the search's device, even when no image is extracted
    candidates = search_candidates(queries, references, described_training, same_images, options, quiet, same_files)
    if not same_images:
        backward = search_candidates(references, queries, described_training, False, options, quiet,
                                   {r: q for q, r in sorted(same_files.items(), reverse=True)})
        candidates = both_ways(candidates, backward)
    paths = {"query": queries.paths, "reference": references.paths}
    verified = None
    if verification is not None and len(candidates):
        candidates, verified = verify_candidates(candidates, paths, cache_dir, verification, combiner, quiet)
    matches = matches_above(candidates, threshold, same_images)
    matches = Pairs(matches.query_id, matches.reference_id, matches.score,
                    [exact_copy(queries.paths[q], references.paths[r])
                     for q, r in zip(matches.query_id, matches.reference_id, strict=True)])
    sides = [queries] if same_images else [queries, references]
    unreadable = {str(side.paths[i]): reason for side in [*sides, *filter(None, [described_training])]
                  for i, reason in side.unreadable.items()}
    record = {
        "model": model.name, "threshold": threshold,
        "threshold_from": "given" if given else f"the default of {model.name}, "
        + ("verified" if verification is not None else "normalised" if training is not None else "plain") + " scores",
        "query_crops": crops, "scales": list(extraction.scales), "k": k,
        **({"grid_views": extraction.grid} if crops and extraction.grid else {}),
        **({"crop_views": "cut" if extraction.cut_views else "resized"} if crops else {}),
        "score_normalisation": None if training is None else {**options.norm.recorded(), "training": str(training)},
        "folders": [str(f) for f in folders], "queries": len(queries.paths), "references": len(references.paths),
        "described": queries.described + (0 if same_images else references.described)
        + (0 if described_training is None else described_training.described),
        "unreadable": dict(sorted(unreadable.items())),
        "both_ways": not same_images,
        "verification": None if verification is None else {
            **{key: value for key, value in asdict(verification).items() if key != "workers"},
            "combiner": repr(combiner), "pairs_verified": 0 if verified is None else verified.pairs},
    }
    near_misses = candidates.take(candidates.score < threshold)
    return FindResult(candidates, matches, near_misses, paths, record, same_images)
