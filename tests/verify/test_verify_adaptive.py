"""Adaptive depth of verification (isc.verify.adaptive): a query whose first k candidates show no geometric
evidence is verified further down to deep_k, the others are not; its options are checked and reach the
calibration's conditions, isc-verify's and isc-run's flags."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_verify import EDITS, UNRELATED, dataset  # noqa: F401 (the module-scoped images and predictions)

from isc.core.files import SettingError
from isc.core.tables import read_predictions
from isc.pipeline.run import Pipeline, RunConfig
from isc.verify.adaptive import without_evidence
from isc.verify.local_features import VerifyOptions
from isc.verify.verification import calibration_conditions, evidence_path, verify


def _images(root: Path) -> dict[str, dict[str, Path]]:
    return {split: {p.stem: p for p in (root / f"{split}_images").iterdir()} for split in ("query", "reference")}


def test_only_queries_without_evidence_are_verified_deeper(dataset, tmp_path):  # noqa: F811
    predictions = read_predictions(dataset / "predictions.csv")
    images = _images(dataset)
    output = tmp_path / "verified.csv"
    # each copy's reference is third (rank 2): within k = 3 it shows evidence, the unrelated queries do not
    result = verify(predictions, images["query"], images["reference"], output, quiet=True,
                    options=VerifyOptions(k=3, deep_k=5, workers=0))
    evidence = pd.read_csv(evidence_path(output), keep_default_na=False)
    verified = evidence[evidence["verified"]].groupby("query_id")["rank"].max()
    assert verified.to_dict() == {**{q: 2 for q in EDITS}, **{q: 4 for q in UNRELATED}}
    assert result.pairs == 3 * len(EDITS) + 5 * len(UNRELATED) and len(evidence) == len(predictions)
    assert without_evidence(evidence[evidence["rank"] < 3], 8) == sorted(UNRELATED)

    # k = 2 misses every copy; verifying deeper where nothing matched finds them and puts them first
    shallow, deep = tmp_path / "shallow.csv", tmp_path / "deep.csv"
    verify(predictions, images["query"], images["reference"], shallow, quiet=True, options=VerifyOptions(k=2, workers=0))
    verify(predictions, images["query"], images["reference"], deep, quiet=True,
           options=VerifyOptions(k=2, deep_k=3, workers=0))
    for path, found in ((shallow, False), (deep, True)):
        best = read_predictions(path).sort_values("score", ascending=False).groupby("query_id").head(1)
        firsts = dict(zip(best["query_id"], best["reference_id"], strict=True))
        assert all((firsts[q] == f"R{r:06d}") == found for q, (r, _) in EDITS.items())


def test_adaptive_settings_are_checked_and_recorded_only_when_on(tmp_path):
    with pytest.raises(SettingError, match="deep_k must be more than"):
        VerifyOptions(k=10, deep_k=10)
    with pytest.raises(SettingError, match="deep_inliers must be at least 1"):
        VerifyOptions(deep_k=30, deep_inliers=0)
    assert "deep_k" not in calibration_conditions(VerifyOptions(), None)["verification"]
    on = calibration_conditions(VerifyOptions(deep_k=30, deep_inliers=6), None)["verification"]
    assert (on["deep_k"], on["deep_inliers"]) == (30, 6)
    # isc-run's search keeps 10 candidates a query: none to verify deeper than that
    with pytest.raises(SettingError, match="deep_k must be at most the candidates the search keeps"):
        Pipeline(RunConfig(work=tmp_path, verify=VerifyOptions(deep_k=30)))


@pytest.mark.parametrize("command", ["isc.cli.verify", "isc.cli.run"])
def test_cli_refuses_a_deep_k_not_beyond_k_in_one_line(dataset, tmp_path, command):  # noqa: F811
    verify = command == "isc.cli.verify"
    flag = "--deep-k" if verify else "--verify-deep-k"
    args = ([dataset / "predictions.csv", "--data", dataset, "-o", tmp_path / "v.csv", "--k", 3, flag, 3]
            if verify else [tmp_path / "work", "--data", dataset, "--verify-k", 3, flag, 2])
    done = subprocess.run([sys.executable, "-m", command, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f" {flag} must be more than the candidates verified for "
                                                         "every query (3), got " + ("3" if verify else "2"))
    assert not (tmp_path / "v.csv").exists()


def test_a_verified_run_searches_every_querys_k_and_keeps_the_tracks_limit_after_verifying(mini_dataset, tmp_path):
    """The search keeps each query's k candidates however many queries there are (else, at 50,000 queries, the
    track's 500,000 rows would leave 10 a query to verify deeper), and the verified predictions are cut back to
    the limit, the best by their new score; unverified, the search keeps the limit itself."""
    from dataclasses import replace

    from isc.extract.extraction import ExtractOptions
    from isc.pipeline.config import matching_search
    from isc.search.matching import SearchOptions

    limit, k = 40, 6  # the limit stands for the track's 500,000 rows
    work = tmp_path / "work"
    config = RunConfig(work=work, data=mini_dataset, submissions=work / "submissions", phases=[1], model="pdq",
                       pca_dim=16, extraction=ExtractOptions(batch_size=8, workers=0), calibration_copies=0,
                       verify=VerifyOptions(k=3, deep_k=k, workers=0), search=SearchOptions(k=k, max_results=limit),
                       quiet=True)
    Pipeline(config).run()
    searched = read_predictions(work / "predictions_phase1.csv")
    assert len(searched) > limit and (searched.groupby("query_id").size() == k).all()
    verified = read_predictions(work / "predictions_phase1_verified.csv")
    evidence = pd.read_csv(evidence_path(work / "predictions_phase1_verified.csv"), keep_default_na=False,
                           dtype={"query_id": str, "reference_id": str})
    assert len(evidence) == len(searched) and len(verified) == limit
    best = evidence.sort_values(["new_score", "query_id", "reference_id"], ascending=[False, True, True]).head(limit)
    assert list(zip(verified["query_id"], verified["reference_id"], strict=True)) == \
        list(zip(best["query_id"], best["reference_id"], strict=True))
    assert len(read_predictions(work / "submissions" / "phase1_matching.csv")) == limit
    assert matching_search(replace(config, verify=None), 1_000) == config.search
