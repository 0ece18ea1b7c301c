"""scripts/bench_descriptor_submissions.py: submissions of both tracks scored as the organisers scored them, each
paired with its own track's first file over the same bootstrap resamples of the queries."""

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, one_line_error, run_python

from isc.core.descriptors import write_descriptor_track

SCRIPT = REPO / "scripts" / "bench_descriptor_submissions.py"
# three copies among four queries; Q00003 has none
TRUTH = "query_id,reference_id\nQ00000,R000000\nQ00001,R000001\nQ00002,R000002\nQ00003,\n"
# a wrong pair ranked second: µAP (1 + 2/3 + 3/4) / 3, recall at P90 1/3 (the first pair alone)
WEAKER = "query_id,reference_id,score\nQ00000,R000000,0.9\nQ00001,R000002,0.8\nQ00001,R000001,0.5\nQ00002,R000002,0.4\n"
PERFECT = "Q00000,R000000,0.9\nQ00001,R000001,0.5\nQ00002,R000002,0.4\n"  # no header row, as the organisers write


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("bench_submissions")
    (folder / "truth.csv").write_text(TRUTH)
    (folder / "weaker.csv").write_text(WEAKER)
    (folder / "perfect.csv").write_text(PERFECT)
    vectors = np.eye(4, dtype=np.float32)  # each copy's query at its reference; Q00003 far from all three
    write_descriptor_track(folder / "track.h5", [f"Q0000{i}" for i in range(4)], vectors,
                           [f"R00000{i}" for i in range(3)], vectors[:3])
    result = run_python(SCRIPT, "--gt", folder / "truth.csv", "--resamples", 200, folder / "weaker.csv",
                        folder / "perfect.csv", folder / "track.h5", timeout=120)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith("| /")]


def test_matching_files_are_paired_with_the_first(table: list[str]) -> None:
    weaker, perfect, _ = (line.split(" | ") for line in table)
    assert weaker[1:6] == ["matching", "-", "0.806", "0.333", "+0.000 [+0.000, +0.000] |"]
    assert perfect[1:5] == ["matching", "-", "1.000", "1.000"]
    mean, low, high = (float(x) for x in perfect[5].replace("[", "").replace("]", "").replace(",", "").split()[:3])
    assert 0.1 < mean < 0.3 and 0 <= low <= mean <= high


def test_a_descriptor_file_is_paired_with_its_own_track(table: list[str]) -> None:
    track = table[2].split(" | ")
    # scored by the organisers' capped L2 search; its baseline is itself, not the matching track's first
    assert track[1:6] == ["descriptors", "4", "1.000", "1.000", "+0.000 [+0.000, +0.000] |"]


def test_a_missing_submission_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "truth.csv").write_text(TRUTH)
    result = run_python(SCRIPT, "--gt", tmp_path / "truth.csv", tmp_path / "absent.csv", timeout=120)
    one_line_error(result, "bench_descriptor_submissions.py", "absent.csv", "no such file")


def test_per_query_keeps_each_querys_best_rows(tmp_path: Path) -> None:
    for name, text in (("truth.csv", TRUTH), ("weaker.csv", WEAKER)):
        (tmp_path / name).write_text(text)
    result = run_python(SCRIPT, "--gt", tmp_path / "truth.csv", "--per-query", 1, "--resamples", 50,
                        tmp_path / "weaker.csv", timeout=120)
    assert result.returncode == 0, result.stderr
    # Q00001 keeps its wrong first row only: µAP (1 + 2/3) / 3
    assert "| matching | - | 0.556 | 0.333 | +0.000 [+0.000, +0.000] |" in result.stdout
    refused = run_python(SCRIPT, "--gt", tmp_path / "truth.csv", "--per-query", 0, tmp_path / "weaker.csv")
    one_line_error(refused, "bench_descriptor_submissions.py", "--per-query must be at least 1, got 0")
