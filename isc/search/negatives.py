"""Negative-embedding subtraction: each descriptor minus a weighted mean of its nearest training images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from isc.core.files import InputError
from isc.search.knn import check_pair, knn
from isc.search.normalisation import MAX_BETA
from isc.search.vectors import prepare_descriptors


@dataclass(frozen=True)
class NegativeEmbeddings:
    """How much of its nearest training descriptors each descriptor loses: ``beta`` times the mean of its
    ``k`` nearest; checked once, here."""

    beta: float = 0.25
    k: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and 0 <= self.beta <= MAX_BETA):
            raise InputError(f"negative-embedding beta must be a finite number within 0..{MAX_BETA:g}, got {self.beta}")
        if self.k < 1:
            raise InputError(f"negative-embedding k must be at least 1, got {self.k}")

    def recorded(self) -> dict[str, object]:
        """The settings as a whitened file's attributes record them."""
        return {"beta": self.beta, "k": self.k}


def subtract_negative_embeddings(
    descriptors: np.ndarray, training: np.ndarray, beta: float, k: int, backend: str = "auto", quiet: bool = True
) -> np.ndarray:
    """``normalize(x − β · mean of x's k nearest training descriptors)``, float32 [n, d].

    The descriptor-track counterpart of score normalisation (1st place of the ISC 2021 descriptor
    track): what a descriptor shares with its nearest unrelated images is removed from the descriptor
    itself. ``training`` must not hold the descriptors themselves (each would subtract itself).
    """
    NegativeEmbeddings(beta, k)  # the settings' checks
    if k > len(training):
        raise InputError(f"negative-embedding k must be between 1 and the {len(training)} training descriptors, "
                         f"got {k}")
    descriptors = prepare_descriptors(descriptors, "descriptor")
    training = prepare_descriptors(training, "training")
    check_pair(descriptors, training, "descriptor and training")
    neighbours = knn(descriptors, training, k, "ip", backend, quiet)[1]
    subtracted = descriptors - np.float32(beta) * training[neighbours].mean(axis=1)
    return subtracted / np.maximum(np.linalg.norm(subtracted, axis=1, keepdims=True), 1e-12)
