"""Progress bars: tqdm's, or for a quiet run a bar that shows nothing, made without importing tqdm (whose import
reads the installed packages' metadata: tens of milliseconds of a small isc-find run, docs/BENCHMARKS.md)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class SilentBar:
    """What ``tqdm(..., disable=True)`` is, for the calls the toolkit makes: iterates, counts nothing, shows nothing."""

    def __init__(self, iterable: Iterable | None = None):
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> SilentBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def close(self) -> None:
        return None


def progress(iterable: Iterable | None = None, *, disable: bool = False, **options: Any) -> Any:  # noqa: ANN401 - tqdm
    """``tqdm(iterable, **options)``, or with ``disable`` a :class:`SilentBar` (tqdm not imported)."""
    if disable:
        return SilentBar(iterable)
    from tqdm import tqdm  # here: a quiet run never pays its import

    return tqdm(iterable, **options)
