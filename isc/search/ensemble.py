"""Several models' descriptors of the same images joined into one vector before the PCA, for the descriptor
track: each model's row L2-normalised and weighted, concatenated and L2-normalised again
(:func:`isc.search.pca.concatenate_descriptors`), rows matched by image id; the PCA is learnt on the joined
training descriptors and applied alike to queries and references, so the track's file stays at most 256
dimensions.

A joined file records each other model's attributes and weight (``ensemble``), the models' names and weights
(``model``: ``sscd + sscd_distilled x0.5``) and a fingerprint of the whole (``model_fingerprint``): files joined
from other models or weights never mix, in a PCA or a submission.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from isc.core.descriptors import DescriptorFile, model_attributes, write_descriptors
from isc.core.files import InputError, jsonable
from isc.search.pca import (
    PCAWhitening,
    concatenate_descriptors,
    learn_pca_descriptors,
    whiten_descriptors,
    whitened_attrs,
)


def read_joined(first: str | Path, others: Sequence[tuple[str | Path, float]], views: bool = False) -> DescriptorFile:
    """The descriptors of ``first`` (weight 1) joined with those of each (file, weight) of ``others``, which hold
    one row for every image of ``first`` (none: ``first`` as it is); ``views``: ``first`` may hold several rows of
    an image (its views), each joined with the other models' one row of it."""
    main = DescriptorFile.read(first, views=views)
    if not others:
        return main
    parts, recorded = [main.descriptors], []
    for path, weight in others:
        other = DescriptorFile.read(path)
        row = {image: n for n, image in enumerate(other.ids)}
        if set(row) != set(main.ids):
            image = min(set(row) ^ set(main.ids))
            raise InputError(f"{path}: describes other images than {first} ({image} is in one of them only): the "
                             "models of an ensemble describe the same images")
        parts.append(other.descriptors[[row[image] for image in main.ids]])
        recorded.append({**jsonable(model_attributes(other.attrs)), "weight": float(weight)})
    joined = concatenate_descriptors(parts, [1.0, *(float(weight) for _, weight in others)])
    ensemble = json.dumps(recorded, sort_keys=True)
    fingerprint = hashlib.sha256(f"{main.attrs.get('model_fingerprint')}|{ensemble}".encode()).hexdigest()[:16]
    # named as the whitening step says it, so that a refusal names the ensemble, not its first model
    model = " + ".join([str(main.attrs.get("model")), *(f"{part['model']} x{part['weight']:g}" for part in recorded)])
    attrs = {**main.attrs, "model": model, "ensemble": ensemble, "model_fingerprint": fingerprint}
    return DescriptorFile(Path(first), main.ids, joined.astype(np.float32), attrs)


def learn_joined_pca(training: str | Path, others: Sequence[tuple[str | Path, float]], output: str | Path,
                     dim: int) -> PCAWhitening:
    """A PCA-whitening to ``dim`` dimensions learnt on the training descriptors joined (:func:`read_joined`),
    saved to ``output``."""
    return learn_pca_descriptors(read_joined(training, others), output, dim)


def write_joined_whitened(pca: PCAWhitening, first: str | Path, others: Sequence[tuple[str | Path, float]],
                          output: str | Path) -> int:
    """``first`` joined with ``others`` (:func:`read_joined`, its views kept) and whitened by ``pca`` into
    ``output``; returns the rows written. A PCA learnt on other models or weights is refused."""
    joined = read_joined(first, others, views=True)
    write_descriptors(output, joined.ids, whiten_descriptors(pca, joined), whitened_attrs(pca, joined.attrs))
    return len(joined.ids)
