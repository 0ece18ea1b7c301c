"""The logistic combination of global scores and local-feature evidence (isc.verify.calibrate)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isc.core.files import InputError
from isc.evaluate.metrics import evaluate
from isc.verify.calibrate import (
    FEATURES,
    Calibration,
    calibrate,
    copy_labels,
    fit_logistic,
    ground_truth_labels,
    make_copies,
    pair_features,
    score_margins,
)


def evidence_of(queries: int, candidates: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Each query's candidates, the first of which (by global score) is its copy for about half of the queries;
    a copy has many inliers, a non-copy few; the global score alone mixes the two up."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for q in range(queries):
        has_copy = rng.random() < 0.5
        copy_at = int(rng.integers(0, candidates)) if has_copy else -1
        scores = np.sort(rng.uniform(0.2, 0.8, candidates))[::-1]
        for rank in range(candidates):
            is_copy = rank == copy_at
            inliers = int(rng.poisson(25) if is_copy else rng.poisson(3))
            matches = inliers + int(rng.poisson(30))
            rows.append({"query_id": f"Q{q:05d}", "reference_id": f"R{q * candidates + rank:06d}",
                         "score": float(scores[rank]), "rank": rank, "inliers": inliers,
                         "inlier_ratio": inliers / max(matches, 1)})
            labels.append(float(is_copy))
    return pd.DataFrame(rows), np.array(labels)


def test_fit_logistic_recovers_known_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3))
    true_weights, true_bias = np.array([2.0, -1.0, 0.5]), -0.5
    labels = (rng.random(20000) < 1 / (1 + np.exp(-(x @ true_weights + true_bias)))).astype(float)
    weights, bias = fit_logistic(x, labels, l2=0.0)
    np.testing.assert_allclose(weights, true_weights, atol=0.1)
    assert abs(bias - true_bias) < 0.1


def test_calibration_ranks_copies_first_across_queries():
    train, train_labels = evidence_of(300, 10, seed=1)
    test, test_labels = evidence_of(300, 10, seed=2)
    calibration = calibrate(train, train_labels, fitted_on="constructed")
    scores = calibration.scores(test)
    assert np.isfinite(scores).all()
    ground_truth = pd.DataFrame({"query_id": test["query_id"].unique()})
    copies = test[test_labels == 1].set_index("query_id")["reference_id"]
    ground_truth["reference_id"] = ground_truth["query_id"].map(copies).fillna("")  # as read_ground_truth gives it

    def micro_ap(score: np.ndarray) -> float:
        return evaluate(test.assign(score=score)[["query_id", "reference_id", "score"]], ground_truth).muap

    # inliers separate copies far better than the global score, and the log-odds rank all queries together
    assert micro_ap(scores) > 0.95
    assert micro_ap(scores) > micro_ap(test["score"].to_numpy()) + 0.2
    # more inliers never lowers a pair's score, all else equal
    assert calibration.weights[FEATURES.index("log_inliers")] > 0


def test_same_evidence_same_score_whichever_query():
    evidence, labels = evidence_of(50, 5, seed=3)
    calibration = calibrate(evidence, labels, fitted_on="constructed")
    one = evidence[evidence["query_id"] == "Q00001"]
    renamed = one.assign(query_id="Q09999")
    np.testing.assert_array_equal(calibration.scores(one), calibration.scores(renamed))
    both = pd.concat([one, renamed])
    np.testing.assert_array_equal(calibration.scores(both)[: len(one)], calibration.scores(one))


def test_features_are_per_query():
    evidence = pd.DataFrame({"query_id": ["a", "a", "b"], "reference_id": ["x", "y", "x"],
                             "score": [0.9, 0.5, 0.3], "rank": [0, 1, 0], "inliers": [3, 40, 0],
                             "inlier_ratio": [0.1, 0.8, 0.0]})
    features = pair_features(evidence)
    gap, best = FEATURES.index("gap_to_best_score"), FEATURES.index("log_best_inliers")
    np.testing.assert_allclose(features[:, gap], [0.0, 0.4, 0.0])
    np.testing.assert_allclose(features[:, best], np.log1p([40, 40, 0]))


def test_a_pairs_margin_is_its_lead_over_the_querys_other_candidates_in_any_row_order():
    evidence = pd.DataFrame({"query_id": ["a", "a", "a", "b", "c", "c"], "score": [0.5, 0.9, 0.7, 0.3, 0.6, 0.6]})
    expected = [-0.4, 0.2, -0.2, 0.0, 0.0, 0.0]  # b: its only candidate; c: two tied for the best
    np.testing.assert_allclose(score_margins(evidence), expected)
    shuffled = np.random.default_rng(0).permutation(len(evidence))
    np.testing.assert_allclose(score_margins(evidence.iloc[shuffled]), np.asarray(expected)[shuffled])


def test_a_calibration_fits_the_margin_and_one_fitted_before_it_still_applies(tmp_path):
    evidence, labels = evidence_of(100, 5, seed=11)
    fitted = calibrate(evidence, labels, "constructed", {"verification": {}})
    assert fitted.features == (*FEATURES, "score_margin")
    np.testing.assert_allclose(pair_features(evidence, fitted.features)[:, -1], score_margins(evidence))
    loaded = Calibration.load(fitted.save(tmp_path / "calibration.json"))
    np.testing.assert_array_equal(loaded.scores(evidence), fitted.scores(evidence))
    content = json.loads((tmp_path / "calibration.json").read_text())
    for key in ("features", "mean", "std", "weights"):  # as a calibration of before the margin was written
        content[key] = content[key][:-1]
    (tmp_path / "before.json").write_text(json.dumps(content))
    before = Calibration.load(tmp_path / "before.json")
    assert before.features == FEATURES and np.isfinite(before.scores(evidence)).all()


def test_the_query_bias_is_fitted_where_the_evidence_holds_it():
    evidence, labels = evidence_of(100, 5, seed=12)
    biased = evidence.assign(query_bias=np.random.default_rng(12).uniform(0.1, 0.4, len(evidence)))
    fitted = calibrate(biased, labels, "constructed", {"verification": {}})
    assert fitted.features == (*FEATURES, "query_bias", "score_margin")
    with pytest.raises(InputError, match="the evidence lacks query_bias"):
        fitted.scores(evidence)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.drop(columns="inliers"), "lacks the column"),
    (lambda e: e.assign(score=np.nan), "non-finite"),
    (lambda e: e.assign(inlier_ratio=1.5), "above 1"),
    (lambda e: e.iloc[:0], "no pairs"),
])
def test_bad_evidence_refused(change, message):
    evidence, _ = evidence_of(5, 3, seed=4)
    with pytest.raises(InputError, match=message):
        pair_features(change(evidence))


def test_one_class_refused():
    evidence, labels = evidence_of(20, 3, seed=5)
    with pytest.raises(InputError, match="copies and non-copies"):
        calibrate(evidence, np.zeros_like(labels), fitted_on="x")


def test_save_load_round_trip_and_conditions(tmp_path):
    evidence, labels = evidence_of(100, 5, seed=6)
    calibration = calibrate(evidence, labels, fitted_on="constructed", conditions={"model": "sscd", "k": 5})
    path = calibration.save(tmp_path / "calibration.json")
    loaded = Calibration.load(path)
    assert loaded == calibration
    np.testing.assert_array_equal(loaded.scores(evidence), calibration.scores(evidence))
    loaded.check_conditions({"model": "sscd", "k": 5, "other": 1}, path)
    with pytest.raises(InputError, match="calibrated with model='sscd'"):
        loaded.check_conditions({"model": "pdq"}, path)


@pytest.mark.parametrize("content, message", [
    ("not json", "not a calibration file"),
    (json.dumps({"format": "other"}), "not a calibration file"),
    (json.dumps({"format": "isc-calibration", "version": 99}), "version 99"),
    (json.dumps({"format": "isc-calibration", "version": 1, "features": []}), "damaged"),
])
def test_bad_calibration_file_refused(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        Calibration.load(path)
    with pytest.raises(InputError, match="no such calibration file"):
        Calibration.load(tmp_path / "absent.json")


def test_non_finite_calibration_file_refused(tmp_path):
    evidence, labels = evidence_of(50, 3, seed=7)
    path = calibrate(evidence, labels, fitted_on="x").save(tmp_path / "c.json")
    content = json.loads(path.read_text())
    content["weights"][0] = float("inf")
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match="non-finite"):
        Calibration.load(path)


def test_ground_truth_labels_with_any_ids():
    evidence = pd.DataFrame({"query_id": ["q,1", "q,1", "q2", "q3"], "reference_id": ["r1", "r2", "r1", "r9"],
                             "score": [0.5, 0.4, 0.3, 0.2], "rank": [0, 1, 0, 0], "inliers": [1, 2, 3, 4],
                             "inlier_ratio": [0.1] * 4})
    ground_truth = pd.DataFrame({"query_id": ["q,1", "q2"], "reference_id": ["r2", None]})
    covered, labels = ground_truth_labels(evidence, ground_truth)
    assert covered["query_id"].tolist() == ["q,1", "q,1", "q2"]
    assert labels.tolist() == [0.0, 1.0, 0.0]


def test_make_copies_deterministic_and_labelled(tmp_path):
    sources = {}
    for i in range(3):
        path = tmp_path / f"T{i:06d}.png"
        Image.fromarray((np.random.default_rng(i).random((64, 80, 3)) * 255).astype(np.uint8)).save(path)
        sources[f"T{i:06d}"] = path
    copies = make_copies(sources, tmp_path / "a", seed=0)
    again = make_copies(sources, tmp_path / "b", seed=0)
    assert list(copies) == [f"T{i:06d}.copy" for i in range(3)]
    for copy_id in copies:
        assert copies[copy_id].read_bytes() == again[copy_id].read_bytes()
        with Image.open(copies[copy_id]) as image:
            assert image.format == "JPEG"
    evidence = pd.DataFrame({"query_id": ["T000000.copy", "T000000.copy"], "reference_id": ["T000000", "R000001"]})
    assert copy_labels(evidence).tolist() == [1.0, 0.0]


def test_reference_coverage_is_fitted_where_the_evidence_holds_it_and_older_calibrations_still_apply():
    evidence, labels = evidence_of(200, 5, seed=8)
    rng = np.random.default_rng(8)
    covered = evidence.assign(reference_coverage=np.where(labels > 0, rng.uniform(0.3, 1, len(labels)),
                                                          rng.uniform(0, 0.2, len(labels))))
    with_coverage = calibrate(covered, labels, fitted_on="constructed")
    assert with_coverage.features == (*FEATURES, "reference_coverage", "score_margin")
    assert with_coverage.weights[with_coverage.features.index("reference_coverage")] > 0  # spread inliers: a copy
    before = calibrate(evidence, labels, fitted_on="evidence of version 1")  # no coverage column then
    np.testing.assert_array_equal(before.scores(covered), before.scores(evidence))
    with pytest.raises(InputError, match="the evidence lacks reference_coverage"):
        with_coverage.scores(evidence)


def test_an_evidence_sidecar_written_before_reference_coverage_is_still_read(tmp_path):
    from isc.verify.verification import EVIDENCE_COLUMNS, read_evidence

    evidence, _ = evidence_of(3, 2, seed=9)
    sidecar = evidence.assign(verified=True, matches=evidence["inliers"], transform="", error="")
    older = [column for column in EVIDENCE_COLUMNS if column != "reference_coverage"]
    sidecar[older].to_csv(tmp_path / "old.evidence.csv", index=False)
    read = read_evidence(tmp_path / "old.evidence.csv")
    assert "reference_coverage" not in read.columns and len(read) == len(evidence)
    sidecar.assign(reference_coverage=0.5)[list(EVIDENCE_COLUMNS)].to_csv(tmp_path / "new.evidence.csv", index=False)
    assert (read_evidence(tmp_path / "new.evidence.csv")["reference_coverage"] == 0.5).all()
