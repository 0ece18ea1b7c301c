"""Any file name is an id: extract, search, eval, report and pca take them, hostile ones included; the
competition's id rules apply only where the competition needs them, and say so."""

import html
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli, one_line_error
from PIL import Image

from isc.core.descriptors import read_descriptors, write_descriptors
from isc.core.tables import read_predictions, write_ground_truth

# names that break HTML, CSV, or ASCII-only storage if an output forgets to escape, quote or encode them
HOSTILE = ["<img src=x onerror=alert(1)>", "a,b", "say \"hi\" it's", "new\nline", "café", "plain"]
SUFFIXES = [".jpg", ".jpg", ".jpg", ".png", ".png", ".webp"]


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> Path:
    """Six random-noise images named as :data:`HOSTILE` (one JPEG in two: a PNG and a WebP too)."""
    folder = tmp_path_factory.mktemp("hostile") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, suffix in zip(HOSTILE, SUFFIXES, strict=True):
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((144, 144), Image.NEAREST).save(folder / f"{name}{suffix}")
    return folder


@pytest.fixture(scope="module")
def described(hostile_folder) -> Path:
    out = hostile_folder.parent / "described.h5"
    done = cli("extract", "--images", hostile_folder, "-o", out, "--model", "pdq", "--quiet")
    assert done.returncode == 0, done.stderr
    return out


def test_hostile_names_are_ids_through_extract_search_and_the_csv(described, tmp_path):
    ids, _, _ = read_descriptors(described)
    assert sorted(ids) == sorted(HOSTILE)  # the UTF-8 and the newline survive HDF5
    predictions = tmp_path / "p.csv"
    done = cli("search", "--query", described, "--reference", described, "-o", predictions, "--k", 2, "--quiet")
    assert done.returncode == 0, done.stderr
    read_back = read_predictions(predictions)
    assert set(read_back["query_id"]) == set(HOSTILE) and set(read_back["reference_id"]) <= set(HOSTILE)
    # a folder searched against itself: every image's 2 nearest others, never itself
    assert len(read_back) == 2 * len(HOSTILE)
    assert not (read_back["query_id"] == read_back["reference_id"]).any()
    assert '"a,b"' in predictions.read_text(encoding="utf-8")  # quoted, not split into two fields


def test_eval_and_report_of_hostile_names_escape_them(described, hostile_folder, tmp_path):
    predictions, gt = tmp_path / "p.csv", tmp_path / "gt.csv"
    assert cli("search", "--query", described, "--reference", described, "-o", predictions, "--quiet").returncode == 0
    # each image's own name, as if every one had a copy of the next: half of them are found or not by chance
    write_ground_truth(gt, pd.DataFrame({"query_id": HOSTILE, "reference_id": HOSTILE[1:] + HOSTILE[:1]}))
    scored = cli("eval", predictions, "--gt", gt, "--json")
    assert scored.returncode == 0, scored.stderr
    report = tmp_path / "r.html"
    done = cli("report", predictions, "--gt", gt, "--data", hostile_folder, "-o", report, "--quiet",
               "--gallery-size", 40)
    assert done.returncode == 0, done.stderr
    page = report.read_text(encoding="utf-8")
    assert "<img src=x onerror" not in page and html.escape(HOSTILE[0]) in page
    assert html.escape(HOSTILE[2]) in page and "not found" not in page  # PNG and WebP found as well as JPEG


def test_report_finds_images_by_any_suffix_the_extractor_reads(tmp_path, mini_dataset):
    from isc.evaluate.thumbnails import image_path

    (tmp_path / "reference_images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "reference_images" / "R000001.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "holiday.v2.TIFF")
    assert image_path(tmp_path, "R000001") == tmp_path / "reference_images" / "R000001.png"
    assert image_path(tmp_path, "holiday.v2", "query") == tmp_path / "holiday.v2.TIFF"
    assert image_path(mini_dataset, "Q00000") == mini_dataset / "query_images" / "Q00000.jpg"


def test_pca_takes_any_ids(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"photo {i}" for i in range(40)]
    write_descriptors(tmp_path / "mine.h5", names, rng.normal(size=(40, 16)).astype(np.float32), {"model": "m"})
    assert cli("pca", "learn", tmp_path / "mine.h5", "-o", tmp_path / "pca.npz", "--dim", 8).returncode == 0
    done = cli("pca", "apply", tmp_path / "pca.npz", tmp_path / "mine.h5", "-o", tmp_path / "white.h5")
    assert done.returncode == 0, done.stderr
    assert read_descriptors(tmp_path / "white.h5")[0] == names


def test_phase_and_submit_apply_the_competition_id_rules_and_say_so(described, tmp_path):
    one_line_error(cli("search", "--query", described, "--reference", described, "-o", tmp_path / "p.csv",
                       "--phase", 1), "isc-search", "not a query id", "a phase applies the competition's id rules")
    one_line_error(cli("submit", "descriptors", "--query", described, "--reference", described, "--phase", 1,
                       "-o", tmp_path / "s.h5"), "isc-submit", "not a query id",
                   "the competition's id rules apply here")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "s.h5").exists()


COMMANDS = ["download", "eval", "extract", "find", "pca", "report", "run", "s3serve", "search", "submit", "synth",
            "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_option_is_one_line_and_exit_2(command):
    prog = f"isc-{command}"
    one_line_error(cli(command, "--no-such-option"), prog, "(see --help)")


def test_a_subcommands_bad_value_is_one_line_too():
    one_line_error(cli("pca", "learn", "x.h5", "-o", "y.npz", "--dim", "many"),
                   "isc-pca learn", "argument --dim: not an integer: 'many' (see --help)")
