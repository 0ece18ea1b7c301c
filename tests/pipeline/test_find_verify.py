"""isc-find's verification (local features re-scoring the candidates) and its two folders matched both ways:
swapping the folders swaps the sides of the pairs and nothing else."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isc.models import create_model
from isc.pipeline.find import both_ways, find_copies
from isc.verify.local_features import VerifyOptions

REPO = Path(__file__).resolve().parents[2]


def texture(seed: int, size: int = 256) -> Image.Image:
    """A random blotchy colour picture: many corners for SIFT, nothing shared between seeds."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    dots = np.asarray(image).copy()
    for y, x in rng.integers(4, size - 4, (300, 2)):
        dots[y - 2:y + 2, x - 2:x + 2] = rng.integers(0, 256, 3)
    return Image.fromarray(dots)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """originals/ (4 pictures), edited/ (a strong crop of picture 0, a copy of picture 1 under another name,
    and an unrelated picture)."""
    root = tmp_path_factory.mktemp("find_verify")
    originals, edited = root / "originals", root / "edited"
    originals.mkdir()
    edited.mkdir()
    for number in range(4):
        texture(number).save(originals / f"picture {number}.png")
    texture(0).crop((40, 30, 190, 180)).resize((256, 256)).save(edited / "zoomed.png")
    texture(1).save(edited / "copy of 1.png")
    texture(99).save(edited / "unrelated.png")
    return {"originals": originals, "edited": edited}


def unordered(pairs: list[tuple[str, str, float]]) -> dict[frozenset, float]:
    return {frozenset((Path(a).name, Path(b).name)): round(score, 9) for a, b, score in pairs}


def pairs_of(found) -> list[tuple[str, str, float]]:
    return [(str(found.paths["query"][q]), str(found.paths["reference"][r]), float(s))
            for q, r, s in zip(found.candidates["query_id"], found.candidates["reference_id"],
                               found.candidates["score"], strict=True)]


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory) -> dict[str, object]:
    """find_copies on (originals, edited) and (edited, originals), each without and with verification."""
    model, cache = create_model("pdq"), tmp_path_factory.mktemp("caches")
    out = {}
    for order in ("originals", "edited"), ("edited", "originals"):
        for verify in (False, True):
            out[order[0], verify] = find_copies(
                [folders[order[0]], folders[order[1]]], cache / order[0], model, threshold=0.5, quiet=True,
                verification=VerifyOptions(workers=0) if verify else None)
    return out


@pytest.mark.parametrize("verify", [False, True])
def test_swapping_the_folders_gives_the_same_pairs_and_scores(runs, verify):
    one, other = runs["originals", verify], runs["edited", verify]
    assert len(one.candidates) == len(other.candidates) > 0
    assert unordered(pairs_of(one)) == unordered(pairs_of(other))
    # the first folder's images are the queries of either output
    assert set(one.candidates["query_id"]) <= set(one.paths["query"])
    assert all(path.parent.name == "originals" for path in one.paths["query"].values())


def test_both_ways_keeps_the_better_score_of_each_pair():
    from isc.core.pairs import Pairs

    forward = Pairs(["a", "a"], ["x", "y"], [0.5, 0.2])
    backward = Pairs(["x", "z"], ["a", "b"], [0.7, 0.2])
    merged = both_ways(forward, backward)
    assert merged.to_frame().values.tolist() == [["a", "x", 0.7], ["a", "y", 0.2], ["b", "z", 0.2]]  # ties by query id


def test_verification_lifts_the_strong_crop_and_not_the_unrelated_pictures(runs):
    plain, verified = (unordered(pairs_of(runs["originals", v])) for v in (False, True))
    true = {frozenset(("picture 0.png", "zoomed.png")), frozenset(("picture 1.png", "copy of 1.png"))}
    crop = frozenset(("picture 0.png", "zoomed.png"))
    unrelated = set(plain) - true
    assert len(unrelated) >= 8 and set(verified) == set(plain)
    assert verified[crop] - plain[crop] >= 0.15  # 8 or more geometric inliers: a bonus of 0.16 to 0.2
    assert all(verified[pair] - plain[pair] < 0.1 for pair in unrelated)  # a few chance inliers at most
    # the descriptor alone scores the strong crop below unrelated pairs: no threshold keeps both copies and
    # nothing else; verified, one does
    assert min(plain[pair] for pair in true) < max(plain[pair] for pair in unrelated)
    assert min(verified[pair] for pair in true) > max(verified[pair] for pair in unrelated)
    record = runs["originals", True].record
    assert record["verification"]["pairs_verified"] == len(plain) and record["both_ways"]


def find(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isc.cli.find", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_the_command_verifies_and_reuses_its_feature_cache(folders, tmp_path, user_cache):
    outputs = []
    for order in ((folders["originals"], folders["edited"]), (folders["edited"], folders["originals"])):
        output = tmp_path / f"{order[0].name}.json"
        done = find(*order, "-o", output, "--model", "pdq", "--verify", "--threshold", "0.6", "--quiet")
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(output.read_text()))
    assert {frozenset(map(Path, (p["query"], p["reference"]))): p["score"] for p in outputs[0]["pairs"]} == \
        {frozenset(map(Path, (p["query"], p["reference"]))): p["score"] for p in outputs[1]["pairs"]}
    assert outputs[0]["pairs"] and outputs[0]["verification"]["k"] == VerifyOptions.k
    features = sorted((user_cache / "isc" / "find" / "features").rglob("*.npz"))
    assert len(features) == 7
    stamps = [path.stat().st_mtime_ns for path in features]
    again = find(folders["originals"], folders["edited"], "-o", tmp_path / "originals.json", "--model", "pdq",
                 "--verify", "--threshold", "0.6", "--quiet")
    assert again.returncode == 0, again.stderr
    assert [path.stat().st_mtime_ns for path in features] == stamps  # described once, read back after


@pytest.mark.parametrize("args, message", [
    (["--verify", "--no-verify"], "not allowed with argument"),
    (["--verify", "--verify-k", "0"], "--verify-k"),
])
def test_bad_verification_options_are_one_line(folders, tmp_path, args, message):
    done = find(folders["originals"], "-o", tmp_path / "out.csv", "--model", "pdq", *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_verify_takes_one_id_on_both_sides_only_when_it_is_one_file(folders, tmp_path):
    import pandas as pd

    from isc.core.files import InputError
    from isc.verify.verification import verify

    images = {f"p{n}": folders["originals"] / f"picture {n}.png" for n in range(2)}
    pairs = pd.DataFrame({"query_id": ["p0", "p1"], "reference_id": ["p1", "p0"], "score": [0.5, 0.5]})
    result = verify(pairs, images, images, tmp_path / "v.csv", options=VerifyOptions(workers=0), quiet=True)
    assert result.pairs == 2 and result.images == 2  # one folder against itself: each image described once
    other = {**images, "p0": folders["edited"] / "zoomed.png"}
    with pytest.raises(InputError, match="id p0 is both a query and a reference image"):
        verify(pairs, images, other, tmp_path / "w.csv", options=VerifyOptions(workers=0), quiet=True)


def test_verification_is_on_by_default_except_with_training(folders, tmp_path):
    output = tmp_path / "default.json"
    done = find(folders["originals"], folders["edited"], "-o", output, "--model", "pdq", "--threshold", "0.6")
    assert done.returncode == 0, done.stderr
    assert json.loads(output.read_text())["verification"]["pairs_verified"] > 0
    assert "verified by local features" in done.stdout
    training = tmp_path / "training"
    training.mkdir()
    for number in range(50, 60):  # the normalisation's 10th neighbour needs 10 training images
        texture(number, 64).save(training / f"t{number}.png")
    plain = find(folders["originals"], folders["edited"], "-o", tmp_path / "t.json", "--model", "pdq", "--threshold", "0.45", "--training",
                 training, "--quiet")
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "t.json").read_text())["verification"] is None
    asked = find(folders["originals"], folders["edited"], "-o", tmp_path / "v.json", "--model", "pdq", "--training",
                 training, "--verify")
    assert asked.returncode == 2 and not (tmp_path / "v.json").exists()
    assert asked.stderr.strip() == ("isc-find: error: --threshold has no default for verified scores normalised "
                                    "by training images: give one")
