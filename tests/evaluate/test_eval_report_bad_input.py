"""isc-eval and isc-report on hostile or unusual input: outputs that would land on an input or a folder,
plots by suffix, queries absent from the ground truth, row limits, headerless files, --quiet."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import GT, HEADER, ROWS, cli, one_line_error

from isc.core.competition import MATCHING_TRACK_MAX_ROWS
from isc.core.files import InputError
from isc.core.tables import read_predictions


@pytest.mark.parametrize("target", ["p", "gt"])
def test_eval_plot_onto_an_input_is_refused(scored_files, target):
    before = scored_files[target].read_bytes()
    result = cli("eval", scored_files["p"], "--gt", scored_files["gt"], "--plot", scored_files[target])
    one_line_error(result, "isc-eval", "is the input")
    assert scored_files[target].read_bytes() == before


@pytest.mark.parametrize("option, target", [("-o", "p"), ("--png", "gt"), ("-o", "gt")])
def test_report_outputs_onto_an_input_are_refused(scored_files, option, target):
    before = scored_files[target].read_bytes()
    outputs = {"-o": scored_files["dir"] / "r.html", "--png": scored_files["dir"] / "s.png", option: scored_files[target]}
    args = [arg for name, path in outputs.items() for arg in (name, path)]
    one_line_error(cli("report", scored_files["p"], "--gt", scored_files["gt"], "--data", scored_files["dir"], *args), "isc-report", "is the input")
    assert scored_files[target].read_bytes() == before
    assert not (scored_files["dir"] / "r.html").exists() and not (scored_files["dir"] / "s.png").exists()


def test_an_existing_folder_as_output_names_the_users_path(scored_files):
    (scored_files["dir"] / "out").mkdir()
    for module, args in [("eval", (scored_files["p"], "--gt", scored_files["gt"], "--plot", "out")),
                         ("report", (scored_files["p"], "--gt", scored_files["gt"], "--data", scored_files["dir"], "-o", "out")),
                         ("submit", ("matching", scored_files["p"], "--phase", "1", "-o", "out"))]:
        result = cli(module, *args, cwd=scored_files["dir"])
        one_line_error(result, f"isc-{module}", "out: is a directory")
        assert ".part" not in result.stderr  # the user's path, not the temporary name
    assert list((scored_files["dir"] / "out").iterdir()) == []


def test_eval_plot_with_an_unknown_suffix_is_refused_before_scoring(scored_files):
    plot = scored_files["dir"] / "x.csv"
    scored_files["p"].write_text(HEADER + "Q00000,R000000,nan\n")  # scoring would fail on this: the suffix is seen first
    result = cli("eval", scored_files["p"], "--gt", scored_files["gt"], "--plot", plot)
    one_line_error(result, "isc-eval", "unknown image format .csv", ".png", ".svg", ".pdf")
    assert not plot.exists()


def test_eval_plot_formats_follow_the_suffix(scored_files):
    for name, magic in [("pr.svg", b"<?xml"), ("pr", b"\x89PNG")]:
        result = cli("eval", scored_files["p"], "--gt", scored_files["gt"], "--plot", scored_files["dir"] / name, "--json")
        assert result.returncode == 0, result.stderr
        assert (scored_files["dir"] / name).read_bytes().startswith(magic)


def test_eval_warns_in_one_line_about_queries_absent_from_the_ground_truth(scored_files):
    scored_files["p"].write_text(HEADER + ROWS + "Q00007,R000001,0.6\nQ00007,R000002,0.5\nQ00009,R000002,0.4\n")
    result = cli("eval", scored_files["p"], "--gt", scored_files["gt"], "--json")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and result.stderr.count("\n") == 1
    assert "3 predictions of 2 queries absent from the ground truth" in warning[0]
    assert "--restrict-to-gt-queries" in warning[0]
    assert json.loads(result.stdout)["n_predictions"] == 6  # counted as false positives
    restricted = cli("eval", scored_files["p"], "--gt", scored_files["gt"], "--json", "--restrict-to-gt-queries")
    assert restricted.returncode == 0 and restricted.stderr == ""
    assert json.loads(restricted.stdout)["n_predictions"] == 3


def test_report_warns_and_restricts_too(scored_files):
    scored_files["p"].write_text(HEADER + ROWS + "Q00007,R000001,0.6\n")
    args = [scored_files["p"], "--gt", scored_files["gt"], "--data", scored_files["dir"], "-o", scored_files["dir"] / "r.html", "-q"]
    result = cli("report", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "1 predictions of 1 queries absent" in result.stderr
    assert "--restrict-to-gt-queries" in result.stderr
    restricted = cli("report", *args, "--restrict-to-gt-queries")
    assert restricted.returncode == 0 and restricted.stderr == ""
    assert "for 3 queries" in (scored_files["dir"] / "r.html").read_text()


@pytest.fixture(scope="module")
def oversized(tmp_path_factory) -> dict[str, Path]:
    """A predictions file one row over the matching track's limit, and its ground truth."""
    folder = tmp_path_factory.mktemp("oversized")
    n = MATCHING_TRACK_MAX_ROWS + 1
    queries, references = np.arange(n) % 50_000, np.arange(n) // 50_000
    lines = np.char.add(np.char.add(np.char.add("Q", np.char.zfill(queries.astype(str), 5)), ",R"),
                        np.char.zfill(references.astype(str), 6))
    (folder / "p.csv").write_text(HEADER + "\n".join(f"{line},0.5" for line in lines.tolist()) + "\n")
    (folder / "gt.csv").write_text("query_id,reference_id\nQ00000,R000000\n")
    return {"dir": folder, "p": folder / "p.csv", "gt": folder / "gt.csv"}


def test_more_rows_than_the_track_allows_are_refused_unless_asked(oversized):
    limit = f"{MATCHING_TRACK_MAX_ROWS + 1:,} predictions, more than the {MATCHING_TRACK_MAX_ROWS:,}"
    args = [oversized["p"], "--gt", oversized["gt"], "--restrict-to-gt-queries"]
    one_line_error(cli("eval", *args), "isc-eval", limit, "too many predictions", "without the row limit")
    report = oversized["dir"] / "r.html"
    one_line_error(cli("report", *args, "--data", oversized["dir"], "-o", report), "isc-report", limit, "without the row limit")
    assert not report.exists()
    result = cli("eval", *args, "--no-row-limit", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_true_positives"] == 1


def test_read_predictions_row_limit_is_off_by_default(scored_files):
    assert len(read_predictions(scored_files["p"])) == 3
    assert len(read_predictions(scored_files["p"], max_rows=3)) == 3
    with pytest.raises(InputError, match="4 predictions, more than the 3"):
        scored_files["p"].write_text(HEADER + ROWS + "Q00003,R000003,0.1\n")
        read_predictions(scored_files["p"], max_rows=3)


def test_eval_accepts_quiet(scored_files):
    plot = scored_files["dir"] / "pr.png"
    loud = cli("eval", scored_files["p"], "--gt", scored_files["gt"], "--plot", plot)
    quiet = cli("eval", scored_files["p"], "--gt", scored_files["gt"], "--plot", plot, "--quiet")
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert "written to" in loud.stdout and "written to" not in quiet.stdout
    assert quiet.stdout.splitlines() == loud.stdout.splitlines()[:-1] and "µAP" in quiet.stdout
    assert cli("eval", scored_files["p"], "--gt", scored_files["gt"], "-q", "--json").returncode == 0


def test_headerless_predictions_score_as_with_the_header(scored_files):
    headerless = scored_files["dir"] / "organisers.csv"
    headerless.write_text(ROWS)
    with_header = json.loads(cli("eval", scored_files["p"], "--gt", scored_files["gt"], "--json").stdout)
    result = cli("eval", headerless, "--gt", scored_files["gt"], "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == with_header and with_header["n_predictions"] == 3
    report = cli("report", headerless, "--gt", scored_files["gt"], "--data", scored_files["dir"], "-o", scored_files["dir"] / "r.html",
                 "-q")
    assert report.returncode == 0, report.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("query,reference,score\nQ00000,R000000,0.5\n", "missing column(s) query_id, reference_id"),
        ("qid,rid,value\nQ00000,R000000,0.5\n", "line 1 is neither the header"),
        ("Q0000,R000000,0.5\n", "line 1 is neither the header"),
        ("Q00000,R000000,0.5,1\n", "line 1 is neither the header"),
        ("Q00000,R000000,0.5\nQ00001,R000001,high\n", "line 2: score 'high'"),  # line numbers without a header
        ("Q00000,R000000,0.5\nQ00000,R000000,0.4\n", "line 2: pair (Q00000, R000000) already at line 1"),
    ],
)
def test_a_first_row_neither_header_nor_prediction_is_one_line(scored_files, text, message):
    scored_files["p"].write_text(text)
    one_line_error(cli("eval", scored_files["p"], "--gt", scored_files["gt"]), "isc-eval", str(scored_files["p"]), message)


def test_headerless_ground_truth_is_refused(scored_files):
    # the official ground-truth files (public_ground_truth.csv, subset_1_ground_truth.csv) all have the header
    scored_files["gt"].write_text(GT.split("\n", 1)[1])
    one_line_error(cli("eval", scored_files["p"], "--gt", scored_files["gt"]), "isc-eval", "missing column")
