"""What the steps of ``isc-run`` share about the work folder: which descriptor files the matching track
searches, a descriptor file whitened unless up to date, and how a step made again says why."""

from __future__ import annotations

from pathlib import Path

from isc.core.made_from import MISSING, MadeFrom
from isc.extract.extraction import ExtractOptions
from isc.models import DescriptorModel
from isc.search.pca import apply_pca_file
from isc.verify.local_features import VerifyOptions
from isc.verify.regions import RegionDescriber


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
