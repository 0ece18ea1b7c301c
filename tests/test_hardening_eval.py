"""isc-eval, isc-report and isc-submit on hostile or unusual input: outputs that would land on an input or a
folder, unknown image formats, queries absent from the ground truth, files over the track's row limit, and the
organisers' own layouts (predictions without a header row, per-split descriptor files)."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import cli, one_line_error

from isc.core.competition import MATCHING_TRACK_MAX_ROWS
from isc.core.descriptors import write_descriptor_track, write_descriptors
from isc.core.files import InputError
from isc.core.tables import read_predictions

HEADER = "query_id,reference_id,score\n"
# the organisers' write_predictions_from_arrays: no header row, scores with 6 decimals
ROWS = "Q00000,R000000,0.900000\nQ00002,R000005,0.800000\nQ00001,R000001,0.700000\n"
GT = "query_id,reference_id\nQ00000,R000000\nQ00001,R000001\nQ00002,\n"
ATTRS = {"model": "resnet50", "image_size": 224}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    predictions, gt = tmp_path / "p.csv", tmp_path / "gt.csv"
    predictions.write_text(HEADER + ROWS)
    gt.write_text(GT)
    return {"dir": tmp_path, "p": predictions, "gt": gt}


@pytest.fixture
def descriptor_files(tmp_path: Path) -> dict[str, Path]:
    """Query and reference descriptor files of 4 queries and 6 references, ids unsorted, with the id lists."""
    rng = np.random.default_rng(0)
    query_ids, reference_ids = ["Q00003", "Q00001", "Q00000", "Q00002"], [f"R{i:06d}" for i in (5, 0, 3, 1, 4, 2)]
    paths = {"dir": tmp_path, "q": tmp_path / "q.h5", "r": tmp_path / "r.h5",
             "q_ids": tmp_path / "queries.txt", "r_ids": tmp_path / "references.txt"}
    write_descriptors(paths["q"], query_ids, rng.standard_normal((4, 8)), ATTRS)
    write_descriptors(paths["r"], reference_ids, rng.standard_normal((6, 8)), ATTRS)
    paths["q_ids"].write_text("\n".join(query_ids) + "\n")
    paths["r_ids"].write_text("\n".join(reference_ids) + "\n")
    return paths


def submit_descriptors_args(d: dict[str, Path], *extra: object) -> list[object]:
    return ["descriptors", "--query", d["q"], "--reference", d["r"], "--phase", "1", "--expected-queries",
            d["q_ids"], "--expected-references", d["r_ids"], *extra]


# ------------------------------------------------------------------------------ outputs onto inputs


@pytest.mark.parametrize("target", ["p", "gt"])
def test_eval_plot_onto_an_input_is_refused(files, target):
    before = files[target].read_bytes()
    result = cli("eval", files["p"], "--gt", files["gt"], "--plot", files[target])
    one_line_error(result, "isc-eval", "is the input")
    assert files[target].read_bytes() == before


@pytest.mark.parametrize("option, target", [("-o", "p"), ("--png", "gt"), ("-o", "gt")])
def test_report_outputs_onto_an_input_are_refused(files, option, target):
    before = files[target].read_bytes()
    outputs = {"-o": files["dir"] / "r.html", "--png": files["dir"] / "s.png", option: files[target]}
    args = [arg for name, path in outputs.items() for arg in (name, path)]
    one_line_error(cli("report", files["p"], "--gt", files["gt"], "--data", files["dir"], *args), "isc-report", "is the input")
    assert files[target].read_bytes() == before
    assert not (files["dir"] / "r.html").exists() and not (files["dir"] / "s.png").exists()


def test_an_existing_folder_as_output_names_the_users_path(files):
    (files["dir"] / "out").mkdir()
    for module, args in [("eval", (files["p"], "--gt", files["gt"], "--plot", "out")),
                         ("report", (files["p"], "--gt", files["gt"], "--data", files["dir"], "-o", "out")),
                         ("submit", ("matching", files["p"], "--phase", "1", "-o", "out"))]:
        result = cli(module, *args, cwd=files["dir"])
        one_line_error(result, f"isc-{module}", "out: is a directory")
        assert ".part" not in result.stderr  # the user's path, not the temporary name
    assert list((files["dir"] / "out").iterdir()) == []


def test_submit_score_cannot_write_predictions_over_the_ground_truth(files, descriptor_files):
    submission = files["dir"] / "sub.h5"
    write_descriptor_track(submission, ["Q00000"], np.ones((1, 4)), ["R000000"], np.ones((1, 4)))
    result = cli("submit", "score", submission, "--gt", files["gt"], "--write-predictions", files["gt"])
    one_line_error(result, "isc-submit", "is the input")
    assert files["gt"].read_text() == GT


def test_submit_matching_onto_its_input_is_refused(files):
    before = files["p"].read_bytes()
    one_line_error(cli("submit", "matching", files["p"], "--phase", "1", "-o", files["p"]), "isc-submit", "is the input")
    assert files["p"].read_bytes() == before
    assert not Path(str(files["p"]) + ".manifest.json").exists()


@pytest.mark.parametrize("where", ["output", "split files"])
def test_submit_descriptors_onto_its_input_is_refused(descriptor_files, where):
    d = descriptor_files
    before = d["q"].read_bytes()
    # the query file is q.h5: renamed query.h5 it is what --split-files DIR would write over
    if where == "split files":
        d["q"] = d["q"].rename(d["dir"] / "query.h5")
        before = d["q"].read_bytes()
    extra = ["-o", d["q"]] if where == "output" else ["-o", d["dir"] / "sub.h5", "--split-files", d["dir"]]
    one_line_error(cli("submit", *submit_descriptors_args(d, *extra)), "isc-submit", "is the input")
    assert d["q"].read_bytes() == before
    assert not (d["dir"] / "sub.h5").exists()


# ------------------------------------------------------------------------------ image format


def test_eval_plot_with_an_unknown_suffix_is_refused_before_scoring(files):
    plot = files["dir"] / "x.csv"
    files["p"].write_text(HEADER + "Q00000,R000000,nan\n")  # scoring would fail on this: the suffix is seen first
    result = cli("eval", files["p"], "--gt", files["gt"], "--plot", plot)
    one_line_error(result, "isc-eval", "unknown image format .csv", ".png", ".svg", ".pdf")
    assert not plot.exists()


def test_eval_plot_formats_follow_the_suffix(files):
    for name, magic in [("pr.svg", b"<?xml"), ("pr", b"\x89PNG")]:
        result = cli("eval", files["p"], "--gt", files["gt"], "--plot", files["dir"] / name, "--json")
        assert result.returncode == 0, result.stderr
        assert (files["dir"] / name).read_bytes().startswith(magic)


# ------------------------------------------------------------------------------ queries absent from the gt


def test_eval_warns_in_one_line_about_queries_absent_from_the_ground_truth(files):
    files["p"].write_text(HEADER + ROWS + "Q00007,R000001,0.6\nQ00007,R000002,0.5\nQ00009,R000002,0.4\n")
    result = cli("eval", files["p"], "--gt", files["gt"], "--json")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and result.stderr.count("\n") == 1
    assert "3 predictions of 2 queries absent from the ground truth" in warning[0]
    assert "--restrict-to-gt-queries" in warning[0]
    assert json.loads(result.stdout)["n_predictions"] == 6  # counted as false positives
    restricted = cli("eval", files["p"], "--gt", files["gt"], "--json", "--restrict-to-gt-queries")
    assert restricted.returncode == 0 and restricted.stderr == ""
    assert json.loads(restricted.stdout)["n_predictions"] == 3


def test_report_warns_and_restricts_too(files):
    files["p"].write_text(HEADER + ROWS + "Q00007,R000001,0.6\n")
    args = [files["p"], "--gt", files["gt"], "--data", files["dir"], "-o", files["dir"] / "r.html", "-q"]
    result = cli("report", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "1 predictions of 1 queries absent" in result.stderr
    assert "--restrict-to-gt-queries" in result.stderr
    restricted = cli("report", *args, "--restrict-to-gt-queries")
    assert restricted.returncode == 0 and restricted.stderr == ""
    assert "for 3 queries" in (files["dir"] / "r.html").read_text()


# ------------------------------------------------------------------------------ the track's row limit


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


def test_read_predictions_row_limit_is_off_by_default(files):
    assert len(read_predictions(files["p"])) == 3
    assert len(read_predictions(files["p"], max_rows=3)) == 3
    with pytest.raises(InputError, match="4 predictions, more than the 3"):
        files["p"].write_text(HEADER + ROWS + "Q00003,R000003,0.1\n")
        read_predictions(files["p"], max_rows=3)


# ------------------------------------------------------------------------------ --quiet


def test_eval_accepts_quiet(files):
    plot = files["dir"] / "pr.png"
    loud = cli("eval", files["p"], "--gt", files["gt"], "--plot", plot)
    quiet = cli("eval", files["p"], "--gt", files["gt"], "--plot", plot, "--quiet")
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert "written to" in loud.stdout and "written to" not in quiet.stdout
    assert quiet.stdout.splitlines() == loud.stdout.splitlines()[:-1] and "µAP" in quiet.stdout
    assert cli("eval", files["p"], "--gt", files["gt"], "-q", "--json").returncode == 0


# ------------------------------------------------------------------------------ the organisers' layouts


def test_headerless_predictions_score_as_with_the_header(files):
    headerless = files["dir"] / "organisers.csv"
    headerless.write_text(ROWS)
    with_header = json.loads(cli("eval", files["p"], "--gt", files["gt"], "--json").stdout)
    result = cli("eval", headerless, "--gt", files["gt"], "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == with_header and with_header["n_predictions"] == 3
    report = cli("report", headerless, "--gt", files["gt"], "--data", files["dir"], "-o", files["dir"] / "r.html",
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
def test_a_first_row_neither_header_nor_prediction_is_one_line(files, text, message):
    files["p"].write_text(text)
    one_line_error(cli("eval", files["p"], "--gt", files["gt"]), "isc-eval", str(files["p"]), message)


def test_headerless_ground_truth_is_refused(files):
    # the official ground-truth files (public_ground_truth.csv, subset_1_ground_truth.csv) all have the header
    files["gt"].write_text(GT.split("\n", 1)[1])
    one_line_error(cli("eval", files["p"], "--gt", files["gt"]), "isc-eval", "missing column")


def test_submit_matching_adds_the_header_to_a_headerless_file_and_records_the_provenance(files):
    headerless = files["dir"] / "organisers.csv"
    headerless.write_bytes(ROWS.replace("\n", "\r\n").encode())
    # what isc-search writes beside its predictions, here by hand
    sidecar = Path(str(headerless) + ".provenance.json")
    sidecar.write_text(json.dumps({"model": "sscd", "normalisation": {"beta": 1.0}}))
    out = files["dir"] / "upload.csv"
    result = cli("submit", "matching", headerless, "--phase", "1", "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"query_id,reference_id,score\r\n" + headerless.read_bytes()
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert manifest["header_added"] is True and manifest["counts"]["predictions"] == 3
    assert manifest["provenance"] == {str(sidecar): {"model": "sscd", "normalisation": {"beta": 1.0}}}
    # a file with its header is still copied byte for byte
    assert cli("submit", "matching", files["p"], "--phase", "1", "-o", out).returncode == 0
    assert out.read_bytes() == files["p"].read_bytes()
    assert json.loads(Path(str(out) + ".manifest.json").read_text())["header_added"] is False


def test_submit_matching_headerless_rows_are_checked_from_line_1(files):
    files["p"].write_text("Q50000,R000000,0.5\nQ00001,R000001,inf\n")
    result = cli("submit", "matching", files["p"], "--phase", "1", "-o", files["dir"] / "upload.csv")
    assert result.returncode == 2
    assert "line 1: query_id Q50000 is not a phase-1 query" in result.stderr
    assert "line 2: score 'inf'" in result.stderr
    assert not (files["dir"] / "upload.csv").exists()


def test_submit_descriptors_writes_the_organisers_split_files(descriptor_files):
    d = descriptor_files
    out, split = d["dir"] / "sub.h5", d["dir"] / "isc2021"
    result = cli("submit", *submit_descriptors_args(d, "-o", out, "--split-files", split, "--quiet"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in split.iterdir()) == ["query.h5", "reference.h5"]  # no temporary file left
    with h5py.File(out, "r") as track:
        expected = {name: (track[name][()], track[f"{name}_ids"][()]) for name in ("query", "reference")}
    for name, (vectors, ids) in expected.items():
        with h5py.File(split / f"{name}.h5", "r") as f:
            assert sorted(f) == ["image_names", "vectors"]
            assert f["vectors"].dtype == np.float32 and f["image_names"].dtype.kind == "S"
            np.testing.assert_array_equal(f["vectors"][()], vectors)
            assert f["image_names"][()].tolist() == ids.tolist() == sorted(ids.tolist())
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert set(manifest["split_files"]) == {"query", "reference"}
    assert manifest["split_files"]["query"]["path"] == str(split / "query.h5")


def test_split_files_onto_an_existing_file_is_refused(descriptor_files):
    d = descriptor_files
    (d["dir"] / "taken").write_text("not a folder")
    result = cli("submit", *submit_descriptors_args(d, "-o", d["dir"] / "sub.h5", "--split-files", d["dir"] / "taken"))
    one_line_error(result, "isc-submit", "exists and is not a directory")
    assert not (d["dir"] / "sub.h5").exists()
