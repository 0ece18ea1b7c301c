"""isc-submit on hostile or unusual input: outputs onto its inputs or the ground truth, headerless
predictions given their header and checked from line 1, the organisers' split descriptor files."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import GT, ROWS, cli, one_line_error

from isc.core.descriptors import write_descriptor_track, write_descriptors

ATTRS = {"model": "resnet50", "image_size": 224}


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


def test_submit_score_cannot_write_predictions_over_the_ground_truth(scored_files, descriptor_files):
    submission = scored_files["dir"] / "sub.h5"
    write_descriptor_track(submission, ["Q00000"], np.ones((1, 4)), ["R000000"], np.ones((1, 4)))
    result = cli("submit", "score", submission, "--gt", scored_files["gt"], "--write-predictions", scored_files["gt"])
    one_line_error(result, "isc-submit", "is the input")
    assert scored_files["gt"].read_text() == GT


def test_submit_matching_onto_its_input_is_refused(scored_files):
    before = scored_files["p"].read_bytes()
    one_line_error(cli("submit", "matching", scored_files["p"], "--phase", "1", "-o", scored_files["p"]), "isc-submit", "is the input")
    assert scored_files["p"].read_bytes() == before
    assert not Path(str(scored_files["p"]) + ".manifest.json").exists()


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


def test_submit_matching_adds_the_header_to_a_headerless_file_and_records_the_provenance(scored_files):
    headerless = scored_files["dir"] / "organisers.csv"
    headerless.write_bytes(ROWS.replace("\n", "\r\n").encode())
    # what isc-search writes beside its predictions, here by hand
    sidecar = Path(str(headerless) + ".provenance.json")
    sidecar.write_text(json.dumps({"model": "sscd", "normalisation": {"beta": 1.0}}))
    out = scored_files["dir"] / "upload.csv"
    result = cli("submit", "matching", headerless, "--phase", "1", "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"query_id,reference_id,score\r\n" + headerless.read_bytes()
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert manifest["header_added"] is True and manifest["counts"]["predictions"] == 3
    assert manifest["provenance"] == {str(sidecar): {"model": "sscd", "normalisation": {"beta": 1.0}}}
    # a file with its header is still copied byte for byte
    assert cli("submit", "matching", scored_files["p"], "--phase", "1", "-o", out).returncode == 0
    assert out.read_bytes() == scored_files["p"].read_bytes()
    assert json.loads(Path(str(out) + ".manifest.json").read_text())["header_added"] is False


def test_submit_matching_headerless_rows_are_checked_from_line_1(scored_files):
    scored_files["p"].write_text("Q50000,R000000,0.5\nQ00001,R000001,inf\n")
    result = cli("submit", "matching", scored_files["p"], "--phase", "1", "-o", scored_files["dir"] / "upload.csv")
    assert result.returncode == 2
    assert "line 1: query_id Q50000 is not a phase-1 query" in result.stderr
    assert "line 2: score 'inf'" in result.stderr
    assert not (scored_files["dir"] / "upload.csv").exists()


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
