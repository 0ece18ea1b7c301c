"""isc-verify as a subprocess on tiny images: it never writes over a query image, refuses a calibration on
predictions without provenance or without conditions (before reading anything else), and its feature cache
sees a damaged entry, a changed image and a deleted one."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli, error_of, named_photo, rewrite_keeping_size_and_times

from isc.verify.calibrate import calibrate
from isc.verify.local_features import VerifyOptions
from isc.verify.verification import calibration_conditions

PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """data/: 3 references (photos), 3 queries (their crops), predictions of every pair without provenance."""
    root = tmp_path_factory.mktemp("round4")
    (root / "reference_images").mkdir()
    (root / "query_images").mkdir()
    for i, name in enumerate(PHOTOS):
        photo = named_photo(name)
        photo.save(root / "reference_images" / f"R{i:06d}.jpg", quality=90)
        photo.crop((8, 8, photo.width - 8, photo.height - 8)).save(root / "query_images" / f"Q{i:05d}.jpg", quality=90)
    rows = [(f"Q{q:05d}", f"R{r:06d}", 0.5 - 0.1 * ((r - q) % 3)) for q in range(3) for r in range(3)]
    pd.DataFrame(rows, columns=["query_id", "reference_id", "score"]).to_csv(root / "pred.csv", index=False)
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


def test_verify_cache_sees_changed_and_deleted_images(dataset, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(dataset, images)
    references = tmp_path / "references.txt"
    references.write_text("".join(f"{images / 'reference_images' / f'R{i:06d}.jpg'}\n" for i in range(3)))
    args = [dataset / "pred.csv", "--queries", images / "query_images", "--references", references, "--cache",
            tmp_path / "cache", "--workers", "0", "--quiet"]
    assert cli("verify", *args, "-o", tmp_path / "before.csv").returncode == 0
    rewrite_keeping_size_and_times(images / "reference_images" / "R000000.jpg", named_photo("rocket"))
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
