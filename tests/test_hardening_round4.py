"""Issue 27, items 2-4: no output over an image read, isc-find's self-pairs, unreadable files and one-image
folders, calibrations without provenance or conditions, decoding processes the decoder ignores, damaged or
stale feature caches. Every command runs as a subprocess, on tiny images."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isc.core.descriptors import read_descriptor_attrs
from isc.synth.draw import base_image
from isc.verify.calibrate import calibrate
from isc.verify.local_features import VerifyOptions
from isc.verify.verification import calibration_conditions

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea")


def cli(command: str, *args: object) -> subprocess.CompletedProcess:
    """``python -m isc.cli.<command> ARGS`` from the repository, its output captured."""
    return subprocess.run([sys.executable, "-m", f"isc.cli.{command}", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def error_of(command: str, message: str) -> str:
    return f"isc-{command}: error: {message}\n"


def _photo(name: str, size: int = 128) -> Image.Image:
    """A procedural photo named ``name`` (its seed), long side ``size``."""
    return base_image(np.random.default_rng(list(name.encode())), size, size)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """data/: 3 references (photos), 3 queries (their crops), predictions of every pair without provenance."""
    root = tmp_path_factory.mktemp("round4")
    (root / "reference_images").mkdir()
    (root / "query_images").mkdir()
    for i, name in enumerate(PHOTOS):
        photo = _photo(name)
        photo.save(root / "reference_images" / f"R{i:06d}.jpg", quality=90)
        photo.crop((8, 8, photo.width - 8, photo.height - 8)).save(root / "query_images" / f"Q{i:05d}.jpg", quality=90)
    rows = [(f"Q{q:05d}", f"R{r:06d}", 0.5 - 0.1 * ((r - q) % 3)) for q in range(3) for r in range(3)]
    pd.DataFrame(rows, columns=["query_id", "reference_id", "score"]).to_csv(root / "pred.csv", index=False)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """real/ (3 photos) holding real/r/ (their crops): one folder inside the other."""
    root = tmp_path_factory.mktemp("round4_find")
    (root / "real" / "r").mkdir(parents=True)
    for name in PHOTOS:
        photo = _photo(name, 96)
        photo.save(root / "real" / f"{name}.jpg", quality=90)
        photo.crop((4, 4, photo.width - 4, photo.height * 3 // 4)).save(root / "real" / "r" / f"{name} crop.jpg",
                                                                         quality=90)
    return root


def sscd_calibration(path: Path) -> Path:
    """A calibration fitted (on constructed evidence) under the default verification of sscd's scores."""
    rng = np.random.default_rng(0)
    evidence = pd.DataFrame({"query_id": np.repeat(np.arange(20), 3).astype(str), "score": rng.random(60),
                             "rank": np.tile(np.arange(3), 20), "inliers": rng.integers(0, 30, 60),
                             "inlier_ratio": rng.random(60)})
    conditions = calibration_conditions(VerifyOptions(), {"inputs": {"reference": {"model_attributes": {
        "model": "sscd", "model_fingerprint": "0123"}}}})
    return calibrate(evidence, (evidence["inliers"] > 15).to_numpy(float), "constructed", conditions).save(path)


# ------------------------------------------------------------------------ 2. no output over an image


def test_verify_never_writes_over_a_query_image(dataset, tmp_path):
    image = dataset / "query_images" / "Q00000.jpg"
    before = image.read_bytes()
    done = cli("verify", dataset / "pred.csv", "--data", dataset, "-o", image, "--cache", tmp_path / "cache")
    assert done.returncode == 2
    assert done.stderr == error_of("verify", f"output {image} is the input image {image}: writing it would destroy "
                                   "the input")
    assert image.read_bytes() == before and not (tmp_path / "cache").exists()
    new = dataset / "query_images" / "new.jpg"
    done = cli("verify", dataset / "pred.csv", "--data", dataset, "-o", new, "--cache", tmp_path / "cache")
    assert done.returncode == 2 and not new.exists()
    assert done.stderr == error_of("verify", f"output {new} would be an image of the input image folder "
                                   f"{dataset / 'query_images'} (suffix .jpg): write it elsewhere, or with another "
                                   "suffix")


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
        done = cli("find", folders / "real", "-o", notes, "--model", "pdq", "--cache", tmp_path / "c", "--quiet")
        assert done.returncode == 0, done.stderr
        assert "pairs" in json.loads(notes.read_text())
    finally:
        notes.unlink()
    assert sorted(p.name for p in (folders / "real").iterdir()) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "r"]
def test_extract_and_report_refuse_an_output_over_an_image(dataset, tmp_path):
    image = dataset / "reference_images" / "R000001.jpg"
    before = image.read_bytes()
    done = cli("extract", "--images", dataset / "reference_images", "-o", image, "--model", "pdq", "--quiet")
    assert done.returncode == 2
    assert done.stderr == error_of("extract", f"output {image} is the input {image}: writing it would destroy the "
                                   "input")
    gt = tmp_path / "gt.csv"
    gt.write_text("query_id,reference_id\nQ00000,R000000\n")
    done = cli("report", dataset / "pred.csv", "--gt", gt, "--data", dataset, "-o", image)
    assert done.returncode == 2
    assert done.stderr == error_of("report", f"output {image} is an image of the input image folder {dataset} "
                                   "(suffix .jpg): write it elsewhere, or with another suffix")
    assert image.read_bytes() == before


# ---------------------------------------------------------------------- 3. wrong results with exit 0


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
    done = cli("find", folder, "-o", out, "--model", "pdq", "--cache", tmp_path / "c")
    assert done.returncode == 0, done.stderr
    sidecar = tmp_path / "m.unreadable.csv"
    assert f"isc-find: warning: 3 unreadable image(s) left out, listed in {sidecar}" in done.stderr.splitlines()
    listed = pd.read_csv(sidecar)
    assert list(listed["path"]) == [str(folder / name) for name in ("cut.jpg", "text.png", "zero.jpg")]
    assert list(listed["reason"]) == ["cannot read (Truncated File Read)", "not an image (unidentified format)",
                                      "empty file (0 bytes)"]
    # a JSON output holds them too, from the cache (nothing described again), and --quiet says nothing
    done = cli("find", folder, "-o", tmp_path / "m.json", "--model", "pdq", "--cache", tmp_path / "c", "--quiet")
    assert done.returncode == 0 and "unreadable" not in done.stderr
    assert json.loads((tmp_path / "m.json").read_text())["unreadable"] == dict(zip(listed["path"], listed["reason"],
                                                                                 strict=True))


def test_verify_refuses_a_calibration_on_predictions_without_provenance(dataset, tmp_path):
    calibration = sscd_calibration(tmp_path / "cal.json")
    out = tmp_path / "v.csv"
    done = cli("verify", dataset / "pred.csv", "--data", dataset, "-o", out, "--calibration", calibration)
    assert done.returncode == 2
    assert done.stderr == error_of("verify", f"--assume-same-model is needed to apply {calibration}, fitted on sscd "
                                   "scores, to predictions of an unknown model (no provenance sidecar): another "
                                   "model's scores would be re-scored wrongly")
    assert not out.exists() and not (tmp_path / "isc-verify-cache").exists()  # refused before any work
    done = cli("verify", dataset / "pred.csv", "--data", dataset, "-o", out, "--calibration", calibration,
               "--assume-same-model", "--workers", "0", "--quiet")
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(out)) == 9


def test_verify_refuses_a_calibration_without_conditions(dataset, tmp_path):
    calibration = sscd_calibration(tmp_path / "cal.json")
    content = json.loads(calibration.read_text())
    del content["conditions"]
    calibration.write_text(json.dumps(content))
    done = cli("verify", dataset / "pred.csv", "--data", dataset, "-o", tmp_path / "v.csv", "--calibration",
               calibration, "--assume-same-model")
    assert done.returncode == 2
    assert done.stderr == error_of("verify", f"{calibration}: damaged calibration file (no conditions: what it was "
                                   "fitted under is unknown)")


def test_verify_checks_the_calibration_before_reading_anything_else(dataset, tmp_path):
    calibration = tmp_path / "cal.json"
    calibration.write_text("not json")
    predictions = tmp_path / "pred.csv"
    predictions.write_text("query_id,reference_id,score\nQ00000,R000000,nan\n")  # refused too, but later
    done = cli("verify", predictions, "--data", tmp_path / "absent", "-o", tmp_path / "v.csv", "--calibration",
               calibration)
    assert done.returncode == 2
    assert done.stderr == error_of("verify", f"{calibration}: not a calibration file (JSONDecodeError)")


def test_decode_processes_are_refused_with_the_pil_decoder(dataset, tmp_path):
    out = tmp_path / "e.h5"
    done = cli("extract", "--images", dataset / "reference_images", "-o", out, "--model", "pdq", "--decoder", "pil",
               "--decode-processes", "2", "--quiet")
    assert done.returncode == 2 and not out.exists()
    assert done.stderr == error_of("extract", "--decode-processes needs the torchvision decoder, and this run "
                                   "decodes with pil (whose decoding runs in the worker processes)")


def test_find_refuses_training_images_among_the_queries(folders, tmp_path):
    done = cli("find", folders / "real" / "r", "-o", tmp_path / "m.csv", "--model", "pdq", "--training",
               folders / "real", "--cache", tmp_path / "c")
    assert done.returncode == 2 and not (tmp_path / "c").exists()
    assert done.stderr == error_of("find", f"the training images {folders / 'real'} include 3 of the query images "
                                   f"(first {folders / 'real' / 'r' / 'astronaut crop.jpg'}): training images must be "
                                   "unrelated to them, the scores would be normalised by the images' own copies")


# ------------------------------------------------------------------------------------ 4. tracebacks


def test_find_on_a_folder_of_one_image_says_so(folders, tmp_path):
    (tmp_path / "one").mkdir()
    shutil.copy(folders / "real" / "coffee.jpg", tmp_path / "one")
    done = cli("find", tmp_path / "one", "-o", tmp_path / "m.json", "--model", "pdq", "--quiet")
    assert done.returncode == 2
    assert done.stderr == error_of("find", f"{tmp_path / 'one'}: 1 readable image(s) of 1: copies within one folder "
                                   "need at least 2")


def test_a_damaged_feature_cache_entry_is_described_again(dataset, tmp_path):
    cache, first, second = tmp_path / "cache", tmp_path / "first.csv", tmp_path / "second.csv"
    args = [dataset / "pred.csv", "--data", dataset, "--cache", cache, "--workers", "1"]
    assert cli("verify", *args, "-o", first, "--quiet").returncode == 0
    entries = sorted(cache.rglob("*.npz"))
    truncated, flipped = entries[0], entries[1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    damaged = bytearray(flipped.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    flipped.write_bytes(bytes(damaged))
    done = cli("verify", *args, "-o", second)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "damaged" in line]
    assert said == [f"isc-verify: warning: 2 damaged feature cache entries under {cache}: described again"]
    assert (tmp_path / "second.evidence.csv").read_text() == (tmp_path / "first.evidence.csv").read_text()
    done = cli("verify", *args, "-o", second)  # repaired: nothing more to say
    assert done.returncode == 0 and "damaged" not in done.stderr


def _same_size_and_times(path: Path, replacement: Image.Image) -> None:
    """Write ``replacement`` over ``path`` as a JPEG of the same size (padded after its end), times put back."""
    stat, size = path.stat(), path.stat().st_size
    for quality in range(90, 10, -10):
        encoded = _encoded(replacement, quality)
        if len(encoded) <= size:
            break
    path.write_bytes(encoded + b"\0" * (size - len(encoded)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def _encoded(image: Image.Image, quality: int) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_verify_cache_sees_changed_and_deleted_images(dataset, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(dataset, images)
    references = tmp_path / "references.txt"
    references.write_text("".join(f"{images / 'reference_images' / f'R{i:06d}.jpg'}\n" for i in range(3)))
    args = [dataset / "pred.csv", "--queries", images / "query_images", "--references", references, "--cache",
            tmp_path / "cache", "--workers", "0", "--quiet"]
    assert cli("verify", *args, "-o", tmp_path / "before.csv").returncode == 0
    _same_size_and_times(images / "reference_images" / "R000000.jpg", _photo("rocket"))
    (images / "reference_images" / "R000001.jpg").unlink()
    assert cli("verify", *args, "-o", tmp_path / "cached.csv").returncode == 0
    fresh = [*args[:5], "--cache", tmp_path / "fresh", "--workers", "0", "--quiet"]
    assert cli("verify", *fresh, "-o", tmp_path / "fresh.csv").returncode == 0
    before, cached, fresh = (pd.read_csv(tmp_path / f"{name}.evidence.csv", keep_default_na=False)
                             for name in ("before", "cached", "fresh"))
    pd.testing.assert_frame_equal(cached, fresh)
    changed = cached["reference_id"] == "R000000"
    assert not cached[changed]["inliers"].equals(before[changed]["inliers"])  # the new content was described
    deleted = cached[cached["reference_id"] == "R000001"]
    assert (~deleted["verified"]).all() and deleted["error"].str.startswith("reference R000001: ").all()


def test_find_cache_sees_changed_and_deleted_images(folders, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(folders / "real", folder)
    args = ["--model", "pdq", "--threshold", "1e-9", "--no-crops", "--quiet"]
    assert cli("find", folder, "-o", tmp_path / "before.csv", "--cache", tmp_path / "c", *args).returncode == 0
    _same_size_and_times(folder / "coffee.jpg", _photo("rocket", 96))
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
