"""isc-find's unverified path without pandas (its import was a sixth of a 55-image run): the merge of both
ways and the matches within one folder give the rows, in the order, that the table operations gave, and a
quiet run that does not verify imports neither pandas nor tqdm nor verification's modules, whatever its output."""

import json

import numpy as np
import pandas as pd
from conftest import named_photo, run_python

from isc.core.pairs import Pairs
from isc.pipeline.find import both_ways, matches_above


def random_pairs(seed: int, n: int, ids: list[str]) -> Pairs:
    rng = np.random.default_rng(seed)
    return Pairs(rng.choice(ids, n), rng.choice(ids, n), rng.integers(0, 6, n) / 5)  # many ties, repeated pairs


def test_both_ways_and_matches_above_keep_the_rows_and_order_of_the_table_operations():
    ids = ["a", "a10", "a9", "b", "B", "c d"]
    for seed in range(5):
        forward, backward = random_pairs(seed, 40, ids), random_pairs(seed + 100, 40, ids)
        swapped = backward.to_frame().rename(columns={"query_id": "reference_id", "reference_id": "query_id"})
        union = pd.concat([forward.to_frame(), swapped[["query_id", "reference_id", "score"]]], ignore_index=True)
        best = union.groupby(["query_id", "reference_id"], as_index=False, sort=False)["score"].max()
        expected = best.sort_values(["score", "query_id", "reference_id"], ascending=[False, True, True])
        merged = both_ways(forward, backward)
        assert merged.to_frame().values.tolist() == expected.values.tolist()

        table = merged.to_frame()
        above = table[table["score"] >= 0.4]
        one_folder = above.assign(query_id=above[["query_id", "reference_id"]].min(axis=1),
                                  reference_id=above[["query_id", "reference_id"]].max(axis=1))
        one_folder = one_folder.drop_duplicates(["query_id", "reference_id"])
        assert matches_above(merged, 0.4).to_frame().values.tolist() == above.values.tolist()
        assert matches_above(merged, 0.4, same_images=True).to_frame().values.tolist() == one_folder.values.tolist()


NO_PANDAS = """
import sys
from isc.cli.find import main
status = main(sys.argv[1:])
loaded = [m for m in ("pandas", "tqdm", "isc.verify.verification", "multiprocessing") if m in sys.modules]
assert not loaded, f"a quiet unverified isc-find run imported {loaded}"
sys.exit(status)
"""


def test_a_quiet_unverified_run_imports_neither_pandas_nor_tqdm_nor_verification(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "b", "c"):
        named_photo(name).save(folder / f"{name}.png")
    named_photo("a").save(folder / "a again.jpg", quality=90)
    outputs = {suffix: tmp_path / f"groups{suffix}" for suffix in (".json", ".csv")}
    for output in [*outputs.values(), None]:
        done = run_python("-c", NO_PANDAS, folder, "--model", "pdq", "--no-verify", "--threshold", 0.5, "--quiet",
                          "--cache", tmp_path / "cache", *(["-o", output] if output else []))
        assert done.returncode == 0, done.stderr
    groups = json.loads(outputs[".json"].read_text(encoding="utf-8"))["groups"]
    assert groups == [[str(folder / "a.png"), str(folder / "a again.jpg")]]  # by id: "a" before "a again"
    assert done.stdout == f"{folder / 'a.png'}\n{folder / 'a again.jpg'}\n"
    assert outputs[".csv"].read_text(encoding="utf-8").startswith(
        "query_id,reference_id,score,query_path,reference_path,exact\na,a again,")
