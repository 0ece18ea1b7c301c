"""Time isc-submit on full-size submissions: a 500,000-row matching-track CSV (50,000 phase-1 queries × 10
references) and a descriptor-track file of 50,000 queries and 1,000,000 references in 256 dimensions.

Prints a table: each check-and-write (validation, copy or HDF5 write, read-back, manifest with md5).

    python scripts/bench_submit.py                      # full size (needs ~4 GB of RAM and 1.1 GB of disk)
    python scripts/bench_submit.py --references 100000  # smaller
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.descriptors import write_descriptors
from isc.core.tables import write_predictions
from isc.submit.descriptors import submit_descriptors
from isc.submit.matching import submit_matching


def random_descriptors(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    values = rng.standard_normal((count, dim), dtype=np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--references", type=int, default=1_000_000)
    parser.add_argument("--per-query", type=int, default=10, help="predictions per query (default 10)")
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    query_ids = [f"Q{i:05d}" for i in range(args.queries)]
    reference_ids = [f"R{i:06d}" for i in range(args.references)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # distinct references per query: a random start and a stride of 1
        starts = rng.integers(0, args.references - args.per_query, args.queries)
        references = (starts[:, None] + np.arange(args.per_query)).ravel()
        predictions = pd.DataFrame({"query_id": np.repeat(query_ids, args.per_query),
                                    "reference_id": np.asarray(reference_ids, dtype=object)[references],
                                    "score": rng.random(len(references))})
        write_predictions(folder / "predictions.csv", predictions)
        began = time.perf_counter()
        submit_matching(folder / "predictions.csv", 1, folder / "out" / "phase1_matching.csv")
        rows.append(("matching", f"{len(predictions):,} rows", time.perf_counter() - began))

        write_descriptors(folder / "query.h5", query_ids, random_descriptors(args.queries, args.dim, rng), {"model": "bench"})
        write_descriptors(folder / "reference.h5", reference_ids, random_descriptors(args.references, args.dim, rng),
                          {"model": "bench"})
        expected = folder / "references.txt"
        expected.write_text("\n".join(reference_ids) + "\n")  # the full competition has 1M; a smaller run fewer
        queries = folder / "queries.txt"
        queries.write_text("\n".join(query_ids) + "\n")
        began = time.perf_counter()
        submit_descriptors(folder / "query.h5", folder / "reference.h5", 1, folder / "out" / "phase1_descriptors.h5",
                           expected_queries=queries, expected_references=expected)
        rows.append(("descriptors", f"{args.queries:,} + {args.references:,} × {args.dim}", time.perf_counter() - began))

    print("| submission | size | seconds |\n|---|---|---:|")
    for track, size, seconds in rows:
        print(f"| {track} | {size} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
