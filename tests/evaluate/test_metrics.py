"""The scorer against hand-worked examples, the organisers' tie rule and brute force."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from conftest import cli, one_line_error
from hypothesis import given, settings
from hypothesis import strategies as st

from isc.core.files import InputError
from isc.core.tables import read_ground_truth, read_predictions
from isc.evaluate.metrics import average_precision, evaluate, precision_recall


def predictions(rows):
    return pd.DataFrame(rows, columns=["query_id", "reference_id", "score"])


def ground_truth(rows):
    return pd.DataFrame(rows, columns=["query_id", "reference_id"])


GT = ground_truth([("Q00000", "R000000"), ("Q00001", "R000001"), ("Q00002", "")])


def test_hand_worked_example():
    # ranking: right, wrong, right -> precisions 1, 1/2, 2/3 at recalls 1/2, 1/2, 1
    preds = predictions([("Q00000", "R000000", 0.9), ("Q00002", "R000005", 0.8), ("Q00001", "R000001", 0.7)])
    m = evaluate(preds, GT)
    assert m.muap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m.recall_at_p90 == pytest.approx(0.5)
    assert m.threshold_at_p90 == pytest.approx(0.9)
    assert (m.n_predictions, m.n_positives, m.n_true_positives) == (3, 2, 2)


def test_equal_scores_put_wrong_pairs_first():
    preds = predictions([("Q00000", "R000000", 0.5), ("Q00001", "R000009", 0.5)])
    m = evaluate(preds, GT)
    # the wrong pair ranks first: precision 1/2 when the right one is reached
    assert m.muap == pytest.approx(0.25)
    assert m.recall_at_p90 is None


def test_constant_score_cannot_help():
    preds = predictions(
        [("Q00000", "R000000", 1.0), ("Q00001", "R000001", 1.0)]
        + [("Q00002", f"R00010{i}", 1.0) for i in range(4)]
    )
    m = evaluate(preds, GT)
    # four wrong pairs first, then the two right ones at positions 5 and 6
    assert m.muap == pytest.approx(0.5 * 1 / 5 + 0.5 * 2 / 6)


def test_queries_without_match_are_false_positives_and_missing_ones_lower_recall():
    preds = predictions([("Q00002", "R000000", 0.9), ("Q00000", "R000000", 0.8)])
    m = evaluate(preds, GT)
    assert m.muap == pytest.approx(0.5 * 0.5)
    assert m.recall_at_rank1 == pytest.approx(0.5)


def test_recall_at_rank_counts_ties_pessimistically():
    preds = predictions([("Q00000", "R000007", 0.9), ("Q00000", "R000000", 0.9), ("Q00001", "R000001", 0.3)])
    m = evaluate(preds, GT)
    assert m.recall_at_rank1 == pytest.approx(0.5)
    assert m.recall_at_rank10 == pytest.approx(1.0)


def test_restrict_to_ground_truth_queries_drops_unlisted_queries():
    preds = predictions([("Q30000", "R000003", 0.99), ("Q00000", "R000000", 0.5)])
    assert evaluate(preds, GT).muap == pytest.approx(0.25)
    assert evaluate(preds, GT, restrict_to_ground_truth_queries=True).muap == pytest.approx(0.5)


def test_duplicated_pair_is_rejected():
    preds = predictions([("Q00000", "R000000", 0.5), ("Q00000", "R000000", 0.4)])
    with pytest.raises(InputError, match="more than once"):
        evaluate(preds, GT)


def test_unsorted_recalls_rejected():
    with pytest.raises(ValueError):
        average_precision(np.array([0.5, 0.2]), np.array([1.0, 1.0]))


def organisers_ap(is_match: list[bool], scores: list[float], n_positives: int) -> float:
    """The organisers' algorithm transcribed with Python's sort: (score, not match) ascending, reversed."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], not is_match[i]))[::-1]
    total, hits = 0.0, 0
    for rank, i in enumerate(order, start=1):
        if is_match[i]:
            hits += 1
            total += (1 / n_positives) * (hits / rank)
    return total


def brute_force_worst_ap(is_match: list[bool], scores: list[float], n_positives: int) -> float:
    """The smallest AP over every ranking consistent with the scores (ties in any order)."""
    groups = [[i for i in range(len(scores)) if scores[i] == s] for s in sorted(set(scores), reverse=True)]
    worst = np.inf
    for arrangement in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = [i for group in arrangement for i in group]
        hits, ap = 0, 0.0
        for rank, i in enumerate(order, start=1):
            if is_match[i]:
                hits += 1
                ap += hits / rank / n_positives
        worst = min(worst, ap)
    return worst


labelled_scores = st.lists(st.tuples(st.booleans(), st.sampled_from([0.1, 0.2, 0.5, 0.7, 0.9])), min_size=1, max_size=7)


@settings(max_examples=200, deadline=None)
@given(labelled_scores, st.integers(min_value=0, max_value=3))
def test_ap_is_the_worst_case_over_tie_orders(items, extra_positives):
    is_match = [m for m, _ in items]
    scores = [s for _, s in items]
    n_positives = sum(is_match) + extra_positives
    if n_positives == 0:
        return
    precisions, recalls, _ = precision_recall(np.array(is_match), np.array(scores), n_positives)
    ap = average_precision(recalls, precisions)
    assert ap == pytest.approx(organisers_ap(is_match, scores, n_positives), abs=1e-12)
    assert ap == pytest.approx(brute_force_worst_ap(is_match, scores, n_positives), abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1, allow_nan=False)), min_size=1, max_size=60))
def test_precision_recall_matches_direct_counting(items):
    is_match = np.array([m for m, _ in items])
    scores = np.array([s for _, s in items])
    n_positives = int(is_match.sum()) + 1
    precisions, recalls, thresholds = precision_recall(is_match, scores, n_positives)
    for i, threshold in enumerate(thresholds):
        # everything ranked up to i has score >= threshold; wrong pairs at the threshold come first
        above = scores > threshold
        at = scores == threshold
        rank_in_tie = i - above.sum()
        n_wrong_at = int((at & ~is_match).sum())
        hits = int((above & is_match).sum()) + max(0, rank_in_tie + 1 - n_wrong_at)
        assert precisions[i] == pytest.approx(hits / (i + 1))
        assert recalls[i] == pytest.approx(hits / n_positives)


def test_isc_eval_cli(tmp_path):
    preds_csv = tmp_path / "predictions.csv"
    gt_csv = tmp_path / "gt.csv"
    predictions([("Q00000", "R000000", 0.9), ("Q00002", "R000005", 0.8), ("Q00001", "R000001", 0.7)]).to_csv(
        preds_csv, index=False
    )
    GT.to_csv(gt_csv, index=False)
    plot = tmp_path / "pr.png"
    out = cli("eval", preds_csv, "--gt", gt_csv, "--json", "--plot", plot)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["muap"] == pytest.approx(0.5 + 1 / 3)
    assert result["recall_at_p90"] == pytest.approx(0.5)
    assert (result["n_predictions"], result["n_positives"]) == (3, 2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = cli("eval", preds_csv, "--gt", gt_csv)
    assert text.returncode == 0 and "0.83333" in text.stdout, text.stderr


def test_isc_eval_cli_bad_file_is_one_line(tmp_path):
    preds_csv = tmp_path / "predictions.csv"
    preds_csv.write_text("query_id,reference_id,score\nQ00000,R000000,0.5\nQ00000,R000000,0.4\n")
    gt_csv = tmp_path / "gt.csv"
    GT.to_csv(gt_csv, index=False)
    one_line_error(cli("eval", preds_csv, "--gt", gt_csv), "isc-eval", "line 3")
    keep = cli("eval", preds_csv, "--gt", gt_csv, "--allow-duplicates", "--json")
    assert keep.returncode == 0, keep.stderr
    assert json.loads(keep.stdout)["n_predictions"] == 1
    assert "duplicated" in keep.stderr


def test_read_back_files_written_by_pandas(tmp_path):
    gt_csv = tmp_path / "gt.csv"
    gt_csv.write_text("query_id,reference_id\nQ00000,R000000\nQ00001,\n")
    gt = read_ground_truth(gt_csv)
    assert list(gt["reference_id"]) == ["R000000", ""]
    preds_csv = tmp_path / "p.csv"
    preds_csv.write_text("query_id,reference_id,score\nQ00000,R000000,1e-3\n")
    assert read_predictions(preds_csv)["score"].iloc[0] == pytest.approx(1e-3)


def test_bitwise_identical_to_organisers_numpy_formula():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(20_000), 3)  # rounding makes many ties
    is_match = rng.random(20_000) < 0.3
    n_positives = int(is_match.sum()) + 100
    # the organisers' steps: Python sort on (score, not match), reversed, cumsum, Σ Δrecall × precision
    order = sorted(range(len(scores)), key=lambda i: (scores[i], not is_match[i]))[::-1]
    ranked = is_match[order]
    ntp = np.cumsum(ranked)
    precisions = ntp / (np.arange(len(ranked)) + 1)
    recalls = ntp / n_positives
    expected = ((recalls - np.concatenate([[0], recalls[:-1]])) * precisions).sum()
    p, r, _ = precision_recall(is_match, scores, n_positives)
    assert average_precision(r, p) == expected
