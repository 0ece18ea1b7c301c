"""Negative-embedding subtraction: each descriptor minus a weighted mean of its nearest training images.
"""

from __future__ import annotations

import numpy as np

from isc.core.files import InputError
from isc.search.knn import check_pair, knn
from isc.search.vectors import prepare_descriptors


def subtract_negative_embeddings(
    descriptors: np.ndarray, training: np.ndarray, beta: float, k: int, backend: str = "auto", quiet: bool = True
) -> np.ndarray:
    """``normalize(x − β · mean of x's k nearest training descriptors)``, float32 [n, d].

    The descriptor-track counterpart of score normalisation (1st place of the ISC 2021 descriptor
    track): what a descriptor shares with its nearest unrelated images is removed from the descriptor
    itself. ``training`` must not hold the descriptors themselves (each would subtract itself).
    """
    if not np.isfinite(beta) or beta < 0:
        raise InputError(f"negative-embedding beta must be a finite number >= 0 (--neg-beta), got {beta}")
    if not 1 <= k <= len(training):
        raise InputError(f"negative-embedding k must be between 1 and the {len(training)} training descriptors "
                         f"(--neg-k), got {k}")
    descriptors = prepare_descriptors(descriptors, "descriptor")
    training = prepare_descriptors(training, "training")
    check_pair(descriptors, training, "descriptor and training")
    neighbours = knn(descriptors, training, k, "ip", backend, quiet)[1]
    subtracted = descriptors - np.float32(beta) * training[neighbours].mean(axis=1)
    return subtracted / np.maximum(np.linalg.norm(subtracted, axis=1, keepdims=True), 1e-12)
