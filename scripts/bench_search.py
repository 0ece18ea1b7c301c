"""Benchmark the exact search backends: time, peak memory and recall on planted near-duplicates.

Default sizes are the competition's: 50,000 queries against 1,000,000 references of 256 dimensions,
k = 10, plus the search of the queries among 1,000,000 training descriptors that score normalisation
needs (its 3 nearest). Half of the queries are noisy copies of random references (cosine about 0.9),
so every backend's recall@1 on them and its agreement with the first backend's neighbours are checked.

    python scripts/bench_search.py                      # every backend available here
    python scripts/bench_search.py --backends faiss-cpu,torch --torch-cpu-queries 1000

The whole-process pair (issue 28, item 6): ``isc-search`` against a plain faiss script on the same files.
``--pair-data DIR`` writes DIR/query.h5 and DIR/reference.h5 (``--queries``, ``--references``, ``--dim``,
isc-extract's layout) and prints both commands; ``--plain Q.h5 R.h5 OUT.csv`` is that plain script (h5py,
``faiss.knn``, csv: nothing else imported), to time against ``isc-search --query Q.h5 --reference R.h5 -o
OUT.csv --quiet`` as whole processes:

    python scripts/bench_search.py --pair-data /tmp/pair --queries 2000 --references 200000
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np


def unit_vectors(rng: np.random.Generator, n: int, d: int, block: int = 1 << 17) -> np.ndarray:
    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, block):
        x = rng.standard_normal((min(block, n - i), d), dtype=np.float32)
        out[i : i + block] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_data(n_query: int, n_reference: int, n_training: int, d: int, seed: int = 0):
    """(queries, references, training, sources): queries[:n_query // 2] are copies of references[sources]."""
    rng = np.random.default_rng(seed)
    reference = unit_vectors(rng, n_reference, d)
    training = unit_vectors(rng, n_training, d)
    query = unit_vectors(rng, n_query, d)
    sources = rng.choice(n_reference, n_query // 2, replace=False)
    noisy = reference[sources] + 0.5 / np.sqrt(d) * rng.standard_normal((len(sources), d), dtype=np.float32)
    query[: len(sources)] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return query, reference, training, sources


class PeakRSS:
    """Peak resident memory of this process above its level at entry, sampled every 5 ms."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @property
    def delta_gb(self) -> float:
        return (self.peak - self.base) / 1e9


def cuda_device_resident_time(query: np.ndarray, reference: np.ndarray, k: int, repeats: int = 3) -> tuple[float, float]:
    """(best seconds, peak GPU GB) of the torch search with the descriptors already on the GPU."""
    import torch

    from isc.search.knn import knn_torch

    q, r = torch.from_numpy(query).cuda(), torch.from_numpy(reference).cuda()
    knn_torch(q, r, k)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        knn_torch(q, r, k)  # ends by copying the results to the host: synchronised
        best = min(best, time.perf_counter() - t0)
    return best, (torch.cuda.max_memory_allocated() - base) / 1e9


def plain_search(query: str, reference: str, output: str, k: int) -> None:
    """The plain faiss script of the pair: both files read with h5py, exact inner-product search, the
    predictions ``query_id,reference_id,score`` written with csv."""
    import csv

    import faiss
    import h5py

    with h5py.File(query) as f:
        query_ids, q = [i.decode() for i in f["ids"][:]], np.ascontiguousarray(f["descriptors"][:], np.float32)
    with h5py.File(reference) as f:
        reference_ids, r = [i.decode() for i in f["ids"][:]], np.ascontiguousarray(f["descriptors"][:], np.float32)
    scores, indices = faiss.knn(q, r, k, metric=faiss.METRIC_INNER_PRODUCT)
    with open(output, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["query_id", "reference_id", "score"])
        for query_id, row_scores, row_indices in zip(query_ids, scores, indices, strict=True):
            writer.writerows([query_id, reference_ids[j], f"{score:.6f}"] for score, j in zip(row_scores, row_indices,
                                                                                             strict=True))


def write_pair_data(folder: Path, n_query: int, n_reference: int, d: int) -> None:
    """The pair's inputs: random unit queries (half of them noisy copies) and references, isc-extract's layout."""
    from isc.core.descriptors import write_descriptors

    query, reference, _, _ = make_data(n_query, n_reference, 0, d)
    folder.mkdir(parents=True, exist_ok=True)
    write_descriptors(folder / "query.h5", [f"Q{i:05d}" for i in range(n_query)], query)
    write_descriptors(folder / "reference.h5", [f"R{i:06d}" for i in range(n_reference)], reference)
    print(f"A: isc-search --query {folder}/query.h5 --reference {folder}/reference.h5 -o {folder}/a.csv --quiet\n"
          f"B: {sys.executable} {__file__} --plain {folder}/query.h5 {folder}/reference.h5 {folder}/b.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--references", type=int, default=1_000_000)
    parser.add_argument("--training", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--norm-neighbors", type=int, default=3, help="training neighbours searched (SSCD: 3)")
    parser.add_argument("--backends",
                        help="comma-separated, first one is the reference for agreement (default: all available)")
    parser.add_argument("--torch-cpu-queries", type=int, default=None,
                        help="run torch on the CPU on only the first N queries (it is slow on few cores)")
    parser.add_argument("--pair-data", metavar="DIR", type=Path,
                        help="write the whole-process pair's inputs to DIR and print its two commands")
    parser.add_argument("--plain", nargs=3, metavar=("Q.h5", "R.h5", "OUT.csv"),
                        help="the pair's plain faiss script: search Q in R, write OUT")
    args = parser.parse_args()
    if args.plain:
        plain_search(*args.plain, k=args.k)
        return
    if args.pair_data:
        write_pair_data(args.pair_data, args.queries, args.references, args.dim)
        return
    from isc.search.knn import available_backends, knn


    t0 = time.perf_counter()
    query, reference, training, sources = make_data(args.queries, args.references, args.training, args.dim)
    print(f"data: {args.queries} queries, {args.references} references, {args.training} training, d={args.dim} "
          f"({time.perf_counter() - t0:.1f} s to generate)", flush=True)
    import torch

    rows, first = [], None
    for backend in (args.backends or ",".join(available_backends())).split(","):
        on_cpu_torch = backend == "torch" and not torch.cuda.is_available()
        nq = min(args.torch_cpu_queries or args.queries, args.queries) if on_cpu_torch else args.queries
        q = query[:nq]
        if backend == "torch" and torch.cuda.is_available():
            knn(q[:1000], reference[:100_000], args.k, backend=backend)  # CUDA initialisation out of the timing
        with PeakRSS() as memory:
            t0 = time.perf_counter()
            _, indices = knn(q, reference, args.k, backend=backend)
            search_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            knn(q, training, args.norm_neighbors, backend=backend)
            training_s = time.perf_counter() - t0
        planted = sources[: min(len(sources), nq)]
        recall = float((indices[: len(planted), 0] == planted).mean())
        if first is None:
            first = indices
        n = min(len(first), len(indices))
        agreement = float((np.sort(first[:n], axis=1) == np.sort(indices[:n], axis=1)).all(axis=1).mean())
        row = {"backend": backend + (" (CPU)" if on_cpu_torch else ""), "queries": nq, "search_s": search_s,
               "training_s": training_s, "peak_ram_gb": memory.delta_gb, "recall1": recall, "agree": agreement}
        if backend == "torch" and torch.cuda.is_available():
            row["device_s"], row["peak_gpu_gb"] = cuda_device_resident_time(q, reference, args.k)
        rows.append(row)
        print(row, flush=True)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\n{args.references} references x {args.dim} d, k = {args.k}, training {args.training} "
          f"(k = {args.norm_neighbors}); {os.cpu_count()} CPU cores, {device}\n")
    print("| backend | queries | search (s) | training search (s) | peak RAM above inputs (GB) | recall@1 planted "
          "| same neighbours as first | search, data on GPU (s) | peak GPU (GB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gpu = f"{r['device_s']:.3f} | {r['peak_gpu_gb']:.2f}" if "device_s" in r else "– | –"
        print(f"| {r['backend']} | {r['queries']} | {r['search_s']:.2f} | {r['training_s']:.2f} | "
              f"{r['peak_ram_gb']:.2f} | {r['recall1']:.4f} | {r['agree']:.4f} | {gpu} |")


if __name__ == "__main__":
    main()
