"""Reading and decoding in worker processes beside the inference process (``isc-extract --decode-processes N``).

In one process the file reads, the batch JPEG decoding and the resizing share the interpreter lock with
inference, which caps the whole at well under the rate of each stage alone. Here each of N processes reads
(threads), routes (:func:`isc.extract.nvjpeg_batches.read_for_decode`: nvJPEG or Pillow), decodes and resizes whole
batches exactly as the single-process path does (:func:`isc.extract.nvjpeg_batches.views_of_batch`), and hands each
batch's views over as one tensor: shared memory on the CPU, CUDA IPC on a GPU (nvJPEG decodes in the
workers). Batch k goes to worker k mod N and is received from it, so the order is kept without a reorder
buffer; at most 2 batches per worker are in flight. Broken images are reported as on the single-process
path; any other error in a worker, or its death, ends the run with it. Workers ignore Ctrl-C (their parent
stops them), stop when their parent dies, even by kill -9, and are terminated on every way out.
"""

from __future__ import annotations

import collections
import contextlib
import math
import multiprocessing
import pickle
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch
import torch.multiprocessing  # noqa: F401 (registers the pickling of tensors through shared memory and CUDA IPC)

from isc.core.processes import worker_context
from isc.extract.nvjpeg_batches import read_for_decode, views_of_batch
from isc.extract.plan import ExtractionPlan

BATCHES_PER_WORKER = 2  # in flight: one decoded while the next is read
JOIN_SECONDS = 10  # a worker told to stop has finished its batches: it exits at once




def _pack(per_scale: list[list[torch.Tensor]]) -> tuple[torch.Tensor | None, list[list[tuple[int, ...]]]]:
    """A batch's views as one flat tensor (one shared block to hand over) and their shapes per scale."""
    views = [view.reshape(-1) for scale in per_scale for view in scale]
    return (torch.cat(views) if views else None), [[tuple(view.shape) for view in scale] for scale in per_scale]


def _unpack(flat: torch.Tensor | None, shapes: list[list[tuple[int, ...]]]) -> list[list[torch.Tensor]]:
    """The views per scale of :func:`_pack`'s tensor (views of it, no copy)."""
    if flat is None:
        return [[] for _ in shapes]
    parts = iter(flat.split([math.prod(shape) for scale in shapes for shape in scale]))
    return [[next(parts).view(shape) for shape in scale] for scale in shapes]


def _picklable(error: Exception) -> Exception:
    """``error``, or a RuntimeError saying what it was when it cannot be sent to the parent."""
    try:
        pickle.dumps(error)
    except Exception:  # noqa: BLE001 - any failure to pickle
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _work(paths: Sequence[str], batch_size: int, tasks: Connection, results: Connection, sizes: Sequence[int],
          resize: str, device: str, max_pixels: int, crops: bool, grid: int, cut: bool, threads: int) -> None:
    """A worker: for each batch number received, its views (or the error that stopped it) sent back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    torch.set_num_threads(1)  # a forked OpenMP pool would hang, and the workers fill the cores
    parent = multiprocessing.parent_process()
    readers = ThreadPoolExecutor(threads, thread_name_prefix="isc-read")
    pending: collections.deque = collections.deque()
    try:
        while parent is None or parent.is_alive():
            # every batch already asked for is read while the first is decoded; wait only when none is
            while tasks.poll(0 if pending else 0.5):
                k = tasks.recv()
                if k is None:
                    return
                positions = range(k * batch_size, min((k + 1) * batch_size, len(paths)))
                pending.append((positions, [readers.submit(read_for_decode, Path(paths[i]), max_pixels, sizes,
                                                           crops and not cut, grid) for i in positions]))
            if not pending:
                continue
            positions, futures = pending.popleft()
            try:
                ok, per_scale, broken = views_of_batch(zip(positions, futures, strict=True), sizes, resize,
                                                       torch.device(device), crops, grid, cut)
            except Exception as e:  # noqa: BLE001 - raised again in the parent
                results.send(_picklable(e))
                return
            results.send((ok, *_pack(per_scale), broken))
    except (EOFError, BrokenPipeError):
        return  # the parent is gone
    finally:
        readers.shutdown(wait=False, cancel_futures=True)


def _receive(results: Connection, worker: BaseProcess) -> tuple[list[int], list[list[torch.Tensor]], dict[int, str]]:
    """The next batch of ``worker``; its error raised, or a RuntimeError when it died."""
    while not results.poll(0.2):
        if not worker.is_alive():
            raise RuntimeError(f"decoding process {worker.pid} ended (exit code {worker.exitcode})")
    message = results.recv()
    if isinstance(message, Exception):
        raise message
    ok, flat, shapes, broken = message
    if flat is not None and flat.is_cuda:
        # our own copy: the worker's memory is released now, whenever the worker stops
        flat = flat.clone()
    return ok, _unpack(flat, shapes), broken


def _stop(workers: list[BaseProcess], tasks: list[Connection], finished: bool) -> None:
    """Workers told to stop after a complete run, terminated otherwise; killed if they linger; joined."""
    started = [worker for worker in workers if worker.pid is not None]
    for worker, connection in zip(workers, tasks, strict=True):
        if worker in started and finished:
            connection.send(None)
        elif worker in started:
            worker.terminate()
    deadline = time.monotonic() + (JOIN_SECONDS if finished else 2)
    for worker in started:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join()


def process_batches(paths: Sequence[Path], resize: str,
                    plan: ExtractionPlan) -> Iterator[tuple[list[int], list[list[torch.Tensor]], dict[int, str]]]:
    """(positions decoded, their views per scale on ``plan.device``, broken: position -> reason) per batch of
    ``plan.batch_size`` paths in order, as the single-process torchvision pipeline yields them, made by
    ``plan.decode_processes`` worker processes that share ``plan.workers`` reading threads."""
    batch_size, threads, processes = plan.batch_size, plan.workers, plan.decode_processes
    n_batches = math.ceil(len(paths) / batch_size)
    processes = min(processes, n_batches)
    if not processes:
        return
    context = worker_context([__name__])  # the server imports torch once, never CUDA: a GPU's workers need that
    names = [str(path) for path in paths]  # sent to a spawned worker once: strings pickle fast
    task_pipes = [context.Pipe(duplex=False) for _ in range(processes)]
    result_pipes = [context.Pipe(duplex=False) for _ in range(processes)]
    workers = [context.Process(target=_work, name=f"isc-decode-{w}", daemon=True, args=(
        names, batch_size, task_pipes[w][0], result_pipes[w][1], plan.sizes, resize, plan.device, plan.max_pixels, plan.crops,
        plan.grid, plan.cut, max(1, -(-threads // processes)))) for w in range(processes)]
    tasks, results = [pipe[1] for pipe in task_pipes], [pipe[0] for pipe in result_pipes]
    ahead = BATCHES_PER_WORKER * processes
    finished = False
    try:
        for worker in workers:
            worker.start()
        for k in range(min(ahead, n_batches)):
            tasks[k % processes].send(k)
        for k in range(n_batches):
            batch = _receive(results[k % processes], workers[k % processes])
            if k + ahead < n_batches:
                tasks[k % processes].send(k + ahead)
            yield batch
        finished = True
    finally:
        _stop(workers, tasks, finished)
        for connection in (*tasks, *results, *(pipe[0] for pipe in task_pipes), *(pipe[1] for pipe in result_pipes)):
            with contextlib.suppress(OSError):
                connection.close()
