"""A bounded thread map for very long iterables (a million files to hash or fetch): no future per item."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator


def bounded_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``fn`` over ``items`` in ``workers`` threads that pull from one iterator; results as they complete.

    No future per item (a million at once would hold gigabytes, and waiting on them costs O(pending) each
    time); closing the generator (Ctrl-C, giving up) lets each thread finish its item and stop.
    """
    items, lock, results, stop = iter(items), threading.Lock(), queue.SimpleQueue(), threading.Event()
    finished = object()

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:
                    item = next(items, finished)
                if item is finished:
                    break
                results.put((fn(item), None))
        except BaseException as e:  # handed to the consumer, raised there
            results.put((None, e))
        finally:
            results.put((finished, None))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            value, error = results.get()
            if error is not None:
                raise error
            if value is finished:
                running -= 1
            else:
                yield value
    finally:
        stop.set()
        for thread in threads:
            thread.join()
