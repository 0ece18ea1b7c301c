"""A synthetic mini DISC21, made from a seed with no network: :func:`generate_dataset` writes the
competition's layout, ``{query,reference,training}_images/<id>.jpg``, the metadata CSVs with true MD5s and
the phase-1 and phase-2 ground truths, and a manifest (:data:`MANIFEST`) of its parameters and query edits.

Base images are procedural (:func:`isc.synth.draw.base_image`) or cut from photos and drawings (:mod:`isc.synth.photos`);
queries are edited copies of them (:mod:`isc.synth.edits`). Every image is drawn from its own generator seeded by
(seed, split, index), so a dataset is the same bytes whatever the number of worker processes."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import isc
from isc.core.competition import (
    DEFAULT_REGION,
    ID_PATTERNS,
    bucket_for_region,
    image_id,
    images_prefix,
    metadata_file,
    split_folder,
)
from isc.core.files import InputError, SettingError, atomic_path, write_json
from isc.core.tables import write_ground_truth, write_metadata
from isc.synth.draw import base_image
from isc.synth.edits import random_edit_chain
from isc.synth.photos import BaseSource, PhotoOptions, render_base, with_base_images

MANIFEST = "isc_synth.json"
SPLIT_CODES = {"reference": 1, "training": 2, "query": 3}  # the second word of every image's seed


@dataclass(frozen=True)
class _Task:
    split: str
    index: int
    image_id: str
    source: str | None = None  # for a query, the reference file it copies (None: a distractor)
    background: str | None = None  # for a query, a training image that edits may paste it onto
    base: BaseSource | None = None  # the photo tile or drawing to draw from (None: a procedural image)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def _make_image(task: _Task, out_dir: Path, seed: int, min_size: int, max_size: int) -> tuple[str, str, list[str]]:
    """Draw, encode and write one image; returns (id, md5 of the file, edits applied)."""
    rng = _image_rng(seed, task.split, task.index)
    edits: list[str] = []
    if task.split == "query":
        if task.source is None:  # a distractor: an image that is in neither the references nor the training set
            original = _base_image(task, rng, min_size, max_size)
        else:
            with Image.open(task.source) as f:
                original = f.convert("RGB")
        if task.background is None:
            backgrounds = [base_image(rng, min_size, max_size)]
        else:  # as in DISC21, the other image of an overlay edit comes from the dataset
            with Image.open(task.background) as f:
                backgrounds = [f.convert("RGB")]
        image, edits = random_edit_chain(original, rng, backgrounds)
        if max(image.size) > 2 * max_size or min(image.size) < 16:  # keep queries in a sane size range
            factor = min(2 * max_size / max(image.size), max(1.0, 16 / min(image.size)))
            image = image.resize((max(16, round(image.width * factor)), max(16, round(image.height * factor))),
                                 Image.Resampling.BILINEAR)
        quality = int(rng.integers(60, 96))
    else:
        image = _base_image(task, rng, min_size, max_size)
        quality = int(rng.integers(85, 98))  # photos as shared online: high quality, fine grain
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    data = buffer.getvalue()
    with atomic_path(split_folder(out_dir, task.split) / f"{task.image_id}.jpg") as tmp:
        tmp.write_bytes(data)
    return task.image_id, hashlib.md5(data).hexdigest(), edits


def _base_image(task: _Task, rng: np.random.Generator, min_size: int, max_size: int) -> Image.Image:
    if task.base is None:
        return base_image(rng, min_size, max_size)
    return render_base(task.base, rng, min_size, max_size)


def _run_task(args: tuple[_Task, Path, int, int, int]) -> tuple[str, str, list[str]]:
    return _make_image(*args)


def _match_plan(rng: np.random.Generator, first: int, n_queries: int, n_references: int, match_fraction: float) -> dict[str, str]:
    """Query id -> reference id for the queries that copy a reference, in a shuffled pairing."""
    n_match = min(round(n_queries * match_fraction), n_queries) if n_references else 0
    matched = np.sort(rng.choice(n_queries, size=n_match, replace=False))
    references = rng.choice(n_references, size=n_match, replace=n_match > n_references)
    return {image_id("query", first + int(q)): image_id("reference", int(r)) for q, r in zip(matched, references, strict=True)}


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a non-empty folder that a previous run of isc-synth did not write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        manifest = out_dir / MANIFEST
        try:
            ok = json.loads(manifest.read_text()).get("generator") == "isc-synth"
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise InputError(f"{out_dir}: folder is not empty and was not written by isc-synth (no {MANIFEST}); "
                             "choose a new or empty folder")


@dataclass(frozen=True)
class SynthOptions:
    """What a synthetic dataset holds; checked once, here. ``match_fraction`` of the queries of each phase are
    edited copies of random references, the others edited images found nowhere else; the base images' long
    sides lie in [``min_size``, ``max_size``] (queries up to twice)."""

    seed: int = 0
    references: int = 600
    queries: int = 300  # of phase 1
    phase2_queries: int = 100
    training: int = 600
    min_size: int = 200
    max_size: int = 400
    match_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("seed", "references", "queries", "phase2_queries", "training"):
            if getattr(self, name) < 0:
                raise SettingError(name, f"must be >= 0, got {getattr(self, name)}")
        if max(self.queries, self.phase2_queries) > 50_000 or max(self.references, self.training) > 1_000_000:
            raise InputError("at most 50,000 queries per phase and 1,000,000 references or training images "
                             "(the ids' range)")
        if not 8 <= self.min_size <= self.max_size:
            raise InputError(f"image sizes need 8 <= min_size <= max_size, got {self.min_size} and {self.max_size}")
        if not 0 <= self.match_fraction <= 1:
            raise SettingError("match_fraction", f"must be in [0, 1], got {self.match_fraction}")


def _draw_images(first_stage: list[_Task], second_stage: list[_Task], common: tuple, workers: int | None,
                 quiet: bool) -> dict[str, tuple[str, list[str]]]:
    """{image id: (MD5, edits)} of every task drawn, the first stage's before the second's; ``common``:
    :func:`_make_image`'s other arguments."""
    results: dict[str, tuple[str, list[str]]] = {}
    n_workers = max(1, min(workers or os.cpu_count() or 1, 16))
    with tqdm(total=len(first_stage) + len(second_stage), desc="isc-synth", unit="img", disable=quiet) as bar:
        if n_workers == 1:
            for task in first_stage + second_stage:
                image, md5, edits = _make_image(task, *common)
                results[image] = (md5, edits)
                bar.update()
        else:
            # spawn: safe beside threads (an S3 server, a test runner); every image has its own seed anyway
            with multiprocessing.get_context("spawn").Pool(n_workers) as pool:
                for stage in (first_stage, second_stage):  # queries read the references written by the first stage
                    for image, md5, edits in pool.imap_unordered(_run_task, [(t, *common) for t in stage], chunksize=4):
                        results[image] = (md5, edits)
                        bar.update()
    return results


def generate_dataset(
    out_dir: str | Path,
    options: SynthOptions = SynthOptions(),
    *,
    base_images: PhotoOptions | None = None,
    workers: int | None = None,
    quiet: bool = False,
    **settings: object,
) -> dict[str, int]:
    """Write a synthetic dataset in the competition's layout under ``out_dir`` as ``options`` say
    (:class:`SynthOptions`, its fields overridden by ``settings``); returns counts.

    ``base_images``: cut the base images from real photos and drawings (:mod:`isc.synth.photos`), not procedural
    ones. ``workers``: processes drawing images (the bytes do not depend on them).
    """
    import pandas as pd  # here only: the spawned workers import this module and need no pandas

    options = replace(options, **settings)
    seed, references, queries, training = options.seed, options.references, options.queries, options.training
    phase2_queries, min_size, max_size = options.phase2_queries, options.min_size, options.max_size
    if base_images is not None:
        base_images.check()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    for split in ("query", "reference", "training"):
        split_folder(out_dir, split).mkdir(parents=True, exist_ok=True)
    params: dict[str, object] = asdict(options)
    if base_images is not None:
        params["base_images"] = base_images.params()
    # written first, so that an interrupted run can be overwritten by the next one
    write_json(out_dir / MANIFEST, {"generator": "isc-synth", "isc_version": isc.__version__, "complete": False,
                                    "params": params}, indent=1, sort_keys=True)

    plan_rng = np.random.default_rng([seed, 0])
    matches = {**_match_plan(plan_rng, 0, queries, references, options.match_fraction),
               **_match_plan(plan_rng, 50_000, phase2_queries, references, options.match_fraction)}
    ref_path = {i: str(split_folder(out_dir, "reference") / f"{i}.jpg") for i in matches.values()}
    first_stage = [_Task("reference", i, image_id("reference", i)) for i in range(references)]
    first_stage += [_Task("training", i, image_id("training", i)) for i in range(training)]
    query_ids = [image_id("query", i) for i in range(queries)] + [image_id("query", 50_000 + i) for i in range(phase2_queries)]
    backgrounds = [str(split_folder(out_dir, "training") / f"{image_id('training', int(i))}.jpg")
                   for i in plan_rng.integers(0, training, len(query_ids))] if training else [None] * len(query_ids)
    second_stage = [_Task("query", int(q[1:]), q, ref_path.get(matches.get(q, "")), background)
                    for q, background in zip(query_ids, backgrounds, strict=True)]
    if base_images is not None:  # tiles of photos and drawings, each used once, instead of procedural images
        tasks = with_base_images(first_stage + second_stage, base_images, seed, quiet)
        first_stage, second_stage = tasks[:len(first_stage)], tasks[len(first_stage):]

    results = _draw_images(first_stage, second_stage, (out_dir, seed, min_size, max_size), workers, quiet)

    for split, tasks in (("reference", first_stage[:references]), ("training", first_stage[references:]),
                         ("query", second_stage)):
        ids = [t.image_id for t in tasks]
        uri = f"s3://{bucket_for_region(DEFAULT_REGION)}/{images_prefix(split)}"
        write_metadata(metadata_file(out_dir, split), pd.DataFrame(
            {"image_id": ids, "s3_uri": [f"{uri}{i}.jpg" for i in ids], "md5_checksum": [results[i][0] for i in ids]}))
        _remove_stale_images(split_folder(out_dir, split), set(ids), split)
    for name, ids in (("ground_truth.csv", query_ids[:queries]), ("ground_truth_phase2.csv", query_ids[queries:])):
        write_ground_truth(out_dir / name, pd.DataFrame({"query_id": ids, "reference_id": [matches.get(q, "") for q in ids]}))

    summary = {"references": references, "queries": queries, "phase2_queries": phase2_queries, "training": training,
               "matches": sum(1 for q in query_ids[:queries] if q in matches),
               "phase2_matches": sum(1 for q in query_ids[queries:] if q in matches)}
    write_json(out_dir / MANIFEST, {"generator": "isc-synth", "isc_version": isc.__version__, "complete": True,
                                    "params": params, "summary": summary,
                                    "query_edits": {q: results[q][1] for q in query_ids},
                                    **({"base_images": {t.image_id: t.base.record() for t in first_stage + second_stage
                                                        if t.base is not None}} if base_images else {})},
               indent=1, sort_keys=True)
    return summary


def _remove_stale_images(folder: Path, keep: set[str], split: str) -> None:
    """Drop images a previous, larger run left behind (only files named like this split's ids)."""
    for path in folder.iterdir():
        if path.suffix == ".jpg" and ID_PATTERNS[split].fullmatch(path.stem) and path.stem not in keep:
            path.unlink()


def read_manifest(out_dir: str | Path) -> dict:
    """The parameters, summary and per-query edits that isc-synth recorded in ``out_dir``."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{out_dir}: no {MANIFEST}, not an isc-synth dataset")
    return json.loads(path.read_text())
