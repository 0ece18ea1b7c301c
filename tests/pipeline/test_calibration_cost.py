"""The calibration's cost (isc-run's copies verified less deep, described without crops) and the grid of query
views: what the run writes and re-uses, and the boxes."""

import json

import numpy as np
import pytest

from isc.core.files import SettingError
from isc.extract.decode import grid_boxes
from isc.extract.extraction import ExtractOptions
from isc.pipeline.calibration import CopiesCalibration
from isc.pipeline.run import Pipeline, RunConfig
from isc.search.matching import SearchOptions
from isc.verify.calibrate import Calibration
from isc.verify.local_features import VerifyOptions
from isc.verify.verification import EVIDENCE_VERSION, evidence_path, read_evidence

FAST = {"model": "efficientnet_lite0", "image_size": 64, "pca_dim": 16, "phases": [1], "quiet": True,
        "extraction": ExtractOptions(batch_size=8, workers=0)}


def test_grid_boxes_tile_the_image_evenly_and_overlap_when_asked():
    assert grid_boxes(100, 60, 0.5, 2) == [(0, 0, 50, 30), (50, 0, 100, 30), (0, 30, 50, 60), (50, 30, 100, 60)]
    three = grid_boxes(100, 60, 0.5, 3)
    assert len(three) == 9 and three[4] == (25, 15, 75, 45) and {three[i] for i in (0, 2, 6, 8)} == set(
        grid_boxes(100, 60, 0.5, 2))
    assert grid_boxes(90, 90, 1 / 3, 1) == [(30, 30, 60, 60)]  # one window: centred
    with pytest.raises(ValueError, match="0 < fraction <= 1"):
        grid_boxes(10, 10, 0, 2)


@pytest.mark.slow  # two isc-run runs (about 40 s of CPU): the only way to see the calibration step redone
def test_copies_verified_less_deep_and_without_crops_and_refitted_when_that_changes(mini_dataset, tmp_path):
    config = RunConfig(work=tmp_path, data=mini_dataset, verify=VerifyOptions(k=3, workers=0), calibration_k=1,
                       **FAST)  # the copies without crops: the default
    steps = {(s.stage, s.target): s for s in Pipeline(config).run().steps}
    assert not steps["calibrate", "copies"].skipped
    folder = tmp_path / "calibration"
    assert (folder / "copies.h5").is_file() and not (folder / "copies_crops.h5").exists()  # the queries have crops
    copies = read_evidence(evidence_path(folder / "copies_verified.csv"))
    assert set(copies.loc[copies["verified"], "rank"]) == {0} and (copies["rank"] > 0).any()
    # the calibration holds for the queries' k, which verify 3 each
    assert Calibration.load(tmp_path / "calibration.json").conditions["verification"]["k"] == 3
    queries = read_evidence(evidence_path(tmp_path / "predictions_phase1_verified.csv"))
    assert set(queries.loc[queries["verified"], "rank"]) == {0, 1, 2}

    # a calibration recorded as fitted on evidence of an older version (before reference_coverage) is fitted again,
    # and the predictions it re-scored are verified again
    assert Calibration.load(tmp_path / "calibration.json").features[-3:] == ("reference_coverage", "query_bias",
                                                                              "score_margin")
    record = tmp_path / "calibration.json.made-from.json"
    made_from = json.loads(record.read_text())
    assert made_from["settings"]["evidence_version"] == EVIDENCE_VERSION > 1
    record.write_text(json.dumps({**made_from, "settings": {**made_from["settings"], "evidence_version": 1}}))
    steps = {(s.stage, s.target): s for s in Pipeline(config).run().steps}
    assert steps["calibrate", "copies"].result.startswith("settings changed")
    assert not steps["verify", "phase 1"].skipped and steps["extract", "query phase 1"].skipped
    # and one recorded as fitted before the score margin and the query bias were features
    made_from = json.loads(record.read_text())
    del made_from["settings"]["derived features"], made_from["settings"]["query bias"]
    record.write_text(json.dumps(made_from))
    steps = {(s.stage, s.target): s for s in Pipeline(config).run().steps}
    assert steps["calibrate", "copies"].result.startswith("settings changed") and not steps["verify", "phase 1"].skipped
    assert Calibration.load(tmp_path / "calibration.json").features[-3:] == ("reference_coverage", "query_bias",
                                                                              "score_margin")
    for evidence in (copies, read_evidence(evidence_path(tmp_path / "predictions_phase1_verified.csv"))):
        assert np.isfinite(evidence["query_bias"]).all() and evidence["query_bias"].nunique() > 1

    deeper = RunConfig(work=tmp_path, data=mini_dataset, verify=VerifyOptions(k=3, workers=0), calibration_k=2,
                       **FAST)
    steps = {(s.stage, s.target): s for s in Pipeline(deeper).run().steps}
    assert not steps["calibrate", "copies"].skipped and steps["extract", "query phase 1"].skipped
    copies = read_evidence(evidence_path(folder / "copies_verified.csv"))
    assert set(copies.loc[copies["verified"], "rank"]) == {0, 1}
    with pytest.raises(SettingError, match="calibration_k must be at least 1"):
        Pipeline(RunConfig(work=tmp_path, calibration_k=0))


@pytest.mark.parametrize("copies_crops, grid", [(False, 0), (True, 2)])
def test_the_copies_get_the_queries_grid_only_with_their_crops(tmp_path, copies_crops, grid):
    setup = CopiesCalibration(work=tmp_path, model=None, verify=VerifyOptions(), search=SearchOptions(),
                              extraction=ExtractOptions(grid=2), whitened=0, query_crops=True, reference_crops=False,
                              copies=100, copies_k=None, copies_crops=copies_crops)
    assert (setup.query_grid, setup.copies_grid) == (2, grid)
