"""scripts/bench_calibration_refit.py on a finished isc-run of the mini dataset: every row scored, the calibration
as fitted reproducing the run's own verified predictions."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isc.core.tables import read_predictions
from isc.extract.extraction import ExtractOptions
from isc.pipeline.run import Pipeline, RunConfig
from isc.verify.local_features import VerifyOptions
from isc.verify.verification import evidence_path, read_evidence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_calibration_refit import EXTRA_FEATURES, MIRROR_BELOW, mirrored_where_few, refit_scores  # noqa: E402


@pytest.mark.slow  # one isc-run (about 20 s of CPU), then the script as a command
def test_refit_reproduces_the_run_and_scores_every_row(mini_dataset, tmp_path):
    config = RunConfig(work=tmp_path, data=mini_dataset, model="efficientnet_lite0", image_size=64, pca_dim=16,
                       phases=[1], quiet=True, extraction=ExtractOptions(batch_size=8, workers=0),
                       verify=VerifyOptions(k=3, workers=0))
    Pipeline(config).run()
    verified = tmp_path / "predictions_phase1_verified.csv"
    copies = read_evidence(evidence_path(tmp_path / "calibration" / "copies_verified.csv"))
    refitted = refit_scores(copies, read_evidence(evidence_path(verified)))
    written = read_predictions(verified).set_index(["query_id", "reference_id"])["score"]
    mine = refitted.set_index(["query_id", "reference_id"])["score"]
    np.testing.assert_allclose(mine.loc[written.index], written, rtol=1e-5, atol=1e-5)  # as isc-run fitted it

    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_calibration_refit.py"), str(tmp_path),
                           "--data", str(mini_dataset), "--gt", str(mini_dataset / "ground_truth.csv")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert names == ["as fitted", *(f"+ {name}" for name in EXTRA_FEATURES), "query mirrored",
                     *(f"query mirrored where its best pair has < {below} inliers" for below in MIRROR_BELOW)]
    assert rows[0].endswith("+0.000 [+0.000, +0.000] |")
    assert all(0 < float(row.split(" | ")[1]) <= 1 for row in rows)  # a µAP each


def test_mirrored_matches_taken_only_for_queries_that_match_nothing_as_they_are():
    import pandas as pd

    own = pd.DataFrame({"query_id": ["Q1", "Q1", "Q2", "Q2"], "reference_id": ["R1", "R2", "R1", "R2"],
                        "verified": True, "matches": [30, 9, 9, 5], "inliers": [12, 3, 7, 0],
                        "inlier_ratio": ["0.4", "0.3", "0.78", "0"], "reference_coverage": [0.5, 0.1, 0.2, 0.0]})
    mirrored = own.assign(matches=[40.0, 20.0, 20.0, 5.0], inliers=[20.0, 15.0, 15.0, 0.0],
                          inlier_ratio=[0.5, 0.75, 0.75, 0.0], reference_coverage=[0.6, 0.7, 0.7, 0.0])
    adapted = mirrored_where_few(own, mirrored, below=8)
    assert adapted["inliers"].tolist() == [12, 3, 15, 0]  # Q1 matches R1 as it is: none of its mirrors taken
    assert adapted["reference_coverage"].tolist() == [0.5, 0.1, 0.7, 0.0]
    assert adapted["inlier_ratio"].tolist() == [0.4, 0.3, 0.75, 0.0]  # read as text by read_evidence: numbers
    assert own["inliers"].tolist() == [12, 3, 7, 0]  # the run's evidence untouched
