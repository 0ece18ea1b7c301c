"""Rules isc-submit and a --phase search enforce: statistics (whitening, negatives, score normalisation) come
from the training split only."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, one_line_error

from isc.core.competition import image_id
from isc.core.descriptors import write_descriptors

SIZES = {"training": 60, "query": 20, "reference": 30}


@pytest.fixture
def files(tmp_path) -> Path:
    """training.h5, query.h5 (phase 1), reference.h5 of one model, 32-d, and the id lists a submission expects."""
    rng = np.random.default_rng(0)
    for split, n in SIZES.items():
        ids = [image_id(split, i) for i in range(n)]
        write_descriptors(tmp_path / f"{split}.h5", ids, rng.normal(size=(n, 32)).astype(np.float32),
                          {"model": "m", "split": split})
        (tmp_path / f"{split}_ids.txt").write_text("\n".join(ids) + "\n")
    write_descriptors(tmp_path / "mine.h5", [f"photo {i}" for i in range(40)],
                      rng.normal(size=(40, 32)).astype(np.float32), {"model": "m"})
    return tmp_path


def whiten_and_submit(files: Path, learnt_on: str, *apply_options: object) -> subprocess.CompletedProcess:
    assert cli("pca", "learn", files / learnt_on, "-o", files / "pca.npz", "--dim", 8).returncode == 0
    applied = cli("pca", "apply", files / "pca.npz", files / "query.h5", files / "reference.h5", "-o",
                  files / "q_pca.h5", files / "r_pca.h5", *apply_options)
    assert applied.returncode == 0, applied.stderr
    return cli("submit", "descriptors", "--query", files / "q_pca.h5", "--reference", files / "r_pca.h5", "--phase", 1,
               "--expected-queries", files / "query_ids.txt", "--expected-references", files / "reference_ids.txt",
               "-o", files / "submission.h5")


def test_the_pca_file_records_its_split_and_size(files):
    assert cli("pca", "learn", files / "training.h5", "-o", files / "pca.npz", "--dim", 8).returncode == 0
    with np.load(files / "pca.npz") as f:
        recorded = json.loads(str(f["attrs"]))
    assert recorded["trained_split"] == "training" and recorded["n_train"] == SIZES["training"]


def test_whitening_learnt_on_the_training_split_is_accepted(files):
    done = whiten_and_submit(files, "training.h5")
    assert done.returncode == 0, done.stderr
    assert (files / "submission.h5").is_file()


@pytest.mark.parametrize("learnt_on, recorded", [
    ("query.h5", "(query, 20 images)"),
    ("reference.h5", "(reference, 30 images)"),
    ("mine.h5", "(no split recorded, 40 images)"),
])
def test_whitening_learnt_on_another_split_is_refused(files, learnt_on, recorded):
    done = whiten_and_submit(files, learnt_on)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"were whitened by a PCA learnt on {files / learnt_on} {recorded}" in done.stderr
    assert "the rules allow statistics of the training split only" in done.stderr
    assert not (files / "submission.h5").exists()


def test_negatives_from_another_split_are_refused(files):
    done = whiten_and_submit(files, "training.h5", "--negatives", files / "reference.h5")
    assert done.returncode == 2 and f"made with negatives from {files / 'reference.h5'} (reference)" in done.stderr
    assert not (files / "submission.h5").exists()
    accepted = whiten_and_submit(files, "training.h5", "--negatives", files / "training.h5")
    assert accepted.returncode == 0, accepted.stderr


def test_a_phase_search_normalises_with_training_images_only(files):
    refused = cli("search", "--query", files / "query.h5", "--reference", files / "reference.h5", "--training",
                  files / "mine.h5", "--phase", 1, "-o", files / "p.csv")
    one_line_error(refused, "isc-search", "mine.h5: id #0 is 'photo 0', not a training id", "a phase applies")
    assert not (files / "p.csv").exists()
    done = cli("search", "--query", files / "query.h5", "--reference", files / "reference.h5", "--training",
               files / "training.h5", "--phase", 1, "-o", files / "p.csv")
    assert done.returncode == 0, done.stderr
    # without --phase, a collection of one's own normalises with any images
    free = cli("search", "--query", files / "query.h5", "--reference", files / "reference.h5", "--training",
               files / "mine.h5", "-o", files / "p_free.csv")
    assert free.returncode == 0, free.stderr
