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
from bench_calibration_refit import EXTRA_FEATURES, refit_scores  # noqa: E402


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
    assert names == ["as fitted", *(f"+ {name}" for name in EXTRA_FEATURES), "query mirrored"]
    assert rows[0].endswith("+0.000 [+0.000, +0.000] |")
    assert all(0 < float(row.split(" | ")[1]) <= 1 for row in rows)  # a µAP each
