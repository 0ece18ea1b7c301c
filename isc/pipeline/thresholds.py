"""isc-find's defaults by model, each measured on photo benchmarks (docs/BENCHMARKS.md, "Copies in one's own
folders"): the thresholds on plain, normalised and verified scores, and the sizes each image is described at, which
the thresholds hold for (:data:`DEFAULT_THRESHOLDS`); :func:`default_threshold` refuses a model or options that
were not measured, where another's threshold would be silently wrong."""

from __future__ import annotations

from dataclasses import dataclass

from isc.core.files import SettingError


@dataclass(frozen=True)
class Thresholds:
    """A model's default thresholds, each measured on photo benchmarks (docs/BENCHMARKS.md, isc-find): on plain
    scores, on scores normalised by training images (None: not measured) and on verified scores, with each image
    described at ``scales`` (relative to its size; the model's default, which the thresholds hold for)."""

    plain: float
    normalised: float | None
    verified: float
    scales: tuple[float, ...] = (1.0,)


# the default threshold by model, as the benchmarks ran it (its own weights and options); a model not listed has none
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    # at its size and half of it: on photo sets A and B as many copies or more than at one size (A: 215 against
    # 210 verified) at a precision as high or higher; each threshold the lowest keeping, on both sets, the
    # precision of the one-size defaults (0.55, 0.5, 0.45), the larger of the two, rounded up
    # (docs/BENCHMARKS.md, "Each image at two sizes in isc-find")
    "sscd": Thresholds(plain=0.56, normalised=0.50, verified=0.60, scales=(1.0, 0.5)),
    # each the lowest keeping sscd's precision at its one-size default on photo sets A and B, the larger of the
    # two (A's), with the default cut crops (docs/BENCHMARKS.md, "Crops cut from the full view"); at two sizes it
    # found fewer copies at that precision on set A
    "sscd_distilled": Thresholds(plain=0.61, normalised=0.66, verified=0.65),
}


def default_scales(model: str) -> tuple[float, ...]:
    """The sizes ``model``'s images are described at unless told: those its thresholds were measured at
    (:data:`DEFAULT_THRESHOLDS`), else the image's own alone."""
    thresholds = DEFAULT_THRESHOLDS.get(model)
    return (1.0,) if thresholds is None else thresholds.scales


def default_threshold(model: str, verified: bool, normalised: bool, as_benchmarked: bool = True) -> float:
    """The threshold measured for ``model`` (:data:`DEFAULT_THRESHOLDS`) on verified, normalised or plain scores;
    ``as_benchmarked`` False (other weights or options): none. Refused where none was measured: another model's
    would be silently wrong (sscd's 0.55 chains sscd_distilled's pairs into one group of 82 images on set B)."""
    if verified and normalised:
        raise SettingError("threshold", "has no default for verified scores normalised by training images: give one")
    thresholds = DEFAULT_THRESHOLDS.get(model) if as_benchmarked else None
    value = None if thresholds is None else thresholds.verified if verified else \
        thresholds.normalised if normalised else thresholds.plain
    if value is None:
        scores = " on scores normalised by training images" if normalised else ""
        have = [name for name, measured in DEFAULT_THRESHOLDS.items() if not normalised or measured.normalised]
        which = f"model {model!r}" + ("" if as_benchmarked else " with other weights or options")
        raise SettingError("threshold", f"has no default for {which}{scores}: give one (measured for "
                           f"{', '.join(have)} with their own weights and options; docs/BENCHMARKS.md)")
    return value
