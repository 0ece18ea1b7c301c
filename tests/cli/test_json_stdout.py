"""With --json a command's stdout holds one JSON object and nothing else, --quiet or not: what the engine
reports doing goes to stderr then."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def isc(command: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"isc.cli.{command}", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def only_json(result: subprocess.CompletedProcess) -> dict:
    """The whole stdout parsed as one JSON object (fails on any other line); the run's progress went to stderr."""
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1, result.stdout
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def run_folder(mini_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("json_run")
    result = isc("run", work / "work", "--data", mini_dataset, "--model", "pdq", "--limit", "12", "--no-query-crops",
                 "--no-verify", "--phases", "1", "--pca-dim", "8", "--gt", mini_dataset / "ground_truth.csv",
                 "--submissions-dir", work / "submissions", "--json")
    return work / "work", result


def test_isc_run_json_alone_on_stdout(run_folder):
    work, result = run_folder
    summary = only_json(result)
    assert {s["stage"] for s in summary["steps"]} >= {"extract", "search", "submit"}
    assert "isc-run: " in result.stderr  # the step lines, moved to stderr rather than lost


def test_isc_extract_eval_verify_json_alone_on_stdout(run_folder, mini_dataset, tmp_path):
    work, _ = run_folder
    extracted = only_json(isc("extract", "--images", mini_dataset / "query_images", "--model", "pdq", "-o",
                              tmp_path / "q.h5", "--json"))
    assert extracted["extracted"] > 0
    predictions = work / "predictions_phase1.csv"
    metrics = only_json(isc("eval", predictions, "--gt", mini_dataset / "ground_truth.csv", "--json"))
    assert 0 <= metrics["muap"] <= 1
    verified = only_json(isc("verify", predictions, "--data", mini_dataset, "-o", tmp_path / "verified.csv",
                             "--k", "2", "--json"))
    assert verified["predictions"] > 0
