"""isc-run's descriptor-track options: the submitted vectors are the query's whitened views pooled and the
negatives subtracted, read back from the files written; remade only when a setting or input changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, one_line_error

from isc.core.descriptors import read_descriptor_track, read_descriptors
from isc.extract.extraction import ExtractOptions
from isc.pipeline.run import Pipeline, RunConfig
from isc.search.descriptor_track import DescriptorTrack, track_descriptors
from isc.search.negatives import NegativeEmbeddings, subtract_negative_embeddings
from isc.search.pooling import ViewPooling, pool_views

pytestmark = pytest.mark.filterwarnings("ignore:.*not L2-normalised")  # PDQ hashes are ±1 vectors
TRACK = DescriptorTrack(ViewPooling("mean"), NegativeEmbeddings(0.35, 5))


def config(work: Path, data: Path, track: DescriptorTrack) -> RunConfig:
    # PDQ (numpy, no weights), no verification: both tracks of phase 1 in seconds
    return RunConfig(work=work, data=data, model="pdq", pca_dim=16, phases=[1], verify=None, quiet=True,
                     extraction=ExtractOptions(batch_size=8, workers=0), submissions=work / "submissions",
                     descriptor_track=track)


@pytest.fixture(scope="module")
def run(mini_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("track") / "work"
    summary = Pipeline(config(work, mini_dataset, TRACK)).run()
    return work, {(s.stage, s.target): s.result for s in summary.steps}


def test_submitted_vectors_are_pooled_views_less_negatives(run):
    work, steps = run
    assert steps[("describe", "phase 1 descriptor track")] == json.dumps(TRACK.recorded())
    query_ids, query, reference_ids, reference = read_descriptor_track(work / "submissions" / "phase1_descriptors.h5")
    views_ids, views, _ = read_descriptors(work / "descriptors" / "query_phase1_crops_pca16.h5", views=True)
    _, training, _ = read_descriptors(work / "descriptors" / "training_pca16.h5")
    pooled_ids, pooled = pool_views(views_ids, views, ViewPooling("mean"))
    expected = subtract_negative_embeddings(pooled, training, 0.35, 5)
    row = {qid: i for i, qid in enumerate(pooled_ids)}
    np.testing.assert_allclose(query, expected[[row[q] for q in query_ids]], atol=1e-6)
    ids, plain, _ = read_descriptors(work / "descriptors" / "reference_pca16.h5")
    assert reference_ids == sorted(ids)
    np.testing.assert_allclose(reference, track_descriptors(ids, plain, training, TRACK)[1][np.argsort(ids)],
                               atol=1e-6)
    assert query.shape[1] == 16 and query.dtype == np.float32


def test_same_settings_up_to_date_and_a_change_remade(run, mini_dataset):
    work, _ = run
    again = Pipeline(config(work, mini_dataset, TRACK)).run()
    steps = {(s.stage, s.target): s.result for s in again.steps}
    assert steps[("describe", "phase 1 descriptor track")] == "up to date"
    assert steps[("submit", "phase 1 descriptors")] == "up to date"
    changed = Pipeline(config(work, mini_dataset, DescriptorTrack(ViewPooling("gem", 3.0)))).run()
    steps = {(s.stage, s.target): s.result for s in changed.steps}
    assert steps[("describe", "phase 1 descriptor track")].startswith("settings changed (descriptor track ")
    assert steps[("submit", "phase 1 descriptors")].startswith("inputs changed (descriptors/query_phase1_track.h5")


def test_cli_pooling_without_query_crops_is_refused(tmp_path, mini_dataset):
    result = cli("run", tmp_path / "work", "--data", mini_dataset, "--model", "pdq", "--no-query-crops",
                 "--descriptor-pooling", "mean", "--quiet")
    one_line_error(result, "isc-run", "pools each query's views: the queries need their crops")
    assert not (tmp_path / "work" / "descriptors").exists()
    result = cli("run", tmp_path / "work", "--data", mini_dataset, "--descriptor-gem-p", "0.5")
    one_line_error(result, "isc-run", "--descriptor-gem-p")
