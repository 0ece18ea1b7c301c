"""The descriptor track's one vector per image, made from whitened descriptors (of one model, or of several
joined before the PCA: :mod:`isc.search.ensemble`): a query's views pooled (:mod:`isc.search.pooling`) and
negative embeddings subtracted (:mod:`isc.search.negatives`), the same transform for queries and references.
DBA and query expansion (:mod:`isc.search.expansion`) are not offered here: they describe a reference or a
query with the other references, which the ISC 2021 rules forbid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isc.core.descriptors import DescriptorFile, write_descriptors
from isc.core.files import InputError, SettingError
from isc.search.negatives import NegativeEmbeddings, subtract_negative_embeddings
from isc.search.pca import descriptor_split
from isc.search.pooling import ViewPooling, pool_views


@dataclass(frozen=True)
class DescriptorTrack:
    """What the descriptor-track file is made of: ``ensemble``, the other models whose descriptors join the
    run's model's before the PCA, each (model name, weight; the run's model weighs 1) (None: the run's default,
    which its model decides; (): none); then what is done to the whitened descriptors: ``pooling`` (None: each
    query's full view alone), ``negatives`` (None: none subtracted)."""

    pooling: ViewPooling | None = None
    negatives: NegativeEmbeddings | None = None
    ensemble: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        names = [name for name, _ in self.ensemble or ()]
        for name, weight in self.ensemble or ():
            if not name:
                raise SettingError("ensemble", "names a model without its name (MODEL:WEIGHT)")
            if not (math.isfinite(weight) and weight > 0):
                raise SettingError("ensemble", f"weights are finite and above 0, got {weight:g} for {name}")
        if len(set(names)) != len(names):
            raise SettingError("ensemble", f"names a model twice: {', '.join(names)}")

    @property
    def active(self) -> bool:
        """Whether the whitened descriptors change at all (else the whitened files are the track's)."""
        return self.pooling is not None or self.negatives is not None

    def recorded(self) -> dict[str, object]:
        """The settings as the descriptor files and their records quote them."""
        return {"pooling": self.pooling and self.pooling.recorded(),
                "negatives": self.negatives and self.negatives.recorded()}


def track_descriptors(
    ids: Sequence[str], descriptors: np.ndarray, training: np.ndarray | None, track: DescriptorTrack,
) -> tuple[list[str], np.ndarray]:
    """(ids, descriptors) of the track, float32: rows of a repeated id (an image's views) pooled by
    ``track.pooling``, then ``track.negatives`` subtracted, ``training`` the negatives."""
    if len(set(ids)) != len(ids):
        if track.pooling is None:
            raise InputError("several views of an image and no pooling: the descriptor track takes one row per image")
        ids, descriptors = pool_views(ids, descriptors, track.pooling)
    if track.negatives is not None:
        if training is None:
            raise InputError("negative-embedding subtraction needs the training descriptors")
        descriptors = subtract_negative_embeddings(descriptors, training, track.negatives.beta, track.negatives.k)
    return list(ids), np.asarray(descriptors, np.float32)


def write_track_file(source: Path, training: Path | None, track: DescriptorTrack, output: Path,
                     views: Path | None = None) -> None:
    """``output``: the track's descriptors of the whitened file ``source`` (its ids and attributes), made from
    ``views`` (the same images, one row per view) when given; the file records ``track`` and, with negatives,
    the training file they came from (its split checked by the submission)."""
    plain = DescriptorFile.read(source)
    described = DescriptorFile.read(views, views=True) if views is not None else plain
    if set(described.ids) != set(plain.ids):
        raise InputError(f"{views}: its views are of other images than {source}'s")
    negatives = DescriptorFile.read(training) if track.negatives is not None and training is not None else None
    ids, descriptors = track_descriptors(described.ids, described.descriptors,
                                         None if negatives is None else negatives.descriptors, track)
    extra: dict[str, object] = {"descriptor_track": json.dumps(track.recorded())}
    if negatives is not None:
        extra["negative_embeddings"] = json.dumps({"training": str(training), "split": descriptor_split(negatives),
                                                   **track.negatives.recorded()})
    write_descriptors(output, ids, descriptors, {**plain.attrs, **extra})
