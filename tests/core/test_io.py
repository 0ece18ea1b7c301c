"""File formats: round trips and the rejection of malformed files."""

import os
import stat

import h5py
import numpy as np
import pandas as pd
import pytest

from isc.core.competition import phase_query_ids, query_phase, split_of_id, validate_ids
from isc.core.descriptors import (
    read_descriptor_attrs,
    read_descriptor_track,
    read_descriptors,
    write_descriptor_track,
    write_descriptors,
)
from isc.core.files import InputError, atomic_path
from isc.core.tables import (
    read_ground_truth,
    read_metadata,
    read_predictions,
    write_ground_truth,
    write_metadata,
    write_predictions,
)


def test_ids_and_phases():
    assert split_of_id("Q00000") == "query"
    assert split_of_id("R999999") == "reference"
    assert split_of_id("T000123") == "training"
    for bad in ("Q0000", "Q000000", "R00000", "q00000", "X000000", "R00000a", ""):
        with pytest.raises(InputError):
            split_of_id(bad)
    assert (query_phase("Q49999"), query_phase("Q50000")) == (1, 2)
    ids = phase_query_ids(2)
    assert (len(ids), ids[0], ids[-1]) == (50_000, "Q50000", "Q99999")
    with pytest.raises(InputError, match="#1 is 'R00001'"):
        validate_ids(["R000000", "R00001"], "reference", "refs.h5")


def test_descriptors_round_trip(tmp_path):
    path = tmp_path / "reference.h5"
    rng = np.random.default_rng(0)
    descriptors = rng.standard_normal((5, 8)).astype(np.float32)
    ids = [f"R{i:06d}" for i in range(5)]
    write_descriptors(path, ids, descriptors, {"model": "efficientnet_lite0", "image_size": 224})
    read_ids, read_desc, attrs = read_descriptors(path, split="reference")
    assert read_ids == ids
    np.testing.assert_array_equal(read_desc, descriptors)
    assert attrs["model"] == "efficientnet_lite0" and attrs["image_size"] == 224 and attrs["dimension"] == 8
    assert "isc_version" in attrs
    assert read_descriptor_attrs(path)["model"] == "efficientnet_lite0"
    with pytest.raises(InputError, match="not a query id"):
        read_descriptors(path, split="query")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda f: (f.create_dataset("ids", data=np.array([b"R000000"])),
                    f.create_dataset("descriptors", data=np.zeros((2, 4), np.float32))), "1 ids but 2 descriptors"),
        (lambda f: (f.create_dataset("ids", data=np.array([b"R000000"])),
                    f.create_dataset("descriptors", data=np.zeros((1, 4), np.int32))), "dtype int32"),
        (lambda f: (f.create_dataset("ids", data=np.array([b"R000000"])),
                    f.create_dataset("descriptors", data=np.zeros(4, np.float32))), "2-d array"),
        (lambda f: (f.create_dataset("ids", data=np.array([b"R000000"])),
                    f.create_dataset("descriptors", data=np.full((1, 4), np.nan, np.float32))), "NaN"),
        (lambda f: f.create_dataset("ids", data=np.array([b"R000000"])), "missing datasets descriptors"),
        (lambda f: (f.create_dataset("ids", data=np.array([b"R000000", b"R000000"])),
                    f.create_dataset("descriptors", data=np.zeros((2, 4), np.float32))), "more than once"),
    ],
)
def test_malformed_descriptor_files(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        make(f)
    with pytest.raises(InputError, match=message):
        read_descriptors(path)


def test_not_hdf5_and_missing(tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_descriptors(tmp_path / "x.h5")
    with pytest.raises(InputError, match="no such file"):
        read_descriptors(tmp_path / "missing.h5")


def test_descriptor_track_round_trip_sorts_ids(tmp_path):
    path = tmp_path / "track.h5"
    query = np.arange(6, dtype=np.float32).reshape(3, 2)
    reference = np.arange(8, dtype=np.float32).reshape(4, 2)
    write_descriptor_track(path, ["Q00002", "Q00000", "Q00001"], query,
                           ["R000003", "R000001", "R000000", "R000002"], reference)
    with h5py.File(path, "r") as f:
        assert set(f) == {"query", "reference", "query_ids", "reference_ids"}
        assert f["query"].dtype == np.float32
    qids, q, rids, r = read_descriptor_track(path)
    assert qids == ["Q00000", "Q00001", "Q00002"]
    np.testing.assert_array_equal(q, query[[1, 2, 0]])
    assert rids == ["R000000", "R000001", "R000002", "R000003"]
    np.testing.assert_array_equal(r, reference[[2, 1, 3, 0]])


def test_descriptor_track_limits(tmp_path):
    with pytest.raises(InputError, match="at most 256"):
        write_descriptor_track(tmp_path / "t.h5", ["Q00000"], np.zeros((1, 257)), ["R000000"], np.zeros((1, 257)))
    assert not (tmp_path / "t.h5").exists()
    path = tmp_path / "unsorted.h5"
    with h5py.File(path, "w") as f:
        f["query"] = np.zeros((2, 4), np.float32)
        f["query_ids"] = np.array([b"Q00001", b"Q00000"])
        f["reference"] = np.zeros((1, 4), np.float32)
        f["reference_ids"] = np.array([b"R000000"])
    with pytest.raises(InputError, match="not sorted"):
        read_descriptor_track(path)


def write(tmp_path, text, name="f.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("query_id,reference_id\nQ00000,R000000\n", "missing column"),
        # any id is an id (the competition's rules are isc-submit's), but not an empty one
        ("query_id,reference_id,score\nQ00000,R000000,0.5\n,R000000,0.4\n", "line 3: query_id is empty"),
        ("query_id,reference_id,score\nQ00000,,0.5\n", "line 2: reference_id is empty"),
        ("query_id,reference_id,score\nQ00000,R000000,nan\n", "line 2: score 'nan'"),
        ("query_id,reference_id,score\nQ00000,R000000,inf\n", "line 2: score 'inf'"),
        ("query_id,reference_id,score\nQ00000,R000000,high\n", "line 2: score 'high'"),
        ("query_id,reference_id,score\nQ00000,R000000,\n", "line 2: score \\(empty\\)"),
        ("", "empty file"),
        ("query_id,reference_id,score\nQ00000,R000000,1,extra\n", "not a valid predictions CSV"),
    ],
)
def test_malformed_predictions(tmp_path, text, message):
    with pytest.raises(InputError, match=message) as info:
        read_predictions(write(tmp_path, text))
    assert "f.csv" in str(info.value)


def test_duplicated_predictions_keep_best_with_warning(tmp_path):
    path = write(tmp_path, "query_id,reference_id,score\nQ00000,R000000,0.2\nQ00001,R000001,0.3\nQ00000,R000000,0.9\n")
    with pytest.raises(InputError, match="line 4: pair .* already at line 2"):
        read_predictions(path)
    with pytest.warns(UserWarning, match="1 duplicated"):
        df = read_predictions(path, duplicates="keep-best")
    assert df.set_index(["query_id", "reference_id"])["score"].to_dict() == {
        ("Q00000", "R000000"): 0.9, ("Q00001", "R000001"): 0.3}


def test_predictions_round_trip_sorted(tmp_path):
    df = pd.DataFrame({"query_id": ["Q00000", "Q00001"], "reference_id": ["R000000", "R000001"], "score": [0.1, 0.7]})
    path = tmp_path / "p.csv"
    write_predictions(path, df)
    assert path.read_text().splitlines()[0] == "query_id,reference_id,score"
    back = read_predictions(path)
    assert list(back["query_id"]) == ["Q00001", "Q00000"]
    assert list(back["score"]) == [0.7, 0.1]


def test_ground_truth(tmp_path):
    gt = pd.DataFrame({"query_id": ["Q00000", "Q00001"], "reference_id": ["R000003", ""]})
    path = tmp_path / "gt.csv"
    write_ground_truth(path, gt)
    assert path.read_text() == "query_id,reference_id\nQ00000,R000003\nQ00001,\n"
    pd.testing.assert_frame_equal(read_ground_truth(path), gt)
    with pytest.raises(InputError, match="line 3: query_id is empty"):
        read_ground_truth(write(tmp_path, "query_id,reference_id\nQ00000,\n,R3\n"))
    with pytest.raises(InputError, match="already at line 2"):
        read_ground_truth(write(tmp_path, "query_id,reference_id\nQ00000,R000001\nQ00000,R000001\n"))


def test_metadata(tmp_path):
    md = pd.DataFrame({
        "image_id": ["Q00000"],
        "s3_uri": ["s3://drivendata-competition-fb-isc-data/all/query_images/Q00000.jpg"],
        "md5_checksum": ["de21a5603cc2b2a4b1a2d96e3f2a0d6b"],
    })
    path = tmp_path / "query_metadata.csv"
    write_metadata(path, md)
    pd.testing.assert_frame_equal(read_metadata(path, split="query"), md)
    with pytest.raises(InputError, match="not a reference id"):
        read_metadata(path, split="reference")
    bad_md5 = "image_id,s3_uri,md5_checksum\nQ00000,s3://b/k.jpg,xyz\n"
    with pytest.raises(InputError, match="line 2: md5_checksum 'xyz'"):
        read_metadata(write(tmp_path, bad_md5))
    bad_uri = "image_id,s3_uri,md5_checksum\nQ00000,http://b/k.jpg,de21a5603cc2b2a4b1a2d96e3f2a0d6b\n"
    with pytest.raises(InputError, match="not an s3:// address"):
        read_metadata(write(tmp_path, bad_uri))
    with pytest.raises(InputError, match="missing column"):
        read_metadata(write(tmp_path, "image_id,md5\nQ00000,x\n"))


def test_atomic_path_gives_the_usual_file_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("x")
        (tmp_path / "plain.csv").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
