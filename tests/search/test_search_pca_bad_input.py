"""isc-search, isc-pca and the descriptor formats under bad input: outputs over inputs, unchecked numbers,
mixed models, phases, provenance, the organisers' descriptor layout, class labels of a kNN graph."""

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import cli, one_line_error

from isc.core.descriptors import read_descriptor_classes, read_descriptors, write_descriptors
from isc.core.tables import read_predictions

MODEL_A = {"model": "a", "model_fingerprint": "aaaa", "image_size": 64}
MODEL_B = {"model": "b", "model_fingerprint": "bbbb", "image_size": 64}


def isc_search(*args: object) -> subprocess.CompletedProcess:
    # faiss-cpu: "auto" imports torch to look for a GPU, seconds a run
    return cli("search", "--backend", "faiss-cpu", *args)


def unit(seed: int, n: int, d: int = 8) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ids(prefix: str, numbers) -> list[str]:
    return [f"{prefix}{i:0{5 if prefix == 'Q' else 6}d}" for i in numbers]


def write_isc2021(path: Path, names: list[str], vectors: np.ndarray) -> None:
    """A descriptor file as the organisers' write_hdf5_descriptors writes it."""
    with h5py.File(path, "w") as f:
        f.create_dataset("vectors", data=np.ascontiguousarray(vectors, dtype="float32"))
        f.create_dataset("image_names", data=np.array([bytes(name, "ascii") for name in names]))


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    """q.h5 (20 phase-1 queries), r.h5 (60 references), t.h5 (40 training images), all of model A."""
    write_descriptors(tmp_path / "q.h5", ids("Q", range(20)), unit(0, 20), MODEL_A)
    write_descriptors(tmp_path / "r.h5", ids("R", range(60)), unit(1, 60), MODEL_A)
    write_descriptors(tmp_path / "t.h5", ids("T", range(40)), unit(2, 40), MODEL_A)
    return tmp_path


# ---------------------------------------------------------------------------------------- output guards


def test_search_refuses_to_write_over_its_reference_file(files):
    before = (files / "r.h5").read_bytes()
    line = one_line_error(isc_search("--query", files / "q.h5", "--reference", files / "r.h5", "-o", files / "r.h5"), "isc-search")
    assert f"output {files / 'r.h5'} is the input" in line
    assert (files / "r.h5").read_bytes() == before


def test_pca_learn_refuses_to_write_over_its_training_file(files):
    before = (files / "t.h5").read_bytes()
    line = one_line_error(cli("pca", "learn", files / "t.h5", "--dim", 4, "-o", files / "t.h5"), "isc-pca")
    assert "is the input" in line and (files / "t.h5").read_bytes() == before


def test_pca_apply_refuses_an_output_over_an_input_or_twice_the_same_output(files):
    assert cli("pca", "learn", files / "t.h5", "--dim", 4, "-o", files / "pca.npz", "--quiet").returncode == 0
    before = (files / "q.h5").read_bytes()
    line = one_line_error(cli("pca", "apply", files / "pca.npz", files / "q.h5", "-o", files / "q.h5"), "isc-pca")
    assert "is the input" in line and (files / "q.h5").read_bytes() == before
    line = one_line_error(cli("pca", "apply", files / "pca.npz", files / "q.h5", files / "r.h5",
                              "-o", files / "dd.h5", files / "dd.h5"), "isc-pca")
    assert "are the same file" in line and not (files / "dd.h5").exists()


@pytest.mark.parametrize("command", ["search", "pca learn"])
def test_an_existing_directory_as_output_file(files, command):
    (files / "out").mkdir()
    args = (["search", "--query", "q.h5", "--reference", "r.h5", "-o", "out"] if command == "search"
            else ["pca", "learn", "t.h5", "--dim", 4, "-o", "out"])
    assert one_line_error(cli(*args, cwd=files), f"isc-{args[0]}").endswith("out: is a directory (an output file is needed here)")


def test_knn_graph_into_an_existing_file(files):
    (files / "graph").write_text("keep me")
    line = one_line_error(isc_search("--knn-graph", files / "r.h5", "-o", files / "graph"), "isc-search")
    assert f"{files / 'graph'}: exists and is not a directory" in line
    assert (files / "graph").read_text() == "keep me"


@pytest.mark.parametrize("command", ["search", "pca learn", "knn-graph"])
def test_a_directory_given_as_descriptor_file(files, command):
    (files / "dir.h5").mkdir()
    args = {"search": ["search", "--query", files / "dir.h5", "--reference", files / "r.h5", "-o", files / "p.csv"],
            "pca learn": ["pca", "learn", files / "dir.h5", "-o", files / "pca.npz"],
            "knn-graph": ["search", "--knn-graph", files / "dir.h5", "-o", files / "graph"]}[command]
    line = one_line_error(cli(*args), f"isc-{args[0]}")
    assert f"{files / 'dir.h5'}: is a directory" in line and "no such file" not in line


# ---------------------------------------------------------------------------------------- checked numbers


@pytest.mark.parametrize("option, value", [
    ("--norm-beta", "nan"), ("--norm-beta", "-inf"), ("--nprobe", "0"), ("--k", "0"), ("--max-results", "0"),
])
def test_search_numbers_checked_at_parse_time(files, option, value):
    done = isc_search("--query", files / "q.h5", "--reference", files / "r.h5", "--training", files / "t.h5",
               "-o", files / "p.csv", f"{option}={value}")
    assert done.returncode == 2 and f"argument {option}:" in done.stderr and "Traceback" not in done.stderr
    assert not (files / "p.csv").exists()


@pytest.mark.parametrize("value", ["-3", "0"])
def test_pca_dimension_checked_at_parse_time(files, value):
    done = cli("pca", "learn", files / "t.h5", f"--dim={value}", "-o", files / "pca.npz")
    assert done.returncode == 2 and "argument --dim:" in done.stderr and not (files / "pca.npz").exists()


# ------------------------------------------------------------------------------------------ mixed models


def test_search_refuses_descriptors_of_another_model(files):
    write_descriptors(files / "rb.h5", ids("R", range(60)), unit(1, 60), MODEL_B)
    write_descriptors(files / "tb.h5", ids("T", range(40)), unit(2, 40), MODEL_B)
    for reference, training in (("rb.h5", "t.h5"), ("r.h5", "tb.h5")):
        line = one_line_error(isc_search("--query", files / "q.h5", "--reference", files / reference,
                                  "--training", files / training, "-o", files / "p.csv"), "isc-search")
        assert "were not made by the same model" in line and "model_fingerprint: 'aaaa' != 'bbbb'" in line
        assert not (files / "p.csv").exists()
    done = isc_search("--query", files / "q.h5", "--reference", files / "rb.h5", "-o", files / "p.csv",
               "--ignore-attribute", "model", "--ignore-attribute", "model_fingerprint", "--quiet")
    assert done.returncode == 0, done.stderr


def test_search_warns_about_files_without_model_attributes(files):
    write_isc2021(files / "official_r.h5", ids("R", range(60)), unit(1, 60))
    done = isc_search("--query", files / "q.h5", "--reference", files / "official_r.h5", "-o", files / "p.csv",
               "--quiet")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "no model attributes" in line]
    assert len(warnings) == 1 and "official_r.h5" in warnings[0] and "isc-search: warning:" in warnings[0]


# ------------------------------------------------------------------------------------------------ phases


def test_search_phase_keeps_that_phase_queries(tmp_path, files):
    both = [*range(10), *range(50_000, 50_010)]
    write_descriptors(tmp_path / "both.h5", ids("Q", both), unit(3, 20), MODEL_A)
    for phase in (1, 2):
        done = isc_search("--query", tmp_path / "both.h5", "--reference", files / "r.h5", "--phase", phase,
                   "--k", 2, "-o", tmp_path / f"p{phase}.csv")
        assert done.returncode == 0, done.stderr
        assert f"queries (phase {phase}) written to" in done.stdout
        queries = set(read_predictions(tmp_path / f"p{phase}.csv")["query_id"])
        assert queries == set(ids("Q", both[:10] if phase == 1 else both[10:]))
    line = one_line_error(isc_search("--query", files / "q.h5", "--reference", files / "r.h5", "--phase", 2,
                              "-o", tmp_path / "none.csv"), "isc-search")
    assert "none of its 20 queries is a phase-2 query (Q50000-Q99999)" in line
    assert not (tmp_path / "none.csv").exists()


# -------------------------------------------------------------------------------------------- provenance


def test_search_provenance_fills_the_submission_manifest(files):
    done = isc_search("--query", files / "q.h5", "--reference", files / "r.h5", "--training", files / "t.h5",
               "--k", 3, "--norm-beta", 1.5, "--phase", 1, "-o", files / "p.csv", "--quiet")
    assert done.returncode == 0, done.stderr
    record = json.loads((files / "p.csv.provenance.json").read_text())
    assert record["command"] == "isc-search" and record["isc_version"]
    assert record["options"]["k"] == 3 and record["options"]["norm_beta"] == 1.5 and record["options"]["phase"] == 1
    for split, name in (("query", "q.h5"), ("reference", "r.h5"), ("training", "t.h5")):
        described = record["inputs"][split]
        assert described["path"] == str((files / name).resolve())
        assert described["bytes"] == (files / name).stat().st_size
        assert described["model_attributes"]["model_fingerprint"] == "aaaa"
        assert "isc_version" not in described["model_attributes"]  # per-run attributes are not the model's
    assert record["predictions"] == {"rows": 60, "queries": 20}
    (files / "expected_q.txt").write_text("\n".join(ids("Q", range(20))) + "\n")
    (files / "expected_r.txt").write_text("\n".join(ids("R", range(60))) + "\n")
    submitted = cli("submit", "matching", files / "p.csv", "--phase", 1, "-o", files / "sub" / "matching.csv",
                    "--expected-queries", files / "expected_q.txt", "--expected-references",
                    files / "expected_r.txt", "--quiet")
    assert submitted.returncode == 0, submitted.stderr
    manifest = json.loads((files / "sub" / "matching.csv.manifest.json").read_text())
    (recorded,) = manifest["provenance"].values()
    assert recorded["inputs"]["query"]["model_attributes"]["model"] == "a"
    assert recorded["options"]["k"] == 3


# ------------------------------------------------------------------------------------------- isc-pca quiet


def test_pca_quiet_and_messages(files):
    learn = cli("pca", "learn", files / "t.h5", "--dim", 4, "-o", files / "pca.npz", "--quiet")
    apply = cli("pca", "apply", files / "pca.npz", files / "q.h5", "-o", files / "q4.h5", "--quiet")
    assert learn.returncode == apply.returncode == 0 and learn.stdout == apply.stdout == ""
    learn = cli("pca", "learn", files / "t.h5", "--dim", 4, "-o", files / "pca.npz")
    assert learn.stdout.startswith("PCA-whitening 8 -> 4 dimensions learnt on 40 descriptors, saved to")
    apply = cli("pca", "apply", files / "pca.npz", files / "r.h5", "-o", files / "r4.h5")
    assert apply.stdout.strip() == f"{files / 'r.h5'} -> {files / 'r4.h5'}: 60 descriptors of dimension 4"


# ------------------------------------------------------------------------------- the organisers' layout


def test_isc2021_layout_is_read_and_its_names_become_ids(tmp_path):
    write_isc2021(tmp_path / "q.h5", ["Q00000", "query_images/Q00001.jpg", "Q00002.png"], unit(0, 3))
    read_ids, vectors, attrs = read_descriptors(tmp_path / "q.h5", split="query")
    assert read_ids == ["Q00000", "Q00001", "Q00002"] and attrs == {"dimension": 8}
    np.testing.assert_array_equal(vectors, unit(0, 3))


def test_isc2021_layout_through_search_pca_and_submit(tmp_path):
    write_isc2021(tmp_path / "q.h5", ids("Q", range(20)), unit(0, 20))
    write_isc2021(tmp_path / "r.h5", ids("R", range(60)), unit(1, 60))
    write_isc2021(tmp_path / "t.h5", ids("T", range(40)), unit(2, 40))
    done = isc_search("--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--training",
               tmp_path / "t.h5", "--k", 2, "-o", tmp_path / "p.csv", "--quiet")
    assert done.returncode == 0, done.stderr
    assert len(read_predictions(tmp_path / "p.csv")) == 40 and "no model attributes" in done.stderr

    assert cli("pca", "learn", tmp_path / "t.h5", "--dim", 4, "-o", tmp_path / "pca.npz").returncode == 0
    done = cli("pca", "apply", tmp_path / "pca.npz", tmp_path / "q.h5", "-o", tmp_path / "q4.h5")
    assert done.returncode == 0, done.stderr
    assert read_descriptors(tmp_path / "q4.h5", split="query")[1].shape == (20, 4)

    (tmp_path / "expected_q.txt").write_text("\n".join(ids("Q", range(20))) + "\n")
    (tmp_path / "expected_r.txt").write_text("\n".join(ids("R", range(60))) + "\n")
    done = cli("submit", "descriptors", "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--phase", 1,
               "--expected-queries", tmp_path / "expected_q.txt", "--expected-references",
               tmp_path / "expected_r.txt", "-o", tmp_path / "sub" / "descriptors.h5", "--quiet")
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "sub" / "descriptors.h5") as f:
        assert f["query"].shape == (20, 8) and f["reference"].shape == (60, 8)


def test_a_file_of_neither_layout_names_the_datasets_expected(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((2, 4), np.float32))
    for args in (["search", "--query", tmp_path / "other.h5", "--reference", tmp_path / "other.h5",
                  "-o", tmp_path / "p.csv"],
                 ["pca", "learn", tmp_path / "other.h5", "-o", tmp_path / "pca.npz"]):
        line = one_line_error(cli(*args), f"isc-{args[0]}")
        assert "not a descriptor file" in line and "found features" in line
        assert "ids and descriptors (isc-extract) or image_names and vectors (isc2021)" in line


# ----------------------------------------------------------------------------------------- class labels


def test_knn_graph_writes_class_labels(tmp_path):
    classes = ["dog", "cat", "dog", "bird", "cat", "cat"] * 5
    with h5py.File(tmp_path / "pets.h5", "w") as f:
        f.create_dataset("ids", data=np.array([f"img{i:03d}".encode() for i in range(30)]))
        f.create_dataset("descriptors", data=unit(4, 30))
        f.create_dataset("classes", data=np.array([c.encode("ascii") for c in classes]))
    assert read_descriptor_classes(tmp_path / "pets.h5") == classes
    done = isc_search("--knn-graph", tmp_path / "pets.h5", "-o", tmp_path / "graph", "--k", 5, "--quiet")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "graph" / "labels" / "pets.meta").read_text().splitlines()
    assert lines == [str({"bird": 0, "cat": 1, "dog": 2}[c]) for c in classes]
    assert np.fromfile(tmp_path / "graph" / "features" / "pets.bin", np.float32).shape == (30 * 8,)

    write_descriptors(tmp_path / "plain.h5", ids("R", range(30)), unit(4, 30))
    assert read_descriptor_classes(tmp_path / "plain.h5") is None
    assert isc_search("--knn-graph", tmp_path / "plain.h5", "-o", tmp_path / "graph", "--k", 5,
               "--quiet").returncode == 0
    assert not (tmp_path / "graph" / "labels" / "plain.meta").exists()


def test_classes_not_aligned_with_the_rows(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("ids", data=np.array([b"a", b"b", b"c"]))
        f.create_dataset("descriptors", data=unit(5, 3))
        f.create_dataset("classes", data=np.array([b"x", b"y"]))
    line = one_line_error(isc_search("--knn-graph", tmp_path / "bad.h5", "-o", tmp_path / "graph"), "isc-search")
    assert "2 classes for 3 descriptors" in line
