"""isc-verify: SIFT evidence separates edited copies from unrelated images, the feature cache is reused and
invalidated, a killed run re-run gives the same bytes, bad input gets one line, torchrun shards the queries."""

import base64
import io
import json
import operator
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps
from skimage import data

from isc.cli.verify import main
from isc.core.files import InputError, SettingError
from isc.core.tables import read_ground_truth, read_predictions
from isc.evaluate.match_pictures import match_picture
from isc.synth.draw import base_image
from isc.synth.edits import crop, overlay_image, rotate
from isc.verify.calibrate import CALIBRATION_COLUMNS, Calibration, calibrate, ground_truth_labels
from isc.verify.local_features import (
    GEOMETRIES,
    FeatureCache,
    VerifyOptions,
    best_match,
    compared_descriptors,
    describe_image,
    match_features,
)
from isc.verify.verification import (
    EVIDENCE_COLUMNS,
    InlierBonus,
    calibration_conditions,
    evidence_path,
    ranked_candidates,
    read_evidence,
    verify,
)
from isc.verify.workers import task_map

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
EDITS = {"Q00000": (0, crop), "Q00001": (1, rotate), "Q00002": (2, overlay_image)}  # query: (reference, edit)
UNRELATED = ("Q00003", "Q00004")  # procedural images, copies of nothing


def _photo(name: str, size: int = 320) -> Image.Image:
    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    image.thumbnail((size, size))
    return image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """6 references (photos), 3 edited copies of the first three and 2 unrelated queries, in the competition
    layout, with predictions: every query against every reference, each copy's true reference at rank 2
    (0-based) by a score 0.06 below the first."""
    root = tmp_path_factory.mktemp("verify_data")
    (root / "reference_images").mkdir()
    (root / "query_images").mkdir()
    references = [_photo(name) for name in PHOTOS]
    for i, image in enumerate(references):
        image.save(root / "reference_images" / f"R{i:06d}.jpg", quality=90)
    rng = np.random.default_rng(0)
    for query, (reference, edit) in EDITS.items():
        edit(references[reference], rng).save(root / "query_images" / f"{query}.jpg", quality=90)
    for query in UNRELATED:
        base_image(rng, 240, 320).save(root / "query_images" / f"{query}.jpg", quality=90)
    rows = []
    for query in [*EDITS, *UNRELATED]:
        scores = 0.6 - 0.03 * np.arange(len(PHOTOS)) - rng.uniform(0, 0.01)  # closer than the inlier bonus
        others = [r for r in range(len(PHOTOS)) if r != EDITS.get(query, (None,))[0]]
        order = others[:2] + [EDITS[query][0]] + others[2:] if query in EDITS else others
        rows += [(query, f"R{r:06d}", s) for r, s in zip(order, scores, strict=False)]
    pd.DataFrame(rows, columns=["query_id", "reference_id", "score"]).to_csv(root / "predictions.csv", index=False)
    pd.DataFrame([(query, f"R{EDITS[query][0]:06d}" if query in EDITS else "") for query in [*EDITS, *UNRELATED]],
                 columns=["query_id", "reference_id"]).to_csv(root / "ground_truth.csv", index=False)
    return root


def isc_verify(*args: object, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isc.cli.verify", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).parents[2])


# ------------------------------------------------------------------------------------ the engine


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_edited_copies_get_many_more_inliers_than_unrelated_images(dataset, geometry):
    options = VerifyOptions(geometry=geometry)
    references = [describe_image(dataset / "reference_images" / f"R{i:06d}.jpg", options) for i in range(3)]
    for query, (reference, _) in EDITS.items():
        features = describe_image(dataset / "query_images" / f"{query}.jpg", options)
        copy = match_features(features, references[reference], options)
        unrelated = [match_features(features, references[r], options).inliers for r in range(3) if r != reference]
        assert copy.inliers >= 15 and copy.inliers > 3 * max(unrelated) + 5, (query, copy.inliers, unrelated)
        assert len(copy.query_points) == len(copy.reference_points) == copy.inliers
    for query in UNRELATED:
        features = describe_image(dataset / "query_images" / f"{query}.jpg", options)
        assert max(match_features(features, r, options).inliers for r in references) < 10


def test_rootsift_compares_the_same_cached_features_and_finds_the_copies(dataset):
    sift, rootsift = VerifyOptions(), VerifyOptions(features="rootsift")
    assert sift.features_tag == rootsift.features_tag  # one cache serves both
    references = [describe_image(dataset / "reference_images" / f"R{i:06d}.jpg", sift) for i in range(3)]
    values = compared_descriptors(references[0].descriptors, "rootsift")
    assert values.dtype == np.float32  # what OpenCV's matcher takes as it is
    np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1, rtol=1e-5)  # the Hellinger kernel's unit rows
    np.testing.assert_array_equal(compared_descriptors(references[0].descriptors, "sift"), references[0].descriptors)
    for query, (reference, _) in EDITS.items():
        features = describe_image(dataset / "query_images" / f"{query}.jpg", sift)
        copy = match_features(features, references[reference], rootsift)
        unrelated = [match_features(features, references[r], rootsift).inliers for r in range(3) if r != reference]
        assert copy.inliers >= 15 and copy.inliers > 3 * max(unrelated) + 5, (query, copy.inliers, unrelated)
        assert copy.matches != match_features(features, references[reference], sift).matches  # another comparison
    # a calibration fitted before RootSIFT existed still applies to SIFT's evidence, not to RootSIFT's
    assert "features" not in calibration_conditions(sift, None)["verification"]
    assert calibration_conditions(rootsift, None)["verification"]["features"] == "rootsift"
    with pytest.raises(SettingError, match="features"):
        VerifyOptions(features="orb")


def test_a_copys_inliers_cover_its_reference_and_a_shared_logos_cover_a_corner(tmp_path):
    options = VerifyOptions()
    logo = _photo("rocket", 96)
    photos = []
    for name in ("astronaut", "coffee"):  # two unrelated photos, the same logo pasted in a corner of each
        image = _photo(name)
        image.paste(logo, (image.width - logo.width, 0))
        image.save(tmp_path / f"{name}.jpg", quality=90)
        photos.append(describe_image(tmp_path / f"{name}.jpg", options))
    copy = crop(Image.open(tmp_path / "astronaut.jpg"), np.random.default_rng(1))
    copy.resize((copy.width * 3 // 4, copy.height * 3 // 4)).save(tmp_path / "copy.jpg", quality=90)
    copied = match_features(describe_image(tmp_path / "copy.jpg", options), photos[0], options)
    shared = match_features(photos[1], photos[0], options)
    assert shared.inliers >= 6 and copied.inliers >= 8, (shared.inliers, copied.inliers)
    assert shared.reference_coverage < 0.15 < 0.4 < copied.reference_coverage <= 1, (shared.reference_coverage,
                                                                                    copied.reference_coverage)
    assert match_features(photos[0], photos[0], options).reference_coverage == pytest.approx(1, abs=0.05)


def test_transform_maps_query_pixels_to_reference_pixels(tmp_path):
    # a 700 x 525 photo (shrunk to 512 for SIFT) and its crop at (150, 90): query pixel + offset = reference pixel
    photo = Image.fromarray(data.astronaut()).convert("RGB").resize((700, 525))
    photo.save(tmp_path / "reference.png")
    photo.crop((150, 90, 550, 390)).save(tmp_path / "query.png")
    options = VerifyOptions()
    match = match_features(describe_image(tmp_path / "query.png", options),
                           describe_image(tmp_path / "reference.png", options), options)
    assert match.inliers > 50
    np.testing.assert_allclose(match.transform[:, :2], np.eye(2), atol=0.02)
    np.testing.assert_allclose(match.transform[:, 2], [150, 90], atol=3)
    np.testing.assert_allclose(match.query_points + [150, 90], match.reference_points, atol=8 * 700 / 512)


def test_a_mirrored_copy_is_verified_with_mirror_and_its_transform_holds_the_reflection(tmp_path):
    # a 700 x 525 photo and its crop at (150, 90) mirrored left-right: query pixel (x, y) is reference pixel
    # (150 + 399 - x, 90 + y)
    photo = Image.fromarray(data.astronaut()).convert("RGB").resize((700, 525))
    photo.save(tmp_path / "reference.png")
    ImageOps.mirror(photo.crop((150, 90, 550, 390))).save(tmp_path / "query.png")
    options = VerifyOptions(mirror=True)
    query = describe_image(tmp_path / "query.png", options)
    mirrored = describe_image(tmp_path / "query.png", options, mirrored=True)
    reference = describe_image(tmp_path / "reference.png", options)
    plain = match_features(query, reference, options)
    match = best_match(query, mirrored, reference, options)
    assert match.inliers > 50 > 15 > plain.inliers, (match.inliers, plain.inliers)
    assert best_match(query, None, reference, options).inliers == plain.inliers  # no mirror given: the plain match
    np.testing.assert_allclose(match.transform[:, :2], [[-1, 0], [0, 1]], atol=0.02)
    np.testing.assert_allclose(match.transform[:, 2], [549, 90], atol=3)
    expected = np.column_stack([549 - match.query_points[:, 0], 90 + match.query_points[:, 1]])
    np.testing.assert_allclose(expected, match.reference_points, atol=8 * 700 / 512)
    # the report draws the match verification kept: the mirrored one where the options say so
    pixels = [np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB")) for name in ("query", "reference")]
    assert match_picture(*pixels, options)[1] == match.inliers
    assert match_picture(*pixels, VerifyOptions())[1] == plain.inliers


def test_descriptors_are_stored_as_uint8_and_read_back(dataset, tmp_path):
    options = VerifyOptions(max_features=300)
    features = describe_image(dataset / "reference_images" / "R000000.jpg", options)
    assert features.descriptors.dtype == np.uint8 and 50 < len(features.keypoints) <= 300
    cache = FeatureCache(tmp_path, options)
    cache.save("R000000", (1, 2, 3, 4), features)
    loaded = cache.load("R000000", (1, 2, 3, 4))
    np.testing.assert_array_equal(loaded.descriptors, features.descriptors)
    np.testing.assert_array_equal(loaded.keypoints, features.keypoints)
    assert cache.load("R000000", (1, 2, 3, 5)) is None  # another file stamp: not this file's features
    assert FeatureCache(tmp_path, VerifyOptions(max_features=301)).load("R000000", (1, 2, 3, 4)) is None


def test_ranked_candidates_are_each_querys_best():
    predictions = pd.DataFrame({"query_id": ["Q00001", "Q00000", "Q00000", "Q00000"],
                                "reference_id": ["R000001", "R000001", "R000002", "R000003"],
                                "score": [0.1, 0.5, 0.9, 0.7]})
    pairs = ranked_candidates(predictions, 2)
    assert pairs[["query_id", "reference_id", "rank"]].values.tolist() == [
        ["Q00000", "R000002", 0], ["Q00000", "R000003", 1], ["Q00001", "R000001", 0]]


def test_a_calibration_reads_columns_of_the_evidence_sidecar():
    assert set(CALIBRATION_COLUMNS) < set(EVIDENCE_COLUMNS)


def test_rescoring_promotes_copies_and_leaves_candidates_beyond_k_unverified(dataset, tmp_path):
    predictions = read_predictions(dataset / "predictions.csv")
    images = {split: {p.stem: p for p in (dataset / f"{split}_images").iterdir()} for split in ("query", "reference")}
    output = tmp_path / "verified.csv"
    result = verify(predictions, images["query"], images["reference"], output, options=VerifyOptions(k=3, workers=0),
                    quiet=True)
    needed = 5 + ranked_candidates(predictions, 3)["reference_id"].nunique()  # each reference described once
    assert result.pairs == 5 * 3 and result.described == result.images == needed and not result.broken
    evidence = pd.read_csv(evidence_path(output), keep_default_na=False)
    assert (evidence["verified"] == (evidence["rank"] < 3)).all()
    unverified = evidence[~evidence["verified"]]
    assert (unverified["inliers"] == 0).all() and (unverified["new_score"] == unverified["score"]).all()
    rescored = read_predictions(output)
    assert np.isfinite(rescored["score"]).all() and len(rescored) == len(predictions)
    best = rescored.sort_values("score", ascending=False).groupby("query_id").head(1).set_index("query_id")
    for query, (reference, _) in EDITS.items():  # the true reference was third: verification puts it first
        assert best.loc[query, "reference_id"] == f"R{reference:06d}"
    truth = {(query, f"R{reference:06d}") for query, (reference, _) in EDITS.items()}
    copies = evidence[[pair in truth for pair in zip(evidence["query_id"], evidence["reference_id"], strict=True)]]
    np.testing.assert_allclose(copies["new_score"], copies["score"] + 0.2, atol=1e-6)  # >= 10 inliers: whole bonus
    assert copies["transform"].str.split().map(len).eq(6).all()
    provenance = json.loads(Path(f"{output}.provenance.json").read_text())
    assert provenance["command"] == "isc-verify" and provenance["options"]["k"] == 3

    # a combiner of the caller's own: the inliers alone, best per query first
    inliers_only = tmp_path / "inliers.csv"
    verify(predictions, images["query"], images["reference"], inliers_only, options=VerifyOptions(k=3, workers=0),
           combiner=lambda e: e["inliers"].to_numpy(float) / (1 + e["best_inliers"].to_numpy(float)), quiet=True)
    by_inliers = read_predictions(inliers_only)
    assert by_inliers["score"].max() < 1 and by_inliers.iloc[0]["reference_id"] in {"R000000", "R000001", "R000002"}
    with pytest.raises(ValueError, match="non-finite"):
        verify(predictions, images["query"], images["reference"], tmp_path / "nan.csv",
               options=VerifyOptions(k=3, workers=0), combiner=lambda e: e["score"].to_numpy() * np.nan, quiet=True)


def test_a_query_bias_given_per_prediction_is_each_pairs_evidence_and_read_back(dataset, tmp_path):
    predictions = read_predictions(dataset / "predictions.csv").sample(frac=1, random_state=0)  # any row order
    images = {split: {p.stem: p for p in (dataset / f"{split}_images").iterdir()} for split in ("query", "reference")}
    bias = np.arange(len(predictions), dtype=np.float64) / 100  # a number of its own for each pair
    output = tmp_path / "verified.csv"
    verify(predictions, images["query"], images["reference"], output, options=VerifyOptions(k=3, workers=0),
           quiet=True, query_bias=bias)
    evidence = read_evidence(evidence_path(output))
    given = dict(zip(zip(predictions["query_id"], predictions["reference_id"], strict=True), bias, strict=True))
    assert len(evidence) == len(predictions)
    for query, reference, value in zip(evidence["query_id"], evidence["reference_id"], evidence["query_bias"],
                                       strict=True):
        assert value == pytest.approx(given[query, reference])
    for bad in (bias[:-1], np.where(np.arange(len(bias)) == 3, np.nan, bias)):
        with pytest.raises(InputError, match="query biases"):
            verify(predictions, images["query"], images["reference"], tmp_path / "bad.csv",
                   options=VerifyOptions(k=3, workers=0), quiet=True, query_bias=bad)


# --------------------------------------------------------------------------------------- the CLI


def run_json(capsys, *args: object) -> dict:
    """isc-verify --json in this process (main, as the command runs it): its summary."""
    assert main([*map(str, args), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_cli_reuses_the_cache_and_describes_a_changed_file_again(dataset, tmp_path, capsys):
    common = [dataset / "predictions.csv", "--data", dataset, "--k", 2, "--workers", 2, "--cache", tmp_path / "cache"]
    summary = run_json(capsys, *common, "-o", tmp_path / "first.csv")
    assert summary["described"] == summary["images"] > 0 and summary["cached"] == 0
    assert 10_000 < summary["cache_bytes_per_image"] < 200_000
    second = run_json(capsys, *common, "-o", tmp_path / "second.csv")
    assert second["described"] == 0 and second["cached"] == summary["images"]
    assert (tmp_path / "first.csv").read_bytes() == (tmp_path / "second.csv").read_bytes()

    # the same bytes written again, the modification time put back: the change time and inode still tell
    images = tmp_path / "images"
    for split in ("query", "reference"):
        (images / f"{split}_images").mkdir(parents=True)
        for path in (dataset / f"{split}_images").iterdir():
            (images / f"{split}_images" / path.name).write_bytes(path.read_bytes())
    copied = [*common[:2], images, *common[3:]]
    assert run_json(capsys, *copied, "-o", tmp_path / "copied.csv")["described"] == summary["images"]
    changed = images / "reference_images" / "R000001.jpg"
    stat = changed.stat()
    changed.write_bytes(changed.read_bytes())
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run_json(capsys, *copied, "-o", tmp_path / "changed.csv")["described"] == 1


def test_cli_mirror_verifies_a_flipped_copy_from_a_second_cache_of_the_queries_mirrors(tmp_path, capsys):
    for split in ("query", "reference"):
        (tmp_path / f"{split}_images").mkdir()
    for i, name in enumerate(PHOTOS[:3]):
        _photo(name).save(tmp_path / "reference_images" / f"R{i:06d}.jpg", quality=90)
    ImageOps.mirror(_photo(PHOTOS[1])).save(tmp_path / "query_images" / "Q00000.jpg", quality=90)
    pd.DataFrame({"query_id": "Q00000", "reference_id": [f"R{i:06d}" for i in range(3)],
                  "score": [0.5, 0.4, 0.3]}).to_csv(tmp_path / "predictions.csv", index=False)
    common = [tmp_path / "predictions.csv", "--data", tmp_path, "--workers", 0, "--cache", tmp_path / "cache"]
    inliers = {}
    for flag in ("--no-mirror", "--mirror"):
        output = tmp_path / f"{flag.strip('-')}.csv"
        summary = run_json(capsys, *common, flag, "-o", output)
        evidence = read_evidence(evidence_path(output)).set_index("reference_id")
        inliers[flag] = evidence["inliers"].to_dict()
        assert summary["pairs"] == 3
    assert inliers["--mirror"]["R000001"] > 50 > 15 > inliers["--no-mirror"]["R000001"], inliers
    tag = VerifyOptions().features_tag
    assert len(list((tmp_path / "cache" / f"{tag}-mirrored").rglob("*.npz"))) == 1  # the query's mirror alone
    assert len(list((tmp_path / "cache" / tag).rglob("*.npz"))) == 4
    provenance = json.loads(Path(f"{tmp_path / 'mirror.csv'}.provenance.json").read_text())
    assert provenance["options"]["mirror"] is True
    assert "mirror" not in calibration_conditions(VerifyOptions(), None)["verification"]
    assert calibration_conditions(VerifyOptions(mirror=True), None)["verification"]["mirror"] is True


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()


def test_cli_calibrates_on_ground_truth_and_reuses_the_calibration(dataset, tmp_path):
    common = [dataset / "predictions.csv", "--data", dataset, "--k", 3, "--workers", 0, "--quiet",
              "--cache", tmp_path / "cache"]
    fitted = isc_verify(*common, "--calibrate-gt", dataset / "ground_truth.csv", "-o", tmp_path / "fitted.csv")
    assert fitted.returncode == 0, fitted.stderr
    calibration = Calibration.load(tmp_path / "fitted.calibration.json")
    assert calibration.positives == len(EDITS) and calibration.pairs == len(read_predictions(dataset / "predictions.csv"))
    assert calibration.conditions["verification"]["k"] == 3
    rescored = read_predictions(tmp_path / "fitted.csv")
    assert np.isfinite(rescored["score"]).all()
    copies = {(query, f"R{reference:06d}") for query, (reference, _) in EDITS.items()}
    top = rescored.head(len(EDITS))  # the copies rank above every other pair of every query
    assert set(zip(top["query_id"], top["reference_id"], strict=True)) == copies
    provenance = json.loads(Path(f"{tmp_path / 'fitted.csv'}.provenance.json").read_text())
    assert "ground_truth.csv" in provenance["options"]["combiner"]

    # held out: each labelled query scored by the fit on the other half (Q00000, Q00002, Q00004 | Q00001, Q00003)
    evidence = read_evidence(evidence_path(tmp_path / "fitted.csv"))
    _, labels = ground_truth_labels(evidence, read_ground_truth(dataset / "ground_truth.csv"))
    written = pd.read_csv(evidence_path(tmp_path / "fitted.csv"), usecols=["new_score"])["new_score"].to_numpy()
    for half in ({"Q00000", "Q00002", "Q00004"}, {"Q00001", "Q00003"}):
        scored = evidence["query_id"].isin(half).to_numpy()
        other = calibrate(evidence[~scored], labels[~scored], "the other half")
        np.testing.assert_allclose(written[scored], other.scores(evidence[scored]), rtol=1e-6, atol=1e-6)
        assert not np.allclose(written[scored], calibration.scores(evidence[scored]), atol=1e-3)

    reused = isc_verify(*common, "--calibration", tmp_path / "fitted.calibration.json", "-o", tmp_path / "reused.csv")
    assert reused.returncode == 0, reused.stderr
    reused_evidence = read_evidence(evidence_path(tmp_path / "reused.csv"))  # the saved fit, on every pair
    reused_scores = pd.read_csv(evidence_path(tmp_path / "reused.csv"), usecols=["new_score"])["new_score"]
    np.testing.assert_allclose(reused_scores, calibration.scores(reused_evidence), rtol=1e-6, atol=1e-6)
    assert "calibrated with verification=" in one_error_line(isc_verify(
        *common[:4], 2, *common[5:], "--calibration", tmp_path / "fitted.calibration.json", "-o", tmp_path / "k2.csv"))
    assert "calibrated with verification=" in one_error_line(isc_verify(
        *common, "--features", "rootsift", "--calibration", tmp_path / "fitted.calibration.json",
        "-o", tmp_path / "rootsift.csv"))
    assert "a calibration replaces" in one_error_line(isc_verify(
        *common, "--calibration", tmp_path / "fitted.calibration.json", "--weight", 1, "-o", tmp_path / "w.csv"))
    (tmp_path / "bad.json").write_text("{}")
    assert "not a calibration file" in one_error_line(isc_verify(
        *common, "--calibration", tmp_path / "bad.json", "-o", tmp_path / "bad.csv"))


def test_cli_killed_and_run_again_writes_the_same_bytes(dataset, tmp_path):
    common = [dataset / "predictions.csv", "--data", dataset, "--workers", 1, "--quiet"]
    clean = isc_verify(*common, "--cache", tmp_path / "clean_cache", "-o", tmp_path / "clean.csv")
    assert clean.returncode == 0, clean.stderr
    output, cache = tmp_path / "killed.csv", tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-m", "isc.cli.verify", *map(str, common), "--cache", str(cache),
                                "-o", str(output)], start_new_session=True, cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 120
        while not list(cache.rglob("*.npz")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)  # the command and its worker process
    finally:
        assert process.wait(timeout=60) == -signal.SIGKILL
    assert not output.exists() and 0 < len(list(cache.rglob("*.npz"))) < 11
    assert not list(cache.rglob("*.part"))  # cache entries appear whole or not at all
    again = isc_verify(*common, "--cache", cache, "-o", output)
    assert again.returncode == 0, again.stderr
    for name in ("{}.csv", "{}.evidence.csv"):
        assert (tmp_path / name.format("killed")).read_bytes() == (tmp_path / name.format("clean")).read_bytes()


def linked_images(dataset: Path, images: Path) -> Path:
    """``images``: the dataset's query and reference folders as links, one of which a test may replace."""
    for split in ("query", "reference"):
        (images / f"{split}_images").mkdir(parents=True)
        for path in (dataset / f"{split}_images").iterdir():
            (images / f"{split}_images" / path.name).symlink_to(path)
    return images


def test_cli_lists_broken_images_and_flags_their_pairs(dataset, tmp_path, capsys):
    images = linked_images(dataset, tmp_path / "images")
    broken = images / "reference_images" / "R000002.jpg"
    broken.unlink()
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    common = [str(dataset / "predictions.csv"), "--data", str(images), "--workers", "0", "--quiet"]
    assert main([*common, "--k", "6", "--max-broken", "1", "-o", str(tmp_path / "out.csv")]) == 0
    listed = capsys.readouterr().out
    assert "broken R000002: not an image" in listed and "1 broken image(s), 5 pair(s) unverified" in listed
    evidence = pd.read_csv(tmp_path / "out.evidence.csv", keep_default_na=False)
    flagged = evidence[evidence["reference_id"] == "R000002"]
    assert len(flagged) == 5 and (~flagged["verified"]).all() and evidence["verified"].sum() == 25
    assert flagged["error"].str.startswith("reference R000002: not an image").all()
    assert (evidence.loc[evidence["reference_id"] != "R000002", "error"] == "").all()
    assert main([*common, "-o", str(tmp_path / "warned.csv")]) == 0
    assert "1 of 11 images (9.1%) are broken" in capsys.readouterr().err
    assert main([*common, "--strict", "-o", str(tmp_path / "strict.csv")]) == 2
    error = capsys.readouterr().err.strip()
    assert "R000002.jpg: not an image" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "strict.csv").exists()
    # no pair at all can be verified: nothing written, exit status 1
    only_broken = tmp_path / "only_broken.csv"
    only_broken.write_text("query_id,reference_id,score\nQ00000,R000002,0.5\n")
    assert main([str(only_broken), *common[1:], "-o", str(tmp_path / "none.csv")]) == 1
    assert not (tmp_path / "none.csv").exists()


def test_cli_refuses_bad_input_in_one_line(dataset, tmp_path, capsys):
    # in this process: the same main() as the command's, without a Python start per case
    predictions = dataset / "predictions.csv"
    absent = tmp_path / "absent.csv"
    absent.write_text("query_id,reference_id,score\nQ00000,R000000,0.5\nQ00099,R000000,0.4\nQ00098,R000000,0.3\n")
    cases = [
        ([tmp_path / "nope.csv", "--data", dataset], "nope.csv: no such file"),
        ([absent, "--data", dataset], "2 query id(s) of the predictions are not among the query images, first Q00099"),
        ([predictions], "--data ROOT or --queries"),
        ([predictions, "--data", dataset, "--ratio", 1.5], "--ratio must be within (0, 1] (Lowe's ratio test), got 1.5"),
        ([predictions, "--data", dataset, "--max-side", 8], "--max-side must be at least 16 pixels"),
        ([predictions, "--data", tmp_path / "no_data"], "no such folder"),
    ]
    out = ["-o", tmp_path / "out.csv"]
    for args, message in [*((case + out, message) for case, message in cases),
                          ([predictions, "--data", dataset, "-o", predictions], "would destroy the input")]:
        assert main(list(map(str, args))) == 2, args
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, (args, error)
    for option, value in (("--k", 0), ("--ratio", 0), ("--threshold", "nan"), ("--geometry", "affine3d")):
        with pytest.raises(SystemExit) as exit_status:
            main([str(predictions), "--data", str(dataset), option, str(value), "-o", str(tmp_path / "out.csv")])
        assert exit_status.value.code == 2 and f"argument {option}:" in capsys.readouterr().err
    assert not list(tmp_path.glob("out*"))
    with pytest.raises(ValueError, match="inlier cap"):
        InlierBonus(cap=0)


def torchrun_verify(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "isc.cli.verify", *map(str, args)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout,
        cwd=Path(__file__).parents[2])


def test_torchrun_two_ranks_on_a_cold_cache_count_each_image_once_and_write_what_one_process_writes(dataset, tmp_path):
    common = [dataset / "predictions.csv", "--data", dataset, "--k", 2, "--workers", 0, "--quiet",
              "--cache", tmp_path / "cache"]
    sharded = torchrun_verify(*common, "--json", "-o", tmp_path / "sharded.csv")
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    summary = json.loads(sharded.stdout)
    # rank 0 verifies Q00000-1, rank 1 Q00002-4: both need R000000 and R000001, which count once
    evidence = read_evidence(tmp_path / "sharded.evidence.csv")
    checked = evidence[evidence["verified"]]
    images = set(checked["query_id"]) | set(checked["reference_id"])
    assert summary["world_size"] == 2 and summary["pairs"] == 10 and len(images) == 8
    assert summary["images"] == 8 and summary["described"] == 8 and summary["cached"] == 0
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 8
    single = isc_verify(*common, "--json", "-o", tmp_path / "single.csv")
    assert single.returncode == 0, single.stderr
    assert json.loads(single.stdout)["cached"] == 8  # the ranks' cache is whole: nothing described again
    for name in ("{}.csv", "{}.evidence.csv"):
        assert (tmp_path / name.format("sharded")).read_bytes() == (tmp_path / name.format("single")).read_bytes()


def test_torchrun_a_failing_rank_ends_every_rank_with_its_error(dataset, tmp_path):
    images = linked_images(dataset, tmp_path / "images")
    broken = images / "query_images" / "Q00003.jpg"  # a query of rank 1's shard only
    broken.unlink()
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    began = time.monotonic()
    done = torchrun_verify(dataset / "predictions.csv", "--data", images, "--workers", 0, "--quiet", "--strict",
                           "--cache", tmp_path / "cache", "-o", tmp_path / "out.csv", timeout=240)
    # the failing rank's one line (torchrun then prints its own report of the failed ranks)
    assert done.returncode != 0 and re.search(r"^isc-verify: error: .*Q00003.jpg: not an image", done.stderr,
                                              re.MULTILINE), done.stderr[-2000:]
    assert time.monotonic() - began < 120  # rank 0 did not wait for rank 1 until a timeout
    assert not list(tmp_path.glob("out*"))


def test_the_pool_starts_its_workers_from_a_fork_server_not_from_this_process():
    with task_map(2) as map_tasks:
        parents = set(map_tasks(operator.call, iter([os.getppid] * 4), 1))
    assert len(parents) == 1 and os.getpid() not in parents  # this process, which has threads, never forks


# ------------------------------------------------------------------------------------ the report


def _green(pixels: np.ndarray) -> np.ndarray:
    """Where a picture is the report's match colour, give or take JPEG's changes."""
    return (pixels[..., 1] > 180) & (pixels[..., 0] < 100) & (pixels[..., 2] < 100)


def test_report_shows_inlier_counts_and_draws_the_matches(dataset, tmp_path):
    verified = tmp_path / "verified.csv"
    done = isc_verify(dataset / "predictions.csv", "--data", dataset, "--k", 3, "--workers", 0, "--quiet", "-o", verified)
    assert done.returncode == 0, done.stderr
    report = subprocess.run([sys.executable, "-m", "isc.cli.report", str(verified), "--gt", str(dataset / "ground_truth.csv"),
                             "--data", str(dataset), "-o", str(tmp_path / "report.html"), "--quiet"],
                            capture_output=True, text=True, timeout=240)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text()
    evidence = read_evidence(evidence_path(verified)).set_index(["query_id", "reference_id"])
    for query, (reference, _) in EDITS.items():  # the random true matches: every copy, each verified
        inliers = int(evidence.loc[(query, f"R{reference:06d}"), "inliers"])
        alt = f'alt="{query} and R{reference:06d}: {inliers} inlier matches"'
        picture = re.search(r'<img src="data:image/jpeg;base64,([^"]+)" ' + re.escape(alt), page)
        assert inliers >= 10 and picture, (query, inliers)
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(picture.group(1)))))
        plain = _green(np.asarray(_photo(PHOTOS[reference], 160))).sum()  # the reference's own green pixels
        assert pixels.shape[1] > 160 and _green(pixels).sum() > 100 + 5 * plain, (query, _green(pixels).sum(), plain)
    assert len(re.findall(r"\d+ inliers", page)) >= len(EDITS)
    # without the evidence beside the predictions: the page as before, two thumbnails a pair
    plain_predictions = tmp_path / "plain" / "verified.csv"
    plain_predictions.parent.mkdir()
    plain_predictions.write_bytes(verified.read_bytes())
    report = subprocess.run([sys.executable, "-m", "isc.cli.report", str(plain_predictions), "--gt",
                             str(dataset / "ground_truth.csv"), "--data", str(dataset), "-o", str(tmp_path / "plain.html"),
                             "--quiet"], capture_output=True, text=True, timeout=240)
    page = (tmp_path / "plain.html").read_text()
    assert report.returncode == 0 and not re.search(r"\d+ inliers", page) and 'class="matches"' not in page
