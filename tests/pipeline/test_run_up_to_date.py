"""A step of isc-run is up to date only when it was made from the same inputs with the same settings: the record
of what made a file (isc.core.made_from), and for each isc-run option that changes a file's content a run, the
option changed, a second run, compared byte for byte with a fresh folder's run of the second settings; a run
killed with SIGKILL and resumed, compared with an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import pytest
from conftest import running, wait_until

from isc.core.made_from import MISSING, RECORD_SUFFIX, MadeFrom, record_path
from isc.extract.extraction import ExtractOptions
from isc.pipeline.run import Pipeline, RunConfig, RunSummary
from isc.search.matching import SearchOptions
from isc.search.normalisation import ScoreNorm
from isc.verify.local_features import VerifyOptions

# PDQ (numpy, no weights) on the mini dataset: a whole run of both phases, verified and calibrated, in seconds
BASE = {"model": "pdq", "pca_dim": 16, "extraction": ExtractOptions(batch_size=8, workers=0), "quiet": True,
        "verify": VerifyOptions(k=3, workers=0), "calibration_copies": 12, "search": SearchOptions(k=5)}
pytestmark = pytest.mark.filterwarnings("ignore:.*not L2-normalised")  # PDQ hashes are ±1 vectors
CLI_BASE = ["--model", "pdq", "--pca-dim", "16", "--batch-size", "8", "--workers", "0", "--verify-k", "3",
            "--calibration-copies", "12", "--k", "5", "--quiet", "--json"]


# ------------------------------------------------------------------------------------------ the record


def test_record_says_why_a_file_is_made_again(tmp_path):
    source, output = tmp_path / "in.h5", tmp_path / "out.csv"
    source.write_bytes(b"descriptors")
    wanted = MadeFrom.of({"reference crops": False, "search": {"k": 5}}, [source], tmp_path)
    assert wanted.why_redo(output) == MISSING
    output.write_text("made\n")
    assert wanted.why_redo(output) == "no record of what made it"  # a run killed before its record
    wanted.record(output)
    assert wanted.why_redo(output) is None
    assert wanted.why_redo(output, tmp_path / "out.csv.manifest.json") == f"{MISSING} (out.csv.manifest.json)"
    assert json.loads(record_path(output).read_text())["inputs"] == {"in.h5": {
        "size": 11, "mtime_ns": source.stat().st_mtime_ns}}
    other = MadeFrom.of({"reference crops": True, "search": {"k": 3}}, [source], tmp_path)
    assert other.why_redo(output) == "settings changed (reference crops on, search k 3)"
    named_where_on = MadeFrom.of({"mirror": True, "features": "rootsift"}, [source], tmp_path)
    named_where_on.record(output)
    assert wanted.why_redo(output) == ("settings changed (features default, mirror off, reference crops off, "
                                       "search k 5)")
    wanted.record(output)
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 1))
    assert MadeFrom.of(wanted.settings, [source], tmp_path).why_redo(output) == "input changed (in.h5)"
    assert MadeFrom.of(wanted.settings, [source, tmp_path / "x.h5"], tmp_path).why_redo(output) == \
        "inputs changed (in.h5, x.h5)"
    output.write_text("replaced by hand\n")
    assert wanted.why_redo(output) == "changed since it was made"
    record_path(output).write_text('{"settings": ')  # cut short
    assert wanted.why_redo(output) == "no record of what made it"


def test_record_names_inputs_relative_to_the_root_so_a_moved_folder_stays_up_to_date(tmp_path):
    work = tmp_path / "work"
    (work / "descriptors").mkdir(parents=True)
    (work / "descriptors" / "reference.h5").write_bytes(b"r")
    (work / "predictions.csv").write_text("p\n")
    MadeFrom.of({"k": 5}, [work / "descriptors" / "reference.h5"], work).record(work / "predictions.csv")
    moved = tmp_path / "moved"
    work.rename(moved)  # a rename keeps the times, as cp -a does
    assert MadeFrom.of({"k": 5}, [moved / "descriptors" / "reference.h5"], moved).why_redo(
        moved / "predictions.csv") is None


# ------------------------------------------------------------------------------------------ isc-run


def _h5_content(path: Path, stamps: bool) -> tuple[dict[str, bytes], dict[str, str]]:
    """An HDF5 file's datasets (as bytes) and attributes; without ``stamps``, less the images' change times."""
    with h5py.File(path) as f:
        return ({name: f[name][()].tobytes() for name in f if stamps or name != "file_stamps"},
                {key: str(value) for key, value in f.attrs.items()})


def _unsized(provenance: dict) -> dict:
    """A search's provenance less the sizes of its input files (the HDF5 layouts may differ, as said above)."""
    inputs = provenance.get("inputs", {})  # a verification's provenance quotes no descriptor file
    return {**provenance, "inputs": {what: {k: v for k, v in described.items() if k != "bytes"}
                                     for what, described in inputs.items()}}


def _same_outputs(changed: Path, fresh: Path) -> None:
    """Every file of the fresh folder is in the changed one with the same bytes, but for what holds a time: the
    records (input times: their settings and input names compared), the manifests (created_utc), the run
    summary (seconds: its metrics compared); an HDF5 file that differs is compared by its datasets and attributes
    (a plain file written as the crops' full views is laid out otherwise than one extracted), those of the
    calibration's copies less their file stamps (the copies are made by each run: their change times), and the
    search's provenance less the sizes in bytes of the descriptor files it quotes. Files only in the changed folder are outputs of the first settings
    that the second turned off; the verification's feature cache is not compared (a cache: each entry holds
    its image's change time)."""
    compared = 0
    for path in sorted(fresh.rglob("*")):
        if not path.is_file() or "verify-cache" in path.parts:  # a cache of features, its entries stamped
            continue
        name, other = path.relative_to(fresh), changed / path.relative_to(fresh)
        assert other.is_file(), f"{name} not made by the changed run"
        if path.name == "run_summary.json":
            assert json.loads(other.read_text())["metrics"] == json.loads(path.read_text())["metrics"]
        elif path.name.endswith(".manifest.json"):
            drop = {"created_utc", "command"}  # a file made by the first run was made by its command
            assert {k: v for k, v in json.loads(other.read_text()).items() if k not in drop} == \
                {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}, name
        elif path.name.endswith(RECORD_SUFFIX):
            a, b = json.loads(other.read_text()), json.loads(path.read_text())
            assert (a["settings"], sorted(a["inputs"])) == (b["settings"], sorted(b["inputs"])), name
        elif path.name.endswith(".provenance.json"):
            assert _unsized(json.loads(other.read_text())) == _unsized(json.loads(path.read_text())), name
        elif path.suffix == ".h5" and other.read_bytes() != path.read_bytes():
            assert _h5_content(other, stamps=path.parent.name != "calibration") == \
                _h5_content(path, stamps=path.parent.name != "calibration"), name
        else:
            assert other.read_bytes() == path.read_bytes(), f"{name} differs from a fresh run's"
        compared += 1
    assert compared > 20


@pytest.fixture(scope="module")
def rerun(mini_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., RunSummary]:
    """``rerun(after, before, between)``: a run with ``before`` (default: the base settings), ``between()``, then
    one with ``after`` in the same folder, compared with a fresh folder's run of ``after``; returns the second run's summary. Every
    run works at one path (outputs quote their folder), the folders moved aside between runs."""
    root = tmp_path_factory.mktemp("up_to_date")
    work, kept = root / "work", {}
    ground_truth = [mini_dataset / "ground_truth.csv", mini_dataset / "ground_truth_phase2.csv"]

    def config(settings: dict[str, object]) -> RunConfig:
        return RunConfig(work=work, data=mini_dataset, ground_truth=ground_truth, submissions=work / "submissions",
                         **{**BASE, **settings})

    def run(after: dict[str, object], before: dict[str, object] | None = None,
            between: Callable[[], None] | None = None) -> RunSummary:
        key = json.dumps(before or {}, sort_keys=True, default=repr)
        if key not in kept:  # the first settings' run, kept aside and copied (times kept) for each case
            Pipeline(config(before or {})).run()
            kept[key] = work.rename(root / f"before{len(kept)}")
        shutil.copytree(kept[key], work, symlinks=True)
        if between is not None:  # what changes outside the settings (a model's weights)
            between()
        changed = Pipeline(config(after)).run()
        work.rename(root / "changed")
        Pipeline(config(after)).run()
        try:
            _same_outputs(root / "changed", work)
        finally:
            shutil.rmtree(root / "changed")
            shutil.rmtree(work)
        return changed

    return run


def _results(summary: RunSummary) -> dict[tuple[str, str], str]:
    return {(s.stage, s.target): s.result for s in summary.steps}


def test_no_verify_after_a_verified_run_submits_and_scores_the_unverified_predictions(rerun):
    summary = rerun({"verify": None})
    results = _results(summary)
    assert results[("submit", "phase 1 matching")] == "settings changed (verified off): valid"
    assert results[("search", "phase 1")] == "up to date" and ("verify", "phase 1") not in results
    assert "phase 1 matching" in summary.metrics


def test_a_run_that_skips_phase_2_says_its_submissions_are_an_earlier_runs(rerun):
    summary = rerun({"phases": [1]})
    assert [Path(f).name for f in summary.left_over] == ["phase2_matching.csv", "phase2_descriptors.h5"]
    assert all("phase2" not in Path(f).name for f in summary.files)  # not among this run's files
    table = summary.table().splitlines()
    assert f"not this run's (its phase skipped), left by an earlier run: {summary.left_over[0]}" in table


def test_verify_k_and_no_calibration_after_a_calibrated_run(rerun):
    results = _results(rerun({"verify": VerifyOptions(k=5, workers=0), "calibration_copies": 0}))
    assert results[("calibrate", "copies")].endswith("too few to copy: fixed inlier bonus")
    assert results[("verify", "phase 1")].startswith("settings changed (combiner InlierBonus(weight=0.2, cap=10), "
                                                      "verification k 5): ")
    assert results[("submit", "phase 2 matching")].startswith("input changed (predictions_phase2_verified.csv)")


@pytest.mark.parametrize("copies", [0, 16])
def test_calibration_copies(rerun, copies):
    results = _results(rerun({"calibration_copies": copies}))
    if copies:
        assert results[("calibrate", "copies")].startswith("settings changed (calibration copies 16): ")
    assert not results[("verify", "phase 1")].startswith("up to date")


@pytest.mark.parametrize(("before", "after"), [({}, {"reference_crops": True}), ({"reference_crops": True}, {})])
def test_reference_crops_on_and_off(rerun, before, after):
    results = _results(rerun(after, before))
    said = "on" if after else "off"
    assert results[("search", "phase 1")].startswith(f"settings changed (reference crops {said}): ")


GRID = {"extraction": ExtractOptions(batch_size=8, workers=0, grid=2)}


def test_query_grid_on(rerun):
    results = _results(rerun(GRID))
    assert "images/s" in results[("extract", "query phase 1 crops")]  # described again, not reused
    assert results[("extract", "query phase 1")] == results[("extract", "reference")] == "up to date"
    assert not results[("calibrate", "copies")].startswith("up to date")  # the query views it calibrates changed


def test_scales(rerun):
    results = _results(rerun({"extraction": ExtractOptions(batch_size=8, workers=0, scales=(1.0, 0.5))}))
    for described in ("query phase 1 crops", "reference", "training"):  # every image described again, not reused
        assert " px x 1,0.5, " in results[("extract", described)], described
    assert not results[("calibrate", "copies")].startswith("up to date")  # its copies described at the scales too


def test_scales_describe_every_image_of_the_run_at_each_size(mini_dataset, tmp_path):
    work = tmp_path / "work"
    Pipeline(RunConfig(work=work, data=mini_dataset, submissions=work / "submissions", phases=[1], **{
        **BASE, "extraction": ExtractOptions(batch_size=8, workers=0, scales=(1.0, 0.5)),
        "verify": VerifyOptions(k=3, workers=0, region_inliers=4)})).run()
    described = {}
    for path in sorted(work.rglob("*.h5")):
        with h5py.File(path) as f:
            if "scales" in f.attrs:  # an extraction's (a whitened file quotes its source's attributes too)
                described[path.relative_to(work).as_posix()] = json.loads(f.attrs["scales"])
    assert {"descriptors/query_phase1_crops.h5", "descriptors/reference.h5", "descriptors/training.h5",
            "calibration/copies.h5"} <= set(described)
    assert any(name.startswith("verify-cache/regions/") for name in described)  # the matched regions' cuts
    assert set(map(tuple, described.values())) == {(1.0, 0.5)}


def test_crops_cut_from_the_full_view(rerun):
    results = _results(rerun({"extraction": ExtractOptions(batch_size=8, workers=0, cut_views=True)}))
    assert "images/s" in results[("extract", "query phase 1 crops")]  # described again, not reused
    assert results[("extract", "query phase 1")] == results[("extract", "reference")] == "up to date"
    assert not results[("calibrate", "copies")].startswith("up to date")  # the query views it calibrates changed


def test_query_grid_describes_the_queries_and_the_calibrations_copies_with_crops(mini_dataset, tmp_path):
    work = tmp_path / "work"
    Pipeline(RunConfig(work=work, data=mini_dataset, submissions=work / "submissions", phases=[1],
                       calibration_crops=True, **{**BASE, **GRID})).run()
    for name in ("descriptors/query_phase1_crops.h5", "calibration/copies_crops.h5"):
        with h5py.File(work / name) as f:
            assert (f.attrs["views_per_id"], f.attrs["grid_views"]) == (10, 2), name
    for name in ("query_phase1", "reference", "training"):
        with h5py.File(work / "descriptors" / f"{name}.h5") as f:
            assert "grid_views" not in f.attrs and "views_per_id" not in f.attrs, name
    assert json.loads((work / "calibration.json").read_text())["conditions"]["search"]["query_grid"] == 2


MIRRORED = {"verify": VerifyOptions(k=3, workers=0, mirror=True)}


@pytest.mark.parametrize(("before", "after", "said"), [
    ({}, MIRRORED, "verification mirror on"), (MIRRORED, {}, "verification mirror off"),
    ({}, {"verify": VerifyOptions(k=3, workers=0, features="rootsift")}, "verification features rootsift")],
    ids=["mirror-on", "mirror-off", "rootsift"])
def test_verification_mirror_and_features(rerun, before, after, said):
    results = _results(rerun(after, before))
    assert results[("search", "phase 1")] == "up to date"  # the candidates are the same
    assert results[("calibrate", "copies")].startswith(f"settings changed ({said}")  # refitted on matches made so
    assert results[("verify", "phase 1")].startswith("settings changed (")  # verified again, not reused


def test_matching_whitened(rerun):
    results = _results(rerun({"matching_whitened": True}))
    assert results[("search", "phase 1")].startswith("settings changed (matching whitened on): ")
    assert results[("whiten", "PCA 16")] == "up to date"


def test_pca_dimension(rerun):
    results = _results(rerun({"pca_dim": 8}))
    assert results[("whiten", "PCA 8")].startswith("learnt on the training descriptors")
    assert results[("search", "phase 1")] == "up to date"  # the matching track searches the raw descriptors
    assert results[("submit", "phase 1 descriptors")] == "settings changed (PCA dimension 8): valid"


def test_query_crops_off(rerun):
    results = _results(rerun({"query_crops": False}))
    assert results[("extract", "query phase 1")] == "up to date"  # the crops' full views, as an extraction makes
    assert results[("search", "phase 1")].startswith("settings changed (query crops off): ")


def test_image_size(rerun):
    results = _results(rerun({"image_size": 96}))
    assert "@96 px" in results[("extract", "reference")]
    assert results[("search", "phase 1")].startswith("inputs changed (descriptors/query_phase1_crops.h5, ")


@pytest.mark.parametrize("search", [SearchOptions(k=3), SearchOptions(k=5, norm=ScoreNorm(beta=2.0))],
                         ids=["k", "norm"])
def test_search_options(rerun, search):
    results = _results(rerun({"search": search}))
    assert results[("search", "phase 1")].startswith("settings changed (search ")
    assert results[("calibrate", "copies")].startswith("settings changed (search ")


def test_new_weights_of_the_same_model_file(rerun, tmp_path):
    """A model file replaced by other weights (a new checkpoint at the same path): extracted again."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "net.pt"

    def save(seed: int) -> None:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still a format isc reads
            torch.jit.script(net.eval()).save(str(path))
    save(0)
    scripted = {"model": f"torchscript:{path}", "image_size": 32}
    results = _results(rerun(scripted, scripted, between=lambda: save(1)))
    assert results[("extract", "reference")].startswith("24-d torchscript")
    assert results[("whiten", "PCA 16")].startswith("input changed (descriptors/training.h5): learnt")


def test_limit_after_a_full_run_says_the_descriptor_track_file_is_an_earlier_runs(rerun):
    results = _results(rerun({"limit": 20}))
    assert results[("extract", "reference")].startswith("256-d pdq")
    assert results[("submit", "phase 1 descriptors")] == (
        "not made: an image limit selects a subset, the track needs every query and reference; "
        "phase1_descriptors.h5 there is an earlier run's, with other settings")


def test_training_limit(rerun):
    results = _results(rerun({"training_limit": 30}))
    assert results[("extract", "training")].startswith("256-d pdq")
    assert results[("whiten", "PCA 16")].startswith("input changed (descriptors/training.h5): learnt")


# ------------------------------------------------------------------------------------------ through the CLI


def _cli(work: Path, data: Path, *args: str) -> dict[tuple[str, str], str]:
    result = subprocess.run([sys.executable, "-m", "isc.cli.run", str(work), "--data", str(data), *CLI_BASE,
                             "--submissions-dir", str(work / "submissions"), "--gt", str(data / "ground_truth.csv"),
                             *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return {(s["stage"], s["target"]): s["result"] for s in json.loads(result.stdout)["steps"]}


def test_cli_no_verify_after_verify_matches_a_fresh_run(mini_dataset, tmp_path):
    work = tmp_path / "work"
    _cli(work, mini_dataset, "--phases", "1")
    results = _cli(work, mini_dataset, "--phases", "1", "--no-verify")
    assert results[("submit", "phase 1 matching")] == "settings changed (verified off): valid"
    work.rename(tmp_path / "changed")
    _cli(work, mini_dataset, "--phases", "1", "--no-verify")
    _same_outputs(tmp_path / "changed", work)


def test_killed_run_resumed_matches_an_uninterrupted_one(mini_dataset, tmp_path):
    """SIGKILL in the middle of the derived steps (the calibration's copies made, its search not yet): the resumed
    run writes what an uninterrupted one writes; the temporary files of the killed write are its only extra."""
    work = tmp_path / "work"
    command = [sys.executable, "-m", "isc.cli.run", str(work), "--data", str(mini_dataset), *CLI_BASE,
               "--submissions-dir", str(work / "submissions"), "--gt", str(mini_dataset / "ground_truth.csv")]
    with running(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as first:
        wait_until(lambda: (work / "calibration" / "copies.json").exists(), first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert not (work / "run_summary.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    steps = {(s["stage"], s["target"]): s for s in json.loads(resumed.stdout)["steps"]}
    assert steps[("extract", "reference")]["skipped"] and steps[("search", "phase 1")]["skipped"]
    work.rename(tmp_path / "resumed")
    uninterrupted = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    _same_outputs(tmp_path / "resumed", work)
