"""Competition ids are ASCII: a full-width digit is no id digit, in an id, a submission or a metadata file."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli, one_line_error

from isc.core.competition import id_numbers, split_of_id
from isc.core.files import InputError

HEADER = "query_id,reference_id,score\n"


ROWS = "Q00000,R000000,0.9\nQ00001,R000001,0.7\n"


def test_full_width_digits_are_not_id_digits(tmp_path: Path) -> None:
    bad = "Q\uff100002"  # Q０0002
    assert not id_numbers([bad], "query")[1].any()
    with pytest.raises(InputError, match="malformed image id"):
        split_of_id(bad)
    predictions = tmp_path / "p.csv"
    predictions.write_text(HEADER + f"{bad},R000000,0.9\n", encoding="utf-8")
    result = cli("submit", "matching", predictions, "--phase", "1", "-o", tmp_path / "out.csv")
    assert result.returncode == 2 and f"line 2: query_id '{bad}' is not a query id" in result.stderr, result.stderr
    assert not (tmp_path / "out.csv").exists()
    predictions.write_text(HEADER + ROWS)
    metadata = tmp_path / "m.csv"
    metadata.write_text(f"image_id,s3_uri,md5_checksum\nR\uff10\uff1000001,s3://b/k.jpg,{'0' * 32}\n", encoding="utf-8")
    result = cli("submit", "matching", tmp_path / "p.csv", "--phase", "1", "--expected-references", metadata,
                 "-o", tmp_path / "out.csv")
    one_line_error(result, "isc-submit", "is not a reference id")
