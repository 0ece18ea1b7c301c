"""Benchmark the exact search backends: time, peak memory and recall on planted near-duplicates.

Default sizes are the competition's: 50,000 queries against 1,000,000 references of 256 dimensions,
k = 10, plus the search of the queries among 1,000,000 training descriptors that score normalisation
needs (its 3 nearest). Half of the queries are noisy copies of random references (cosine about 0.9),
so every backend's recall@1 on them and its agreement with the first backend's neighbours are checked.

    python scripts/bench_search.py                      # every backend available here
    python scripts/bench_search.py --backends faiss-cpu,torch --torch-cpu-queries 1000
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

from isc.search.knn import available_backends, knn, knn_torch


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--references", type=int, default=1_000_000)
    parser.add_argument("--training", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--norm-neighbors", type=int, default=3, help="training neighbours searched (SSCD: 3)")
    parser.add_argument("--backends", default=",".join(available_backends()),
                        help="comma-separated, first one is the reference for agreement (default: all available)")
    parser.add_argument("--torch-cpu-queries", type=int, default=None,
                        help="run torch on the CPU on only the first N queries (it is slow on few cores)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    query, reference, training, sources = make_data(args.queries, args.references, args.training, args.dim)
    print(f"data: {args.queries} queries, {args.references} references, {args.training} training, d={args.dim} "
          f"({time.perf_counter() - t0:.1f} s to generate)", flush=True)
    import torch

    rows, first = [], None
    for backend in args.backends.split(","):
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
