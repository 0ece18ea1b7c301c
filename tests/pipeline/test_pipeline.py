"""isc-run: a full phase-1 and phase-2 round trip on the mini dataset over a local S3 server, a run
killed mid-way and resumed, the demo, and the command line's errors."""

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import one_line_error, running, wait_until

from isc.cli import extract as cli_extract
from isc.cli import run as cli_run
from isc.cli import search as cli_search
from isc.cli.options import score_norm
from isc.cli.run import main
from isc.core.descriptors import provenance_path, read_descriptor_track, read_descriptors, write_descriptors
from isc.core.files import InputError
from isc.core.partial_log import PartialLog
from isc.core.tables import read_ground_truth, read_predictions
from isc.download.s3 import DownloadOptions
from isc.evaluate.metrics import evaluate
from isc.extract.extraction import ExtractOptions, extract
from isc.extract.image_files import list_split_images
from isc.models import create_model
from isc.pipeline.demo import run_demo
from isc.pipeline.run import Pipeline, RunConfig
from isc.search.matching import SearchOptions
from isc.search.normalisation import ScoreNorm
from isc.submit.manifest import read_manifest
from isc.submit.matching import check_matching_csv
from isc.verify.calibrate import Calibration
from isc.verify.local_features import VerifyOptions
from isc.verify.verification import evidence_path, read_evidence

# small and fast: 64-pixel inputs, 16-dimensional whitening (the mini dataset has 40 training images)
FAST = {"image_size": 64, "pca_dim": 16, "extraction": ExtractOptions(batch_size=8, workers=0), "quiet": True}
# where a test looks at neither: no query crops (6 views a query, 40% of a run) and no verification (its
# calibration on edited copies, 20%); the round trip covers both
PLAIN = {"query_crops": False, "verify": None}
RUN = [sys.executable, "-m", "isc.cli.run"]
# the model named: without --model isc-run takes sscd where it is installed
FAST_ARGS = ["--model", "efficientnet_lite0", "--image-size", "64", "--pca-dim", "16", "--batch-size", "8",
             "--workers", "0"]


def ground_truth_files(mini_dataset: Path) -> list[Path]:
    return [mini_dataset / "ground_truth.csv", mini_dataset / "ground_truth_phase2.csv"]


@pytest.fixture(scope="module")
def completed(s3_endpoint, mini_dataset, tmp_path_factory):
    """A finished run: (work folder, submissions folder, its summary)."""
    work = tmp_path_factory.mktemp("run")
    config = RunConfig(work=work, download=DownloadOptions(endpoint_url=s3_endpoint), ground_truth=ground_truth_files(mini_dataset),
                       submissions=work / "submissions", **FAST)
    return work, work / "submissions", Pipeline(config).run()


@pytest.mark.slow
def test_round_trip_writes_valid_submissions_of_both_phases(completed, mini_dataset):
    work, submissions, summary = completed
    for phase in (1, 2):
        matching = submissions / f"phase{phase}_matching.csv"
        df, violations = check_matching_csv(matching, phase)
        assert violations == [] and len(df) > 0
        assert set(df["query_id"].str[1:].astype(int) // 50_000) == {phase - 1}
        query_ids, query, reference_ids, reference = read_descriptor_track(submissions / f"phase{phase}_descriptors.h5")
        metadata = pd.read_csv(mini_dataset / "query_metadata.csv")["image_id"]
        assert query_ids == sorted(q for q in metadata if (int(q[1:]) >= 50_000) == (phase == 2))
        assert reference_ids == sorted(pd.read_csv(mini_dataset / "reference_metadata.csv")["image_id"])
        assert query.shape[1] == reference.shape[1] == 16
        for submission in (matching, submissions / f"phase{phase}_descriptors.h5"):
            manifest = read_manifest(submission)
            # the competition's checksum, computed independently of the toolkit's io.file_digest
            assert manifest["md5"] == hashlib.md5(submission.read_bytes()).hexdigest() and manifest["phase"] == phase
            assert "muap" in manifest["local_evaluation"]
        # the search is isc-search's, with its record beside the predictions
        searched = json.loads(provenance_path(work / f"predictions_phase{phase}.csv").read_text())
        assert searched["command"] == "isc-search" and searched["options"]["phase"] == phase
    # the matching manifest records the descriptors (model, whitening) the predictions came from
    sources = read_manifest(submissions / "phase1_matching.csv")["provenance"]
    # (the matching track searches the descriptors as extracted; the descriptor track the whitened ones)
    assert {Path(p).name for p in sources} == {"query_phase1_crops.h5", "reference.h5", "training.h5"}
    assert all(attrs["model"] == "efficientnet_lite0" and "pca" not in attrs for attrs in sources.values())
    # phase 2 reuses the phase-1 references as they are
    phase2 = read_manifest(submissions / "phase2_descriptors.h5")
    assert phase2["phase1_reference"]["md5"] == hashlib.md5((submissions / "phase1_descriptors.h5").read_bytes()).hexdigest()
    assert read_descriptor_track(submissions / "phase1_descriptors.h5")[3].tobytes() == \
        read_descriptor_track(submissions / "phase2_descriptors.h5")[3].tobytes()
    assert json.loads((work / "run_summary.json").read_text())["metrics"] == summary.metrics


@pytest.mark.slow
def test_matching_track_is_verified_with_a_calibration_fitted_on_copies(completed):
    work, submissions, summary = completed
    steps = {(s.stage, s.target): s for s in summary.steps}
    assert ("calibrate", "copies") in steps and not steps[("calibrate", "copies")].skipped
    calibration = Calibration.load(work / "calibration.json")
    assert calibration.pairs > calibration.positives > 0 and "copies of training images" in calibration.fitted_on
    assert calibration.conditions["descriptors"]["model"] == "efficientnet_lite0"
    for phase in (1, 2):
        assert ("verify", f"phase {phase}") in steps
        verified = work / f"predictions_phase{phase}_verified.csv"
        # the submission is the verified predictions, scored by the calibration
        submitted = read_predictions(submissions / f"phase{phase}_matching.csv")
        assert submitted.equals(read_predictions(verified))
        evidence = read_evidence(evidence_path(verified))
        assert evidence["verified"].any() and (evidence["rank"][evidence["verified"]] < VerifyOptions().k).all()
        written = pd.read_csv(evidence_path(verified), usecols=["new_score"])["new_score"]
        np.testing.assert_allclose(calibration.scores(evidence), written, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_reported_muap_is_the_scorers_on_the_written_files(completed, mini_dataset):
    work, submissions, summary = completed
    for phase, gt_file in enumerate(ground_truth_files(mini_dataset), start=1):
        gt = read_ground_truth(gt_file)
        expected = evaluate(read_predictions(submissions / f"phase{phase}_matching.csv"), gt).muap
        assert summary.metrics[f"phase {phase} matching"]["muap"] == pytest.approx(expected, abs=1e-12)
        assert 0 < expected <= 1
    table = summary.table()
    assert f"µAP phase 1 matching       {summary.metrics['phase 1 matching']['muap']:.4f}" in table
    assert str(submissions / "phase2_descriptors.h5") in table


@pytest.mark.slow
def test_second_run_skips_every_step_and_rewrites_nothing(completed, s3_endpoint, mini_dataset):
    work, submissions, first = completed
    # every file a step writes (data/ holds the bucket's metadata, fetched again on each run)
    outputs = sorted(p for p in work.rglob("*") if p.suffix in (".h5", ".csv", ".npz") and "data" not in p.parts)
    before = {p: p.stat().st_mtime_ns for p in outputs}
    config = RunConfig(work=work, download=DownloadOptions(endpoint_url=s3_endpoint), ground_truth=ground_truth_files(mini_dataset),
                       submissions=submissions, **FAST)
    again = Pipeline(config).run()
    not_skipped = [(s.stage, s.target) for s in again.steps if not s.skipped and s.stage != "eval"]
    assert not_skipped == []
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    assert again.metrics == first.metrics


@pytest.mark.slow
def test_new_phase2_queries_extract_only_those(completed, s3_endpoint, mini_dataset, tmp_path):
    """Phase 2 after phase 1: the phase-1 and reference descriptors are reused, only new queries extracted."""
    work, _, _ = completed
    config = RunConfig(work=work, download=DownloadOptions(endpoint_url=s3_endpoint), ground_truth=ground_truth_files(mini_dataset),
                       submissions=tmp_path / "submissions", phases=[1], **FAST)
    Pipeline(config).run()
    (work / "descriptors" / "query_phase2.h5").unlink()
    config.phases = [1, 2]
    steps = {(s.stage, s.target): s for s in Pipeline(config).run().steps}
    assert not steps[("extract", "query phase 2")].skipped
    assert all(steps[("extract", t)].skipped for t in ("query phase 1", "reference", "training"))
    assert (tmp_path / "submissions" / "phase2_descriptors.h5").is_file()


@pytest.mark.slow
def test_limit_runs_a_trial_on_the_first_images(s3_endpoint, mini_dataset, tmp_path):
    config = RunConfig(work=tmp_path / "work", download=DownloadOptions(endpoint_url=s3_endpoint), limit=10,
                       ground_truth=ground_truth_files(mini_dataset), submissions=tmp_path / "submissions",
                       **{**FAST, "pca_dim": 8}, **PLAIN)
    steps = {(s.stage, s.target): s for s in Pipeline(config).run().steps}
    assert all(steps[("download", split)].images == 10 for split in ("query", "reference", "training"))
    assert sorted(p.name for p in (tmp_path / "work" / "data" / "query_images").glob("*.jpg")) == \
        [f"Q{i:05d}.jpg" for i in range(10)]
    assert steps[("submit", "phase 1 matching")].result == "valid"
    assert steps[("submit", "phase 1 descriptors")].result.startswith("not made: an image limit")
    assert ("search", "phase 2") in steps and steps[("search", "phase 2")].images == 0
    evaluation = read_manifest(tmp_path / "submissions" / "phase1_matching.csv")["local_evaluation"]
    assert evaluation["ground_truth_queries"] == 10  # the trial's queries only


@pytest.mark.slow
def test_training_limit_uses_the_first_training_images_only(s3_endpoint, mini_dataset, tmp_path):
    config = RunConfig(work=tmp_path / "work", download=DownloadOptions(endpoint_url=s3_endpoint), training_limit=20,
                       submissions=tmp_path / "submissions", **{**FAST, "pca_dim": 8}, verify=None)
    steps = {(s.stage, s.target): s for s in Pipeline(config).run().steps}
    assert steps[("download", "training")].images == 20 and steps[("download", "reference")].images == 40
    assert read_descriptors(tmp_path / "work" / "descriptors" / "training.h5")[0] == [f"T{i:06d}" for i in range(20)]
    assert steps[("search", "phase 1")].result.endswith("normalised with 20 training images, 6 views per query")
    assert steps[("submit", "phase 2 descriptors")].result == "valid, phase-1 references reused"


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(s3_endpoint, mini_dataset, tmp_path):
    work = tmp_path / "work"
    # 128-pixel inputs one at a time: slow enough to be killed in the middle of the reference images (after 3
    # of 40); neither query crops nor verification, which the round trip covers, before or after the kill
    command = [*RUN, str(work), "--endpoint-url", s3_endpoint, *FAST_ARGS, "--image-size", "128", "--batch-size", "1",
               "--no-query-crops", "--no-verify", "--quiet", "--submissions-dir", str(tmp_path / "submissions"),
               *[arg for gt in ground_truth_files(mini_dataset) for arg in ("--gt", str(gt))]]
    partial = work / "descriptors" / "reference.h5.rank0-of-1.partial"
    with running(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as first:
        # the log is append-only and checksummed: it can be read while written; kill after a few batches
        wait_until(lambda: partial.exists() and len(PartialLog.read(partial).ids) >= 3, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert not (work / "descriptors" / "reference.h5").exists()

    second = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    steps = {(s["stage"], s["target"]): s for s in json.loads(second.stdout)["steps"]}
    assert all(steps[("download", split)]["skipped"] for split in ("query", "reference", "training"))
    assert steps[("extract", "query phase 1")]["skipped"] and steps[("extract", "query phase 2")]["skipped"]
    assert "resumed from an interrupted run" in steps[("extract", "reference")]["result"]
    assert not partial.exists()
    # the same descriptors as one uninterrupted extraction
    fresh = tmp_path / "fresh.h5"
    extract(list_split_images(mini_dataset, "reference"), fresh, create_model(image_size=128), batch_size=8,
            workers=0, quiet=True, scales=RunConfig.extraction.scales)  # isc-run's two sizes
    ids, resumed, _ = read_descriptors(work / "descriptors" / "reference.h5")
    fresh_ids, fresh_descriptors, _ = read_descriptors(fresh)
    assert ids == fresh_ids
    np.testing.assert_allclose(resumed, fresh_descriptors, atol=1e-4)
    assert (tmp_path / "submissions" / "phase2_descriptors.h5").is_file()


@pytest.mark.slow
def test_demo_generates_serves_and_submits(tmp_path):
    config = RunConfig(work=tmp_path / "demo", submissions=tmp_path / "demo" / "submissions", **FAST)
    sizes = {"references": 30, "queries": 12, "phase2_queries": 6, "training": 30}
    summary = run_demo(config, seed=3, **sizes)
    assert config.download.endpoint_url is None and config.ground_truth == ()  # the demo ran a copy
    stages = [s.stage for s in summary.steps]
    assert stages[:2] == ["synth", "serve"] and stages.count("download") == 3
    assert set(summary.metrics) == {f"phase {p} {t}" for p in (1, 2) for t in ("matching", "descriptors")}
    assert sorted(p.name for p in (tmp_path / "demo" / "submissions").glob("phase*") if not p.name.endswith(".json")) == [
        "phase1_descriptors.h5", "phase1_matching.csv", "phase2_descriptors.h5", "phase2_matching.csv"]
    with h5py.File(tmp_path / "demo" / "descriptors" / "reference.h5") as f:
        assert len(f["ids"]) == 30
    again = run_demo(RunConfig(work=tmp_path / "demo", submissions=tmp_path / "demo" / "submissions", **FAST),
                     seed=3, **sizes)
    assert again.steps[0].skipped and again.metrics == summary.metrics
    # a second run starts no server: every image is downloaded and verified already
    serve = again.steps[1]
    assert serve.stage == "serve" and serve.skipped and serve.result.startswith("not needed")
    assert all(step.skipped for step in again.steps if step.stage in ("download", "extract"))


@pytest.mark.parametrize(("args", "message"), [
    (["--demo", "--data", "{tmp}"], "leave out --data"),
    (["--data", "{tmp}/nowhere"], "no such folder"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, mini_dataset, capsys):
    args = [a.format(tmp=tmp_path, mini=mini_dataset) for a in args]
    assert main([str(tmp_path / "work"), "--submissions-dir", str(tmp_path / "submissions"), *args]) == 2
    one_line_error(capsys.readouterr().err, "isc-run", message)


NORM_ARGS = ["--norm-beta", "1.5", "--norm-neighbors", "1:3", "--norm-agg", "min", "--normalize-references"]


def test_score_normalisation_options_are_isc_searchs(tmp_path, run_configs):
    run_defaults = cli_run.build_parser().parse_args([str(tmp_path)])
    search_defaults = cli_search.build_parser().parse_args(["-o", "p.csv"])
    assert score_norm(run_defaults) == score_norm(search_defaults) == ScoreNorm()
    configs = run_configs
    assert main([str(tmp_path / "work"), "--model", "efficientnet_lite0", "--quiet", *NORM_ARGS]) == 0
    assert configs[0].search.norm == ScoreNorm(1.5, (1, 3), "min", references=True)


def test_run_describes_at_two_sizes_unless_told(tmp_path, run_configs):
    assert main([str(tmp_path / "work"), "--model", "efficientnet_lite0", "--quiet"]) == 0
    assert main([str(tmp_path / "work"), "--model", "efficientnet_lite0", "--quiet", "--scales", "1"]) == 0
    assert [config.extraction.scales for config in run_configs] == [(1.0, 0.5), (1.0,)]
    assert cli_extract.build_parser().parse_args(["--split", "query", "-o", "q.h5"]).scales == [1.0]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--norm-beta", "nan", "argument --norm-beta: must be a finite number, got 'nan'"),
    ("--norm-agg", "max", "argument --norm-agg: invalid choice: 'max'"),
    ("--norm-neighbors", "3:1", "error: --norm-neighbors must be a range A:B with 1 <= A <= B (e.g. 1:3, or 10:10), got '3:1'"),
])
def test_score_normalisation_options_refused_as_isc_search_does(option, value, message, tmp_path, capsys):
    commands = {"isc-run": (main, [str(tmp_path / "work"), "--model", "efficientnet_lite0"]),
                "isc-search": (cli_search.main, ["--query", str(tmp_path / "q.h5"), "--reference",
                                                 str(tmp_path / "r.h5"), "-o", str(tmp_path / "p.csv")])}
    for name, (command, args) in commands.items():
        try:
            code = command([*args, option, value, "--quiet"])
        except SystemExit as e:  # argparse's own refusal
            code = e.code
        stderr = capsys.readouterr().err
        assert code == 2, (name, stderr)
        one_line_error(stderr, name, message)
    assert not (tmp_path / "work").exists() and not (tmp_path / "p.csv").exists()


def test_local_data_without_training_images_says_what_to_do(mini_dataset, tmp_path):
    data = tmp_path / "data"
    for split in ("query", "reference"):
        (data / f"{split}_images").mkdir(parents=True)
        for image in sorted((mini_dataset / f"{split}_images").glob("*.jpg"))[:6]:
            (data / f"{split}_images" / image.name).symlink_to(image)
    result = subprocess.run([*RUN, str(tmp_path / "work"), "--data", str(data), *FAST_ARGS, "--quiet"],
                            capture_output=True, text=True, timeout=300)
    one_line_error(result, "isc-run", "training_images: no such folder")


def test_help_explains_every_option():
    result = subprocess.run([*RUN, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # argparse lists an option even with no help: each must have its own text, and be printed
    actions = [a for a in cli_run.build_parser()._actions if a.dest != "help"]
    assert [a.dest for a in actions if not (a.help or "").strip()] == []
    for action in actions:
        assert (action.option_strings[-1] if action.option_strings else action.metavar or action.dest) in result.stdout
    assert {"--demo", "--data", "--timeout", "--attempts", "--gt", "--pca-dim"} <= {
        option for a in actions for option in a.option_strings}


def _datasets(path: Path) -> dict[str, bytes]:
    """Every dataset of an HDF5 file as bytes: what two files must share to be the same descriptors."""
    with h5py.File(path) as f:
        return {name: f[name][()].tobytes() for name in f}


@pytest.mark.slow
def test_reference_crops_and_plain_files_from_the_crops_full_views(mini_dataset, tmp_path):
    work = tmp_path / "work"
    # no verification (its calibration is a fifth of a run): what is checked is which files the search read
    result = subprocess.run([*RUN, str(work), "--data", str(mini_dataset), *FAST_ARGS, "--reference-crops", "--k", "3",
                             "--no-verify", "--phases", "1", "--gt", str(mini_dataset / "ground_truth.csv"), "--json", "--quiet",
                             "--submissions-dir", str(tmp_path / "submissions")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    steps = {(s["stage"], s["target"]): s for s in json.loads(result.stdout)["steps"]}
    descriptors = work / "descriptors"
    # the plain query and reference files are the crops files' full views, not a second extraction ...
    for target, name in (("query phase 1", "query_phase1"), ("reference", "reference")):
        assert steps[("extract", target)]["result"].endswith(f"full views of {name}_crops.h5, not extracted again")
    assert steps[("search", "phase 1")]["result"].endswith("6 views per query, 6 views per reference")
    # ... and exactly what an extraction without crops writes, bit for bit
    model = create_model("efficientnet_lite0", image_size=64)
    for split, name in (("query", "query_phase1"), ("reference", "reference")):
        images = {i: p for i, p in list_split_images(mini_dataset, split).items() if split != "query" or i < "Q50000"}
        extract(images, tmp_path / f"{name}.h5", model, batch_size=8, workers=0, quiet=True,
                scales=RunConfig.extraction.scales)
        assert _datasets(descriptors / f"{name}.h5") == _datasets(tmp_path / f"{name}.h5")
        assert read_descriptors(descriptors / f"{name}.h5")[2].get("views_per_id") is None
    # the matching track searched the reference views; the descriptor track has one row per reference
    sources = read_manifest(tmp_path / "submissions" / "phase1_matching.csv")["provenance"]
    assert {Path(p).name for p in sources} == {"query_phase1_crops.h5", "reference_crops.h5", "training.h5"}
    predictions = read_predictions(tmp_path / "submissions" / "phase1_matching.csv")
    assert (predictions.groupby("query_id")["reference_id"].nunique() == 3).all()
    reference_ids = read_descriptor_track(tmp_path / "submissions" / "phase1_descriptors.h5")[2]
    assert reference_ids == sorted(pd.read_csv(mini_dataset / "reference_metadata.csv")["image_id"])


def _descriptor_file(path: Path, ids: list[str], model: str) -> Path:
    descriptors = np.random.default_rng(len(ids)).standard_normal((len(ids), 8)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    write_descriptors(path, ids, descriptors, {"model": model, "model_fingerprint": model * 4})
    return path


def test_search_step_is_isc_searchs_with_its_provenance_and_same_model_check(tmp_path):
    (tmp_path / "work").mkdir()
    queries, references = [f"Q{i:05d}" for i in range(5)], [f"R{i:06d}" for i in range(20)]
    files = {"query_phase1": _descriptor_file(tmp_path / "q.h5", queries, "a"),
             "reference": _descriptor_file(tmp_path / "r.h5", references, "a")}
    pipeline = Pipeline(RunConfig(work=tmp_path / "work", search=SearchOptions(k=3), quiet=True))
    predictions = pipeline.search(files, 1)
    record = json.loads(provenance_path(predictions).read_text())
    assert record["command"] == "isc-search" and record["options"]["k"] == 3 and record["options"]["phase"] == 1
    assert {split: Path(i["path"]).name for split, i in record["inputs"].items()} == {"query": "q.h5",
                                                                                     "reference": "r.h5"}
    assert record["predictions"] == {"rows": 15, "queries": 5}
    files["reference"] = _descriptor_file(tmp_path / "other.h5", references, "b")
    with pytest.raises(InputError, match="not made by the same model"):
        pipeline.search(files, 1)
