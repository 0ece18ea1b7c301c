"""isc-find and isc-run as subprocesses on tiny images: no output over an image or its report, no file paired
with itself across nested folders, unreadable files listed, training images kept apart from the queries, a
folder of one image said so, a descriptor cache that sees changed images and another checkpoint; isc-run
checks a given calibration before any step."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli, error_of, named_photo, rewrite_keeping_size_and_times

from isc.core.descriptors import read_descriptor_attrs

PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """real/ (3 photos) holding real/r/ (their crops): one folder inside the other."""
    root = tmp_path_factory.mktemp("round4_find")
    (root / "real" / "r").mkdir(parents=True)
    for name in PHOTOS:
        photo = named_photo(name, 96)
        photo.save(root / "real" / f"{name}.jpg", quality=90)
        photo.crop((4, 4, photo.width - 4, photo.height * 3 // 4)).save(root / "real" / "r" / f"{name} crop.jpg",
                                                                         quality=90)
    return root


def test_find_never_writes_over_an_image_nor_its_report(folders, tmp_path):
    image, other = folders / "real" / "r" / "coffee crop.jpg", folders / "real" / "chelsea.jpg"
    before, other_before = image.read_bytes(), other.read_bytes()
    done = cli("find", folders / "real" / "r", "-o", image, "--model", "pdq", "--cache", tmp_path / "c")
    assert done.returncode == 2
    assert done.stderr == error_of("find", f"output {image} is the input image {image}: writing it would destroy "
                                   "the input")
    done = cli("find", folders / "real", "-o", tmp_path / "m.csv", "--report", other, "--model", "pdq",
               "--cache", tmp_path / "c")
    assert done.returncode == 2
    assert done.stderr == error_of("find", f"output {other} is the input image {other}: writing it would destroy "
                                   "the input")
    assert (image.read_bytes(), other.read_bytes()) == (before, other_before)
    assert not (tmp_path / "c").exists() and not (tmp_path / "m.csv").exists()


def test_an_image_suffix_inside_an_image_folder_is_refused_another_file_written(folders, tmp_path):
    """Every name with an image suffix is listed (a broken one too): such an output would be read next run; a
    file of another suffix (an earlier run's output) is no image any listing reads."""
    notes = folders / "real" / "notes.json"
    notes.write_text("an earlier run's")
    try:
        done = cli("find", folders / "real", "-o", notes, "--model", "pdq", "--threshold", "0.55", "--cache", tmp_path / "c", "--quiet")
        assert done.returncode == 0, done.stderr
        assert "pairs" in json.loads(notes.read_text())
    finally:
        notes.unlink()
    assert sorted(p.name for p in (folders / "real").iterdir()) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "r"]


def test_find_never_pairs_a_file_with_itself_across_nested_folders(folders, tmp_path):
    out = tmp_path / "m.csv"
    done = cli("find", folders / "real", folders / "real" / "r", "-o", out, "--model", "pdq", "--threshold", "1e-9",
               "--cache", tmp_path / "c", "--quiet")
    assert done.returncode == 0, done.stderr
    pairs = pd.read_csv(out)
    same = [os.path.samefile(q, r) for q, r in zip(pairs["query_path"], pairs["reference_path"], strict=True)]
    assert len(pairs) > 0 and not any(same)
    # every query is still searched: the 3 photos and the 3 crops (each against the 2 other crops)
    assert pairs["query_id"].nunique() == 6
    lone = tmp_path / "lone"  # a lone reference, inside the queries: no search is left for its own query
    (lone / "r").mkdir(parents=True)
    shutil.copy(folders / "real" / "coffee.jpg", lone / "r")
    shutil.copy(folders / "real" / "chelsea.jpg", lone)
    done = cli("find", lone, lone / "r", "-o", out, "--model", "pdq", "--threshold", "1e-9", "--no-crops", "--quiet")
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(out)[["query_id", "reference_id"]].values.tolist() == [["chelsea", "coffee"]]


def test_find_lists_unreadable_files(folders, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(folders / "real", folder)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image\n")
    (folder / "cut.jpg").write_bytes((folders / "real" / "coffee.jpg").read_bytes()[:300])
    out = tmp_path / "m.csv"
    done = cli("find", folder, "-o", out, "--model", "pdq", "--threshold", "0.55", "--cache", tmp_path / "c")
    assert done.returncode == 0, done.stderr
    sidecar = tmp_path / "m.unreadable.csv"
    assert f"isc-find: warning: 3 unreadable image(s) left out, listed in {sidecar}" in done.stderr.splitlines()
    listed = pd.read_csv(sidecar)
    assert list(listed["path"]) == [str(folder / name) for name in ("cut.jpg", "text.png", "zero.jpg")]
    assert list(listed["reason"]) == ["cannot read (Truncated File Read)", "not an image (unidentified format)",
                                      "empty file (0 bytes)"]
    # a JSON output holds them too, from the cache (nothing described again), and --quiet says nothing
    done = cli("find", folder, "-o", tmp_path / "m.json", "--model", "pdq", "--threshold", "0.55", "--cache", tmp_path / "c", "--quiet")
    assert done.returncode == 0 and "unreadable" not in done.stderr
    assert json.loads((tmp_path / "m.json").read_text())["unreadable"] == dict(zip(listed["path"], listed["reason"],
                                                                                 strict=True))


def test_find_refuses_training_images_among_the_queries(folders, tmp_path):
    done = cli("find", folders / "real" / "r", "-o", tmp_path / "m.csv", "--model", "pdq", "--threshold", "0.55", "--training",
               folders / "real", "--cache", tmp_path / "c")
    assert done.returncode == 2 and not (tmp_path / "c").exists()
    assert done.stderr == error_of("find", f"the training images {folders / 'real'} include 3 of the query images "
                                   f"(first {folders / 'real' / 'r' / 'astronaut crop.jpg'}): training images must be "
                                   "unrelated to them, the scores would be normalised by the images' own copies")


def test_find_on_a_folder_of_one_image_says_so(folders, tmp_path):
    (tmp_path / "one").mkdir()
    shutil.copy(folders / "real" / "coffee.jpg", tmp_path / "one")
    done = cli("find", tmp_path / "one", "-o", tmp_path / "m.json", "--model", "pdq", "--threshold", "0.55", "--quiet")
    assert done.returncode == 2
    assert done.stderr == error_of("find", f"{tmp_path / 'one'}: 1 readable image(s) of 1: copies within one folder "
                                   "need at least 2")


def test_find_cache_sees_changed_and_deleted_images(folders, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(folders / "real", folder)
    args = ["--model", "pdq", "--threshold", "1e-9", "--no-crops", "--quiet"]
    assert cli("find", folder, "-o", tmp_path / "before.csv", "--cache", tmp_path / "c", *args).returncode == 0
    rewrite_keeping_size_and_times(folder / "coffee.jpg", named_photo("rocket", 96))
    (folder / "chelsea.jpg").unlink()
    assert cli("find", folder, "-o", tmp_path / "cached.csv", "--cache", tmp_path / "c", *args).returncode == 0
    assert cli("find", folder, "-o", tmp_path / "fresh.csv", "--cache", tmp_path / "f", *args).returncode == 0
    before, cached, fresh = (pd.read_csv(tmp_path / f"{name}.csv") for name in ("before", "cached", "fresh"))
    pd.testing.assert_frame_equal(cached, fresh)
    assert not cached.equals(before[before["query_id"] != "chelsea"].reset_index(drop=True))
    assert "chelsea" not in set(cached["query_id"]) | set(cached["reference_id"])


def test_find_cache_sees_another_checkpoint_under_the_same_name(folders, tmp_path):
    import torch

    from isc.models import create_model
    from isc.models.checkpoints import save_checkpoint

    checkpoint = tmp_path / "model.pt"
    model = create_model("resnet10t", dim=8, image_size=32, pretrained=False)
    save_checkpoint(model, checkpoint)
    args = [folders / "real", "--checkpoint", checkpoint, "--device", "cpu", "--workers", "0", "--threshold", "1e-9",
            "--no-crops", "--quiet", "--cache", tmp_path / "c"]
    assert cli("find", *args, "-o", tmp_path / "before.csv").returncode == 0
    with torch.no_grad():
        model.net.head.projection.weight.mul_(-1)
    save_checkpoint(model, checkpoint)  # the same model name and path, other weights
    assert cli("find", *args, "-o", tmp_path / "after.csv").returncode == 0
    # the cache now holds the new weights' descriptors (two torch runs: the model under test is a real network)
    [cache] = (tmp_path / "c").glob("real-*/resnet10t.h5")  # the folder's cache, by folder and model
    assert read_descriptor_attrs(cache)["model_fingerprint"] == model.fingerprint()
    before, after = (pd.read_csv(tmp_path / f"{name}.csv") for name in ("before", "after"))
    assert not after["score"].equals(before["score"])


def test_run_checks_a_given_calibration_before_any_step(tmp_path):
    calibration = tmp_path / "cal.json"
    calibration.write_text(json.dumps({"format": "isc-calibration", "version": 1}))
    done = cli("run", tmp_path / "work", "--data", tmp_path / "data", "--model", "pdq", "--calibration", calibration)
    assert done.returncode == 2 and not (tmp_path / "work").exists()
    assert done.stderr == error_of("run", f"{calibration}: damaged calibration file (KeyError: 'features')")
