"""Bad input in isc-synth: numbers refused when parsed, an output that is a file; one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_argument_refused, cli, one_line_error

from isc.cli.synth import main as synth_main


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "argument --workers: must be >= 1"),
    (["--references", "-1"], "argument --references: must be >= 0"),
    (["--seed", "-1"], "argument --seed: must be >= 0"),
    (["--min-size", "0"], "argument --min-size: must be >= 1"),
    (["--match-fraction", "nan"], "argument --match-fraction: must be a finite number"),
])
def test_synth_numbers_refused_at_parse_time(args: list[str], message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert_argument_refused(synth_main, "isc-synth", [str(tmp_path / "out"), *args], message, capsys)
    assert not (tmp_path / "out").exists()


def test_synth_output_that_is_a_file(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.write_text("keep me")
    result = cli("synth", str(output), "--references", "1", "--queries", "1", "--training", "1",
                        "--phase2-queries", "0", "--workers", "1")
    one_line_error(result, "isc-synth", "exists and is not a directory")
    assert output.read_text() == "keep me"
