"""How worker processes start: never forked from this process, whose threads (tqdm's monitor, BLAS, OpenMP and
onnxruntime pools, the readers) a forked child inherits frozen, with whatever lock one of them held."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext


def worker_context(preload: Sequence[str] = ()) -> BaseContext:
    """forkserver on Linux: each worker forks from one single-threaded server started on first use, which
    imports the ``preload`` modules once, so a worker starts in milliseconds with them loaded; spawn elsewhere."""
    import multiprocessing  # here: a run without worker processes never loads it

    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))  # takes effect when the server starts, ignored after
    return context
