"""PCA-whitening of descriptors, learnt on training descriptors and applied identically to every split.

``y = normalize(((x - mean) @ components.T) / sqrt(eigenvalues + eps))``: the descriptor track's limit is
256 dimensions, and whitening + L2 normalisation is what SSCD and the winning solutions apply before search."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from isc.core.competition import DESCRIPTOR_TRACK_MAX_DIM, first_bad_id
from isc.core.descriptors import DescriptorFile, write_descriptors
from isc.core.files import InputError, atomic_path, check_file
from isc.search.negatives import NegativeEmbeddings, subtract_negative_embeddings

CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class PCAWhitening:
    """A learnt projection: ``mean`` [d], ``components`` [k, d] (unit rows), ``eigenvalues`` [k]."""

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    whiten: bool = True
    eps: float = 0.0
    attrs: dict[str, object] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    def matrix(self) -> np.ndarray:
        """The [d, k] matrix applied to centred descriptors."""
        scale = 1 / np.sqrt(self.eigenvalues + self.eps) if self.whiten else np.ones_like(self.eigenvalues)
        return (self.components * scale[:, None]).T.astype(np.float32)

    def apply(self, descriptors: np.ndarray) -> np.ndarray:
        """Project, whiten and L2-normalise [n, d] descriptors to float32 [n, k]."""
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.mean.shape[0]:
            raise InputError(f"descriptors of shape {descriptors.shape} do not fit a PCA learnt on "
                             f"{self.mean.shape[0]}-d descriptors")
        matrix, mean = self.matrix(), self.mean.astype(np.float32)
        out = np.empty((len(descriptors), self.dim), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is the one-line error below, not a warning
            for start in range(0, len(descriptors), CHUNK_ROWS):
                out[start:start + CHUNK_ROWS] = (descriptors[start:start + CHUNK_ROWS] - mean) @ matrix
        if not np.isfinite(out).all():
            row = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
            raise InputError(f"descriptor #{row} overflows float32 when whitened (values up to "
                             f"{np.abs(descriptors[row]).max():.3g}): L2-normalise the descriptors first")
        with np.errstate(over="ignore"):
            norms = np.linalg.norm(out, axis=1, keepdims=True)
        huge = ~np.isfinite(norms[:, 0])  # a norm beyond float32 (not its descriptor): taken in float64
        norms = norms.astype(np.float64)
        norms[huge] = np.linalg.norm(out[huge].astype(np.float64), axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)

    def save(self, path: str | Path) -> None:
        """Write an .npz file (arrays plus a JSON ``attrs``), atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, components=self.components, eigenvalues=self.eigenvalues,
                     whiten=self.whiten, eps=self.eps, attrs=json.dumps(self.attrs))

    @classmethod
    def load(cls, path: str | Path) -> PCAWhitening:
        check_file(path, "PCA file", here=True)
        try:
            with np.load(path, allow_pickle=False) as f:
                pca = cls(f["mean"], f["components"], f["eigenvalues"], bool(f["whiten"]), float(f["eps"]),
                          json.loads(str(f["attrs"])))
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: not a PCA file written by isc-pca ({_npz_reason(e)})") from None
        if not all(np.isfinite(a).all() for a in (pca.mean, pca.components, pca.eigenvalues)):
            raise InputError(f"{path}: the PCA holds NaN or infinite values (learnt on overflowing descriptors): "
                             "learn it again")
        return pca


def _npz_reason(error: Exception) -> str:
    """Why np.load failed, without numpy's advice about allow_pickle (a CSV or text file reaches it too)."""
    if isinstance(error, ValueError) and "allow_pickle" in str(error):
        return "not an .npz archive"
    return str(error)


def learn_pca(descriptors: np.ndarray, dim: int = DESCRIPTOR_TRACK_MAX_DIM, whiten: bool = True,
              eps_ratio: float = 1e-6, attrs: dict[str, object] | None = None) -> PCAWhitening:
    """Learn a PCA (whitening) to ``dim`` dimensions from [n, d] training descriptors.

    ``eps_ratio`` x the largest eigenvalue is added before whitening, so near-empty directions are not
    blown up.
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    n, d = descriptors.shape
    if not 1 <= dim <= min(n - 1, d):
        raise InputError(f"cannot learn {dim} dimensions from {n} descriptors of dimension {d} "
                         f"(at most min(n - 1, d) = {min(n - 1, d)})")
    mean = descriptors.mean(axis=0, dtype=np.float64)
    covariance = np.zeros((d, d))
    for start in range(0, n, CHUNK_ROWS):
        centred = descriptors[start:start + CHUNK_ROWS] - mean
        covariance += centred.T @ centred
    eigenvalues, eigenvectors = np.linalg.eigh(covariance / (n - 1))
    # compared, not cast: a cast to float32 would warn of the overflow before this one-line error says it
    if not np.all(np.abs(eigenvalues) <= np.finfo(np.float32).max):
        raise InputError(f"the descriptors' variance overflows float32 (values up to {np.abs(descriptors).max():.3g}): "
                         "L2-normalise the descriptors first")
    top = np.argsort(eigenvalues)[::-1][:dim]
    eigenvalues = np.maximum(eigenvalues[top], 0)
    components = eigenvectors[:, top].T
    # a deterministic sign per component: the largest coordinate positive
    signs = np.sign(components[np.arange(dim), np.abs(components).argmax(axis=1)])
    return PCAWhitening(mean.astype(np.float32), (components * signs[:, None]).astype(np.float32),
                        eigenvalues.astype(np.float32), whiten, float(eps_ratio * eigenvalues[0]),
                        {**(attrs or {}), "n_train": n, "input_dimension": d, "dimension": dim})


def descriptor_split(source: DescriptorFile) -> str | None:
    """The competition split a descriptor file holds: its ``split`` attribute (isc-extract --split), else the
    split every id belongs to, else None (images of one's own)."""
    if source.attrs.get("split"):
        return str(source.attrs["split"])
    return next((split for split in ("training", "reference", "query")
                 if source.ids and first_bad_id(source.ids, split) is None), None)


def learn_pca_file(train: str | Path, output: str | Path, dim: int = DESCRIPTOR_TRACK_MAX_DIM,
                   whiten: bool = True) -> PCAWhitening:
    """Learn from a descriptor file (e.g. the training split's) and save to ``output`` (.npz), recording the
    file, its split (:func:`descriptor_split`: the rules allow only the training split's) and its model."""
    return learn_pca_descriptors(DescriptorFile.read(train), output, dim, whiten)


def learn_pca_descriptors(training: DescriptorFile, output: str | Path, dim: int = DESCRIPTOR_TRACK_MAX_DIM,
                          whiten: bool = True) -> PCAWhitening:
    """:func:`learn_pca_file` of descriptors already read (or joined: :mod:`isc.search.ensemble`)."""
    source = {"trained_on": str(training.path), "trained_split": descriptor_split(training),
              **{k: training.attrs[k] for k in ("model", "model_fingerprint") if k in training.attrs}}
    pca = learn_pca(training.descriptors, dim, whiten, attrs=source)
    pca.save(output)
    return pca


def concatenate_descriptors(parts: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """An ensemble's descriptors: each part L2-normalised and scaled by its weight, concatenated, L2-normalised.

    A weight sets the part's share of the inner product: w² of that model's cosine similarity.
    """
    weights = [1.0] * len(parts) if weights is None else weights
    if len(parts) < 2 or len(weights) != len(parts):
        raise InputError(f"an ensemble needs at least 2 parts and one weight per part, got {len(parts)} parts "
                         f"and {len(weights)} weights")
    if len({len(part) for part in parts}) != 1:
        raise InputError(f"the parts have different numbers of rows: {[len(part) for part in parts]}")
    scaled = [np.asarray(part, dtype=np.float32) * np.float32(weight)
              / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12).astype(np.float32)
              for part, weight in zip(parts, weights, strict=True)]
    joined = np.hstack(scaled)
    return joined / np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), 1e-12)


def _check_pca_input(pca: PCAWhitening, path: str | Path, attrs: dict[str, object]) -> None:
    # a PCA records only its training descriptors' model name and fingerprint: the fingerprints are compared
    learnt, given = pca.attrs.get("model_fingerprint"), attrs.get("model_fingerprint")
    if learnt and given and learnt != given:
        raise InputError(f"{path}: made by model {attrs.get('model')} ({given}), but the PCA was "
                         f"learnt on descriptors of {pca.attrs.get('model')} ({learnt})")
    if "pca" in attrs:
        raise InputError(f"{path}: already PCA-whitened (attribute pca={attrs['pca']})")


def apply_pca_file(pca: PCAWhitening | str | Path, descriptors_file: str | Path, output: str | Path,
                   negatives: str | Path | None = None, subtraction: NegativeEmbeddings = NegativeEmbeddings(),
                   quiet: bool = True) -> int:
    """Whiten a descriptor file into ``output`` (same ids, attributes extended); returns the rows written.

    Refuses descriptors of another model than the PCA's training descriptors (model fingerprints differ).
    ``negatives``: a training descriptor file, whitened alike, whose ``subtraction.k`` nearest descriptors are
    subtracted from each output descriptor with weight ``subtraction.beta``
    (:func:`isc.search.negatives.subtract_negative_embeddings`).
    """
    return next(apply_pca_files(pca, [(descriptors_file, output)], negatives, subtraction, quiet))


def apply_pca_files(pca: PCAWhitening | str | Path, pairs: Sequence[tuple[str | Path, str | Path]],
                    negatives: str | Path | None = None, subtraction: NegativeEmbeddings = NegativeEmbeddings(),
                    quiet: bool = True) -> Iterator[int]:
    """:func:`apply_pca_file` for each (descriptor file, output) of ``pairs``, the ``negatives`` read and
    whitened once for all; yields the rows written as each file is done."""
    pca = pca if isinstance(pca, PCAWhitening) else PCAWhitening.load(pca)
    whitened_negatives = None
    for descriptors_file, output in pairs:
        source = DescriptorFile.read(descriptors_file, views=True)
        whitened = whiten_descriptors(pca, source)
        extra: dict[str, object] = {}
        if negatives is not None:
            if whitened_negatives is None:  # after the first file's check, as one file at a time did
                training = DescriptorFile.read(negatives)
                _check_pca_input(pca, negatives, training.attrs)
                whitened_negatives, negatives_split = pca.apply(training.descriptors), descriptor_split(training)
            whitened = subtract_negative_embeddings(whitened, whitened_negatives, subtraction.beta, subtraction.k,
                                                    quiet=quiet)
            extra["negative_embeddings"] = json.dumps({"training": str(negatives), "split": negatives_split,
                                                       **subtraction.recorded()})
        write_descriptors(output, source.ids, whitened, {**whitened_attrs(pca, source.attrs), **extra})
        yield len(source.ids)


def whiten_descriptors(pca: PCAWhitening, source: DescriptorFile) -> np.ndarray:
    """``source``'s descriptors whitened by ``pca``, refused when another model made them than its training's."""
    _check_pca_input(pca, source.path, source.attrs)
    return pca.apply(source.descriptors)


def whitened_attrs(pca: PCAWhitening, attrs: dict[str, object]) -> dict[str, object]:
    """A descriptor file's attributes once ``pca`` whitened it."""
    return {**attrs, "pca": json.dumps(pca.attrs), "pca_whiten": pca.whiten, "normalized": True}
