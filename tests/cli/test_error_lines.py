"""The one line a command prints for an error the operating system raised."""

from __future__ import annotations

import argparse
import errno

import pytest

from isc.cli.common import run_command


def _failing(error: OSError):
    def command(args: argparse.Namespace) -> int:
        raise error

    return command


@pytest.mark.parametrize(
    ("error", "line", "code"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/q.h5"), "No such file or directory: /data/q.h5", 2),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), "No such file or directory", 2),
        (PermissionError(errno.EACCES, "Permission denied", "/out"), "Permission denied: /out", 2),
        (OSError(errno.ENOSPC, "No space left on device", "/out/x.h5"), "No space left on device: /out/x.h5", 1),
    ],
)
def test_an_os_error_is_one_line_naming_its_file_only_when_it_has_one(capsys, error, line, code) -> None:
    parser = argparse.ArgumentParser(prog="isc-x")
    assert run_command(parser, _failing(error), []) == code
    assert capsys.readouterr().err == f"isc-x: error: {line}\n"
