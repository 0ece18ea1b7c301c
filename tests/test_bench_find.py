"""scripts/bench_find.py groups-table: what a tool found in one folder of a set's queries and references, scored as
(query, reference) pairs against the set's ground truth, from groups (isc-find's and Immaculate's JSON) and from
isc-find's CSV pairs; table: the lowest threshold reaching each target precision."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
from conftest import REPO, one_line_error, run_python

SCRIPT = REPO / "scripts" / "bench_find.py"
# three copies among four queries; Q4 has none
TRUTH = "query_id,reference_id\nQ1,R1\nQ2,R2\nQ3,R3\nQ4,\n"
# Q1 with its copy and an unrelated reference (2 pairs, 1 true); Q4 and Q2 grouped without a reference (no pair);
# R2 and R7 alone together (no pair); Q3 with R3 and R5 (2 pairs, 1 true)
GROUPS = {"groups": [["/a/Q1.jpg", "/a/R1.jpg", "/a/R9.png"], ["/a/Q4.jpg", "/a/Q2.jpg"], ["/a/R2.jpg", "/a/R7.jpg"],
                     ["/a/R5.jpg", "/a/Q3.jpg", "/a/R3.jpg"]],
          # the matches that joined them: Q1 to R9 and Q3 to R5 only through another image
          "pairs": [{"query": "/a/Q1.jpg", "reference": "/a/R1.jpg"}, {"query": "/a/R9.png", "reference": "/a/R1.jpg"},
                    {"query": "/a/Q2.jpg", "reference": "/a/Q4.jpg"}, {"query": "/a/R3.jpg", "reference": "/a/Q3.jpg"},
                    {"query": "/a/R3.jpg", "reference": "/a/R5.jpg"}]}
IMMACULATE = {"exact": [["/a/Q2.jpg", "/a/R2.jpg"]], "near": [["/a/Q1.jpg", "/a/R1.jpg"]], "skipped": ["/a/x.jpg"]}
PAIRS = ("query_id,reference_id,score,query_path,reference_path,exact\n"
         "Q1,R1,0.9,/q/Q1.jpg,/r/R1.jpg,\nQ4,R8,0.6,/q/Q4.jpg,/r/R8.jpg,\n")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench_find")
    (folder / "truth.csv").write_text(TRUTH)
    (folder / "groups.json").write_text(json.dumps(GROUPS))
    (folder / "immaculate.json").write_text(json.dumps(IMMACULATE))
    (folder / "pairs.csv").write_text(PAIRS)
    return folder


def _bench_find():
    spec = importlib.util.spec_from_file_location("bench_find", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_query_reference_pair_within_a_group_counts_as_found(outputs: Path) -> None:
    found = _bench_find().groups_table(outputs / "truth.csv", outputs / "groups.json")
    assert found == {"pairs found": 4, "copies found": 2, "precision": 0.5, "recall": 0.667, "copies": 3}
    matched = _bench_find().groups_table(outputs / "truth.csv", outputs / "groups.json", matched=True)
    assert matched == {"pairs found": 2, "copies found": 2, "precision": 1.0, "recall": 0.667, "copies": 3}


def test_immaculate_exact_and_near_groups_and_isc_find_pairs_are_scored(outputs: Path) -> None:
    bench_find = _bench_find()
    assert bench_find.found_pairs(outputs / "immaculate.json", {"Q1", "Q2", "Q3", "Q4"}) == {("Q1", "R1"), ("Q2", "R2")}
    pairs = bench_find.groups_table(outputs / "truth.csv", outputs / "pairs.csv")
    assert pairs == {"pairs found": 2, "copies found": 1, "precision": 0.5, "recall": 0.333, "copies": 3}


def test_table_gives_the_lowest_threshold_reaching_each_target_precision(outputs: Path) -> None:
    # by decreasing score: Q1-R1 (0.9, a copy), then Q4-R8 (0.6, not): precision 1 down to 0.9, 0.5 down to 0.6
    done = run_python(SCRIPT, "table", outputs / "truth.csv", outputs / "pairs.csv", "--precision", "0.5", "0.9",
                      timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    lowest = json.loads(done.stdout.split(" ", 1)[1])["lowest threshold, recall"]
    assert lowest == {"precision >= 0.5": [0.6, 1.0], "precision >= 0.9": [0.9, 1.0]}  # of Q1 and Q4's one copy


def test_the_command_prints_one_line_per_output(outputs: Path) -> None:
    done = run_python(SCRIPT, "groups-table", outputs / "truth.csv", outputs / "immaculate.json", outputs / "pairs.csv",
                      timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(outputs / "immaculate.json"))
    assert json.loads(lines[0].split(" ", 1)[1])["precision"] == 1.0
    assert json.loads(lines[1].split(" ", 1)[1])["copies found"] == 1


def test_an_output_without_what_is_scored_is_one_line(outputs: Path) -> None:
    done = run_python(SCRIPT, "groups-table", outputs / "truth.csv", outputs / "immaculate.json", "--matched",
                      timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    one_line_error(done, "bench_find.py", "immaculate.json", "KeyError")
