"""What every command shares: one-line errors, warnings and exit codes."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from isc.io import InputError


def run_command(
    parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int | None], argv: list[str] | None
) -> int:
    """Parse ``argv`` and run ``command``; bad input ends in one line on stderr and a non-zero exit."""
    args = parser.parse_args(argv)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"{parser.prog}: warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line_warning
    try:
        return int(command(args) or 0)
    except InputError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"{parser.prog}: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
