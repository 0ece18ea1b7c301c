"""isc-verify, isc-run and isc-find take the same verification options (one add_verify_options), each field of
VerifyOptions reached by all three; a bad value is refused by VerifyOptions itself, said by each command as its
own flag in one line."""

import numpy as np
import pytest
from conftest import cli, one_line_error
from PIL import Image

from isc.cli import find as cli_find
from isc.cli import run as cli_run
from isc.cli import verify as cli_verify
from isc.cli.options import VERIFY_FLAGS, verify_options
from isc.core.files import InputError, SettingError
from isc.verify.local_features import VerifyOptions

SET = VerifyOptions(k=3, max_features=300, max_side=256, ratio=0.7, geometry="homography", threshold=4.0, workers=1)
FLAGS = ["k", "3", "max-features", "300", "max-side", "256", "ratio", "0.7", "geometry", "homography",
         "threshold", "4", "workers", "1"]


def flags(prefix: str) -> list[str]:
    return [f"--{prefix}{item}" if i % 2 == 0 else item for i, item in enumerate(FLAGS)]


def test_every_field_has_a_flag():
    assert set(VERIFY_FLAGS) == {field for field in VerifyOptions.__dataclass_fields__}


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
    args = cli_verify.build_parser().parse_args(["p.csv", "-o", str(tmp_path / "o.csv"), *flags("")])
    assert verify_options(args) == SET
    assert verify_options(cli_verify.build_parser().parse_args(["p.csv", "-o", "o.csv"])) == VerifyOptions()


def test_isc_run_reaches_every_field_and_keeps_workers_for_extraction(tmp_path, run_configs):
    configs = run_configs
    argv = [str(tmp_path / "work"), "--model", "pdq", "--quiet", "--workers", "0"]
    assert cli_run.main([*argv, *flags("verify-")]) == 0
    assert configs[0].verify == SET and configs[0].extraction.workers == 0
    assert cli_run.main(argv) == 0 and configs[1].verify == VerifyOptions()  # SIFT processes: every core


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


@pytest.mark.parametrize(("command", "prog", "args", "flag"), [
    ("verify", "isc-verify", ["p.csv", "-o", "o.csv", "--ratio", "1.5"], "--ratio"),
    ("run", "isc-run", ["work", "--model", "pdq", "--verify-ratio", "1.5"], "--verify-ratio"),
    ("find", "isc-find", ["photos", "--model", "pdq", "--verify-ratio", "1.5"], "--verify-ratio"),
])
def test_a_bad_value_is_said_as_the_commands_own_flag(command, prog, args, flag, tmp_path):
    result = cli(command, *args, cwd=tmp_path)
    one_line_error(result, prog, f"{flag} must be within (0, 1] (Lowe's ratio test), got 1.5")
