"""isc-search without pandas: a quiet run imports neither pandas nor tqdm, and writes the predictions pandas'
writer wrote, byte for byte (scores to 7 significant digits, ids quoted as needed, by decreasing score)."""

import numpy as np
import pandas as pd
from conftest import run_python

from isc.core.descriptors import write_descriptors
from isc.core.pairs import Pairs
from isc.core.tables import write_predictions

QUIET_SEARCH = """
import sys
from isc.cli.search import main
status = main(sys.argv[1:])
loaded = [m for m in ("pandas", "tqdm") if m in sys.modules]
assert not loaded, f"a quiet isc-search run imported {loaded}"
sys.exit(status)
"""


def test_a_quiet_search_imports_neither_pandas_nor_tqdm_and_writes_what_pandas_wrote(tmp_path):
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((50, 16)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    query = np.round(reference[:12] * 4) / 4  # equal scores across queries: ties in the written order
    attrs = {"model": "m", "image_size": 8}
    write_descriptors(tmp_path / "q.h5", [f"Q{i:05d}" for i in range(12)], query, attrs)
    write_descriptors(tmp_path / "r.h5", [f"R{i:06d}" for i in range(50)], reference, attrs)
    done = run_python("-c", QUIET_SEARCH, "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "-o",
                      tmp_path / "p.csv", "--k", 5, "--quiet")
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(tmp_path / "p.csv", dtype={"query_id": str, "reference_id": str})
    assert len(written) == 60 and written["score"].is_monotonic_decreasing
    # the writer against pandas' own: odd ids, a missing score, float32 and float64 scores
    table = pd.DataFrame({"query_id": ["a,b", 'say "hi"', "c", "d"], "reference_id": ["r1", "r2", "r 3", "r4"],
                          "score": np.array([0.1234567891, np.nan, 0.5, 0.1234567891], np.float32)})
    for frame in (table, table.astype({"score": np.float64})):
        write_predictions(tmp_path / "ours.csv", frame)
        frame.sort_values("score", ascending=False, kind="stable").to_csv(tmp_path / "pandas.csv", index=False,
                                                                           float_format="%.7g")
        assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    write_predictions(tmp_path / "pairs.csv", Pairs.from_frame(table))
    assert (tmp_path / "pairs.csv").read_bytes() == (tmp_path / "ours.csv").read_bytes()
