"""Region evidence (isc.verify.regions): the boxes a transform maps, the cuts described by the search's model and
their cosine as a calibration feature; a second model's cosine as another; calibrations without them."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from isc.core.files import InputError
from isc.models import create_model
from isc.synth.draw import base_image
from isc.verify.calibrate import FEATURES, Calibration, calibrate, pair_cosines
from isc.verify.local_features import VerifyOptions, transform_text
from isc.verify.regions import RegionDescriber, _cut, parse_transform, region_boxes
from isc.verify.verification import calibration_conditions, evidence_path, read_evidence, verify


def test_a_translation_cuts_the_reference_to_the_query_and_keeps_the_whole_query():
    # the query is the reference's 400 x 300 crop at (150, 90): its corners land there in the 700 x 525 reference
    shift = np.array([[1, 0, 150], [0, 1, 90], [0, 0, 1]], dtype=np.float64)
    query_box, reference_box = region_boxes(shift, (400, 300), (700, 525))
    assert query_box == (0, 0, 400, 300)  # the reference's corners fall outside the query: clipped to it
    assert reference_box == (130, 75, 570, 405)  # widened by 5% of 400 and 300 on each side
    # half the size: the query maps onto the reference's 200 x 150 at (10, 20), widened by 10 and 7.5 pixels
    half = np.array([[0.5, 0, 10], [0, 0.5, 20], [0, 0, 1]], dtype=np.float64)
    assert region_boxes(half, (400, 300), (700, 525))[1] == (0, 12, 220, 178)


def test_no_region_for_a_singular_transform_a_tiny_cut_or_a_corner_behind_the_projection():
    assert region_boxes(np.zeros((3, 3)), (400, 300), (700, 525)) is None
    tiny = np.diag([0.05, 0.05, 1.0])  # the query shrinks to 20 x 15 reference pixels
    assert region_boxes(tiny, (400, 300), (700, 525)) is None
    behind = np.array([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1]], dtype=np.float64)  # w < 0 beyond x = 100
    assert region_boxes(behind, (400, 300), (700, 525)) is None


def test_transforms_read_back_as_the_evidence_writes_them():
    affine = np.array([[0.9, -0.1, 12.5], [0.1, 0.9, -3.25]])
    np.testing.assert_allclose(parse_transform(transform_text(affine)), np.vstack([affine, [0, 0, 1]]), rtol=1e-5)
    assert parse_transform("") is None
    for bad in ("1 2 3", "a b c d e f", "1 2 3 4 5 nan"):
        with pytest.raises(InputError):
            parse_transform(bad)


@pytest.fixture(scope="module")
def pasted(tmp_path_factory):
    """Two photo references; query Q0 is the first pasted into a corner of a 900 x 900 drawing (a third of it),
    Q1 an unrelated drawing; verified with region evidence described by PDQ (no torch, no weights)."""
    root = tmp_path_factory.mktemp("regions")
    rng = np.random.default_rng(0)
    references = {}
    for i, name in enumerate(("astronaut", "coffee")):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.thumbnail((320, 320))
        references[f"R{i}"] = root / f"R{i}.jpg"
        image.save(references[f"R{i}"], quality=92)
    canvas = base_image(rng, 900, 901).convert("RGB")
    with Image.open(references["R0"]) as photo:
        canvas.paste(photo, (560, 40))
    queries = {"Q0": root / "Q0.jpg", "Q1": root / "Q1.jpg"}
    canvas.save(queries["Q0"], quality=92)
    base_image(rng, 400, 500).convert("RGB").save(queries["Q1"], quality=92)
    predictions = pd.DataFrame([(q, r, 0.5 - 0.1 * j) for q in queries for j, r in enumerate(references)],
                               columns=["query_id", "reference_id", "score"])
    model = create_model("pdq")
    options = VerifyOptions(k=2, workers=0, region_inliers=8)
    output = root / "verified.csv"
    result = verify(predictions, queries, references, output, options=options, quiet=True,
                    regions=RegionDescriber(model), cache=root / "cache")
    return root, predictions, queries, references, model, options, output, result


def test_the_pasted_copys_regions_are_far_more_alike_than_the_whole_images(pasted):
    root, _, queries, references, model, _, output, result = pasted
    evidence = read_evidence(evidence_path(output)).set_index(["query_id", "reference_id"])
    assert result.regions_described == 2 == len(list((root / "cache" / "regions").glob("*.png")))
    whole = [model.embed_pixels(np.asarray(Image.open(p).convert("RGB").resize((512, 512)))[None])[0]
             for p in (queries["Q0"], references["R0"])]
    whole_cosine = whole[0] @ whole[1] / np.linalg.norm(whole[0]) / np.linalg.norm(whole[1])
    region = evidence.loc[("Q0", "R0"), "region_similarity"]
    assert region > whole_cosine + 0.3, (region, whole_cosine)  # PDQ: 0.48 against 0.0 when written
    assert (evidence.drop(index=("Q0", "R0"))["region_similarity"] == 0).all()  # fewer inliers: no region
    record = json.loads(output.with_name(output.name + ".provenance.json").read_text())
    assert record["counts"]["regions_described"] == 2 and record["options"]["region_inliers"] == 8


def test_a_second_run_reuses_the_cuts_and_their_descriptors(pasted):
    root, predictions, queries, references, model, options, output, _ = pasted
    cuts = root / "cache" / "regions"
    regions_file = cuts / "verified.h5"
    before = regions_file.stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in cuts.glob("*.png"))
    evidence = read_evidence(evidence_path(output))
    verify(predictions, queries, references, output, options=options, quiet=True, regions=RegionDescriber(model),
           cache=root / "cache")
    assert (regions_file.stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in cuts.glob("*.png"))) == before
    pd.testing.assert_frame_equal(read_evidence(evidence_path(output)), evidence)


def test_region_evidence_without_a_model_is_refused(pasted):
    _, predictions, queries, references, _, options, output, _ = pasted
    with pytest.raises(InputError, match="descriptor model"):
        verify(predictions, queries, references, output.with_name("x.csv"), options=options, quiet=True)
    with pytest.raises(InputError, match="region_inliers"):
        VerifyOptions(region_inliers=-1).check()


def _labelled(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (np.arange(rows) % 5 == 0).astype(np.float64)
    evidence = pd.DataFrame({"query_id": [f"Q{i // 5}" for i in range(rows)], "reference_id": [f"R{i}" for i in range(rows)],
                             "score": rng.normal(0.3 + 0.1 * labels, 0.1), "rank": np.arange(rows) % 5,
                             "inliers": rng.integers(0, 6, rows) + 10 * labels, "inlier_ratio": rng.uniform(0, 1, rows),
                             "region_similarity": np.clip(rng.normal(0.2 + 0.5 * labels, 0.1), -1, 1)})
    return evidence, labels


def test_a_calibration_records_the_region_feature_and_refuses_evidence_without_it(tmp_path):
    evidence, labels = _labelled(200, 0)
    fitted = calibrate(evidence, labels, "test", {"verification": {"region_inliers": 8}})
    assert fitted.features == (*FEATURES, "region_similarity", "score_margin")
    assert fitted.weights[fitted.features.index("region_similarity")] > 0  # the regions of copies are more alike
    loaded = Calibration.load(fitted.save(tmp_path / "calibration.json"))
    np.testing.assert_allclose(loaded.scores(evidence), fitted.scores(evidence))
    with pytest.raises(InputError, match="lacks region_similarity"):
        loaded.scores(evidence.drop(columns="region_similarity"))
    with pytest.raises(InputError, match="non-finite"):
        loaded.scores(evidence.assign(region_similarity=np.inf))
    # a calibration of before the feature: scores evidence with or without it alike, by its own features
    old = calibrate(evidence.drop(columns="region_similarity"), labels, "old", {"verification": {}})
    assert old.features == (*FEATURES, "score_margin")
    np.testing.assert_allclose(old.scores(evidence), old.scores(evidence.drop(columns="region_similarity")))
    # a feature this toolkit does not compute is refused when loaded
    content = json.loads((tmp_path / "calibration.json").read_text())
    content["features"][-1] = "colour_histogram"
    (tmp_path / "unknown.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match="colour_histogram"):
        Calibration.load(tmp_path / "unknown.json")


def test_region_evidence_enters_the_calibration_conditions_only_when_on():
    assert "region_inliers" not in calibration_conditions(VerifyOptions(), None)["verification"]
    assert calibration_conditions(VerifyOptions(region_inliers=8), None)["verification"]["region_inliers"] == 8
    old = Calibration(FEATURES, (0.0,) * 6, (1.0,) * 6, (0.0,) * 6, 0.0, "old", 10, 2,
                      calibration_conditions(VerifyOptions(), None))
    old.check_conditions(calibration_conditions(VerifyOptions(), None), "old.json")
    with pytest.raises(InputError, match="calibrate again"):
        old.check_conditions(calibration_conditions(VerifyOptions(region_inliers=8), None), "old.json")


def test_a_second_models_cosine_takes_each_querys_best_view():
    evidence = pd.DataFrame({"query_id": ["a", "a", "b"], "reference_id": ["x", "y", "x"]})
    queries = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])  # a has two views
    references = np.array([[0.0, 1.0], [1.0, 1.0]])
    cosines = pair_cosines(evidence, ["a", "a", "b"], queries, ["x", "y"], references)
    np.testing.assert_allclose(cosines, [1.0, np.sqrt(0.5), 0.8])
    with pytest.raises(InputError, match="no descriptor, first c"):
        pair_cosines(evidence.assign(query_id="c"), ["a", "a", "b"], queries, ["x", "y"], references)
    with pytest.raises(InputError, match="non-finite"):
        pair_cosines(evidence, ["a", "a", "b"], queries * np.nan, ["x", "y"], references)


def test_isc_run_describes_regions_for_the_queries_and_the_calibration_and_is_then_up_to_date(mini_dataset, tmp_path):
    def isc_run(*extra: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "isc.cli.run", str(tmp_path / "work"), "--data", str(mini_dataset),
                               "--model", "pdq", "--pca-dim", "16", "--batch-size", "8", "--workers", "0",
                               "--verify-k", "3", "--calibration-copies", "12", "--k", "5", "--phases", "1",
                               "--quiet", "--json", *extra], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return {(s["stage"], s["target"]): s["result"] for s in json.loads(done.stdout)["steps"]}

    isc_run("--region-inliers", "4")  # the default is 8: a lower threshold gives PDQ's small images a region
    work = tmp_path / "work"
    calibration = json.loads((work / "calibration.json").read_text())
    assert calibration["features"][len(FEATURES):] == ["region_similarity", "reference_coverage", "query_bias", "score_margin"]
    assert calibration["conditions"]["verification"]["region_inliers"] == 4
    evidence = read_evidence(work / "predictions_phase1_verified.evidence.csv")
    with_region = evidence["region_similarity"] != 0
    assert with_region.any() and (evidence.loc[with_region, "inliers"] >= 4).all()
    again = isc_run("--region-inliers", "4")
    assert again[("calibrate", "copies")].startswith("up to date") and again[("verify", "phase 1")] == "up to date"
    off = isc_run("--region-inliers", "0")  # without regions: the calibration is fitted again, without the feature
    assert off[("calibrate", "copies")].startswith("settings changed")
    assert json.loads((work / "calibration.json").read_text())["features"] == [*FEATURES, "reference_coverage", "query_bias",
                                                                          "score_margin"]
    assert "region_similarity" not in read_evidence(work / "predictions_phase1_verified.evidence.csv").columns


def test_isc_run_refuses_a_negative_region_threshold_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "isc.cli.run", str(tmp_path / "work"), "--region-inliers", "-1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) <= 3 and "--region-inliers" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_similarities_do_not_depend_on_how_many_decoded_images_are_kept(pasted, monkeypatch):
    import isc.verify.regions as regions

    root, _, queries, references, model, _, output, _ = pasted
    evidence = read_evidence(evidence_path(output))
    monkeypatch.setattr(regions, "DECODED_IMAGES", 1)  # each reference pushes the others out, never the query
    similarity, cuts = regions.region_similarities(evidence, {**queries, **references}, 8, RegionDescriber(model),
                                                   root / "cache" / "regions", root / "again.regions.h5", quiet=True)
    np.testing.assert_allclose(similarity, evidence["region_similarity"].to_numpy(), atol=1e-6)
    assert cuts == 2


def test_a_cut_file_holds_exactly_the_boxs_pixels(tmp_path):
    """The cuts are written at zlib's fastest level: still lossless, so their descriptors are the box's."""
    pixels = np.random.default_rng(3).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    cut_id, path = _cut(pixels, (10, 20, 70, 110), "query\0pair", "\0stamps", tmp_path)
    with Image.open(path) as written:
        np.testing.assert_array_equal(np.asarray(written.convert("RGB")), pixels[20:110, 10:70])
    assert _cut(pixels, (10, 20, 70, 110), "query\0pair", "\0stamps", tmp_path) == (cut_id, path)
