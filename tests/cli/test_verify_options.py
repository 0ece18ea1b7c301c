"""isc-verify, isc-run and isc-find take the same verification options (one add_verify_options), each field of
VerifyOptions reached by all three (the adaptive depth by isc-verify and isc-run only); a bad value is refused by VerifyOptions itself, said by each command as its
own flag in one line."""

from dataclasses import replace

import numpy as np
import pytest
from conftest import cli, one_line_error
from PIL import Image

from isc.cli import find as cli_find
from isc.cli import run as cli_run
from isc.cli import verify as cli_verify
from isc.cli.options import DEEP_FLAGS, VERIFY_FLAGS, verify_options
from isc.core.files import InputError, SettingError
from isc.verify.local_features import VerifyOptions

SET = VerifyOptions(k=3, max_features=300, max_side=256, ratio=0.7, geometry="homography", threshold=4.0, workers=1)
DEEP = VerifyOptions(k=3, max_features=300, max_side=256, ratio=0.7, geometry="homography", threshold=4.0, workers=1,
                     deep_k=5, deep_inliers=6)
FLAGS = ["k", "3", "max-features", "300", "max-side", "256", "ratio", "0.7", "geometry", "homography",
         "threshold", "4", "workers", "1"]
DEEP_ARGS = ["deep-k", "5", "deep-inliers", "6"]


def flags(prefix: str, deep: bool = False) -> list[str]:
    return [f"--{prefix}{item}" if i % 2 == 0 else item for i, item in enumerate(FLAGS + DEEP_ARGS * deep)]


def test_every_field_has_a_flag():  # but region_inliers: isc-run's own --region-inliers (the regions need its model)
    assert {*VERIFY_FLAGS, *DEEP_FLAGS, "region_inliers"} == {field for field in VerifyOptions.__dataclass_fields__}


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("k", 0, "must be at least 1, got 0"), ("max_features", 1, "must be at least 2, got 1"),
    ("max_side", 8, "must be at least 16 pixels, got 8"), ("ratio", 1.5, "must be within (0, 1]"),
    ("geometry", "shear", "must be one of affine, homography, magsac, got 'shear'"),
    ("threshold", float("inf"), "must be a finite number of pixels > 0, got inf"),
    ("workers", -1, "must be 0 or more, got -1"),
])
def test_verify_options_check_themselves(field, value, problem):
    with pytest.raises(SettingError) as refused:
        VerifyOptions(**{field: value})
    assert (refused.value.setting, refused.value.problem.startswith(problem)) == (field, True), refused.value


def test_isc_verify_reads_every_field(tmp_path):
    args = cli_verify.build_parser().parse_args(["p.csv", "-o", str(tmp_path / "o.csv"), *flags("", deep=True)])
    assert verify_options(args) == DEEP
    assert verify_options(cli_verify.build_parser().parse_args(["p.csv", "-o", "o.csv"])) == VerifyOptions()


def test_isc_run_reaches_every_field_and_keeps_workers_for_extraction(tmp_path, run_configs):
    configs = run_configs
    argv = [str(tmp_path / "work"), "--model", "pdq", "--quiet", "--workers", "0"]
    assert cli_run.main([*argv, *flags("verify-", deep=True)]) == 0
    assert replace(configs[0].verify, region_inliers=0) == DEEP and configs[0].extraction.workers == 0
    assert cli_run.main(argv) == 0 and configs[1].verify == VerifyOptions(region_inliers=8)  # SIFT: every core


def test_isc_find_reaches_every_field(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    seen = []

    def recorded(*args, verification, **options):
        seen.append(verification)
        raise InputError("recorded")

    monkeypatch.setattr(cli_find, "find_copies", recorded)
    assert cli_find.main([str(folder), "--model", "pdq", "--quiet", *flags("verify-")]) == 2
    assert seen == [SET]
    with pytest.raises(SystemExit):  # adaptive depth is not isc-find's: an unknown option
        cli_find.main([str(folder), "--model", "pdq", "--quiet", "--verify-deep-k", "5"])


@pytest.mark.parametrize(("command", "prog", "args", "flag"), [
    ("verify", "isc-verify", ["p.csv", "-o", "o.csv", "--ratio", "1.5"], "--ratio"),
    ("run", "isc-run", ["work", "--model", "pdq", "--verify-ratio", "1.5"], "--verify-ratio"),
    ("find", "isc-find", ["photos", "--model", "pdq", "--verify-ratio", "1.5"], "--verify-ratio"),
])
def test_a_bad_value_is_said_as_the_commands_own_flag(command, prog, args, flag, tmp_path):
    result = cli(command, *args, cwd=tmp_path)
    one_line_error(result, prog, f"{flag} must be within (0, 1] (Lowe's ratio test), got 1.5")


def test_isc_run_describes_the_calibrations_copies_without_crops_unless_asked(tmp_path, run_configs):
    argv = [str(tmp_path / "work"), "--model", "pdq", "--quiet"]
    assert cli_run.main(argv) == 0 and cli_run.main([*argv, "--calibration-crops"]) == 0
    assert [config.calibration_crops for config in run_configs] == [False, True]
