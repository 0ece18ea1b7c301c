"""What every command shares: one-line errors, warnings, exit codes, checked option types and the
guard that keeps an output from landing on an input."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from isc.core.distributed import TORCH_INSTALL, torch_absent
from isc.core.files import IMAGE_SUFFIXES, InputError, SettingError, check_parent_folders

PathArg = str | os.PathLike | None


def run_command(
    parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int | None], argv: list[str] | None
) -> int:
    """Parse ``argv`` and run ``command``; bad input ends in one line on stderr and a non-zero exit."""
    one_line_usage_errors(parser)
    args = parser.parse_args(argv)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"{parser.prog}: warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line_warning
    engine_log = logging.getLogger("isc")
    # what the engine reports doing goes to stdout, one prefixed line each, none under --quiet: stderr stays
    # for warnings and the one-line error; under --json stdout holds the JSON alone, so the lines go to stderr
    handler = logging.StreamHandler(sys.stderr if getattr(args, "json", False) else sys.stdout)
    handler.setFormatter(logging.Formatter(f"{parser.prog}: %(message)s"))
    saved = engine_log.handlers[:], engine_log.level, engine_log.propagate
    engine_log.handlers[:] = [handler]
    engine_log.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    engine_log.propagate = False
    try:
        return int(command(args) or 0)
    except SettingError as e:  # the engine names the setting, the command its own flag
        print(f"{parser.prog}: error: {flag_of(parser, e.setting) or e.setting} {e.problem}", file=sys.stderr)
        return 2
    except InputError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        print(f"{parser.prog}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only file system, a full disk, a name too long, an I/O error: one line too
        print(f"{parser.prog}: error: {os_error_line(e)}", file=sys.stderr)
        return 1 if e.errno in FAILED_RUN_ERRNOS else 2
    except ImportError as e:  # a path only the torch extra runs, reached without it: say what to install
        if not torch_absent(e):
            raise
        print(f"{parser.prog}: error: {e}: {TORCH_INSTALL}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        engine_log.handlers[:], level, engine_log.propagate = saved
        engine_log.setLevel(level)


def flag_of(parser: argparse.ArgumentParser, setting: str) -> str | None:
    """The long flag of ``parser`` (or of one of its subcommands) that sets ``setting`` (its dest), or None."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = (flag_of(subcommand, setting) for subcommand in action.choices.values())
            flag = next((f for f in found if f), None)
            if flag:
                return flag
        elif action.dest == setting and action.option_strings:
            return max(action.option_strings, key=len)
    return None


def one_line_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Make a bad option of ``parser`` and of its subcommands end in one line and exit 2, not argparse's usage."""

    def error(message: str, prog: str = parser.prog) -> None:
        print(f"{prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subcommand in set(action.choices.values()):
                one_line_usage_errors(subcommand)


# the disk failed the run, not the input: a re-run once there is room (or the device works) may succeed
FAILED_RUN_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def os_error_line(error: OSError) -> str:
    """``REASON: PATH`` of an OSError (the reason alone when it names no file), on one line."""
    reason = error.strerror or str(error) or type(error).__name__
    text = f"{reason}: {error.filename}" if error.filename is not None else reason
    return " ".join(text.split())


def print_broken(broken: dict[str, str], where_all: str, shown: int = 20) -> None:
    """The first ``shown`` unreadable images with their reasons, then where the full list is."""
    for name, reason in list(broken.items())[:shown]:
        print(f"  broken {name}: {reason}")
    if len(broken) > shown:
        print(f"  ... and {len(broken) - shown} more ({where_all})")


# ------------------------------------------------------------------------------ checked option types
# argparse calls these on the raw text, so a bad value is refused before any work, as "argument --x: ..."


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _at_least(kind: type, text: str, minimum: int, strictly: bool = False) -> int | float:
    value = _number(text, kind)
    if value < minimum or (strictly and value == minimum):
        raise argparse.ArgumentTypeError(f"must be {'>' if strictly else '>='} {minimum}, got {text!r}")
    return value


def _at_most(value: int | float, maximum: int | float, text: str) -> int | float:
    if value > maximum:
        raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite float (nan and inf refused)."""
    return _number(text, float)


def positive_float(text: str) -> float:
    """A finite float > 0."""
    return _at_least(float, text, 0, strictly=True)


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    return _at_least(float, text, 0)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _at_least(int, text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _at_least(int, text, 0)


def float_between(low: float, high: float) -> Callable[[str], float]:
    """The option type of a finite float within [low, high]: a weight past its meaningful range is refused."""

    def checked(text: str) -> float:
        return _at_most(_at_least(float, text, low), high, text)

    return checked


def int_between(low: int, high: int) -> Callable[[str], int]:
    """The option type of an integer within [low, high]."""

    def checked(text: str) -> int:
        return _at_most(_at_least(int, text, low), high, text)

    return checked


def port_number(text: str) -> int:
    """A TCP port, 1-65535 (0, "any free port", only where an option says so)."""
    value = _number(text, int)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {text!r}")
    return value


# ------------------------------------------------------------------------------------ output guard


def _resolved(path: PathArg) -> Path:
    # an output need not exist yet: symlinks and ".." of the existing part are resolved; realpath, unlike
    # Path.resolve, leaves a symlink loop (an input listed as broken) as it is instead of raising RuntimeError
    return Path(os.path.realpath(Path(path).expanduser()))


def _same_file(path: PathArg, inputs: Iterable[PathArg]) -> PathArg | None:
    """The input that ``path`` is another name of (same device and inode: a hard link), or None."""
    for source in inputs:
        # an output that does not exist yet (or an input that is gone) is no other name of anything
        with contextlib.suppress(OSError):
            if os.path.samefile(path, source):
                return source
    return None


def _entry(path: PathArg, parents: dict[str, str]) -> tuple[str, str]:
    """(the real path of the folder, the name): the directory entry that writing ``path`` replaces (a rename
    replaces a symlink, not its target); ``parents`` caches the folders' real paths."""
    folder, name = os.path.split(os.path.expanduser(os.fspath(path)))
    if folder not in parents:
        parents[folder] = os.path.realpath(folder or ".")
    return parents[folder], name


def _check_image_inputs(outputs: list[PathArg], images: Iterable[PathArg], image_folders: Iterable[PathArg]) -> None:
    """Refuse an output that is one of the ``images`` read, or that lies in an input image folder with an image
    suffix: an image of the folder, or listed by its next listing (which takes every such name, broken or not).
    Another file there is no image any listing reads (a report of an earlier run): it may be written."""
    existing = [path for path in outputs if os.path.lexists(os.path.expanduser(os.fspath(path)))]
    if existing:  # an output that does not exist yet is no image: the (maybe million) images are not looked at
        parents: dict[str, str] = {}
        read = {_entry(image, parents): image for image in images if image is not None}
        for path in existing:  # the output's own name, or the file a symbolic link of that name leads to
            image = read.get(_entry(path, parents)) or read.get(_entry(_resolved(path), parents))
            if image is not None:
                raise InputError(f"output {path} is the input image {image}: writing it would destroy the input")
    roots = [(folder, _resolved(folder)) for folder in image_folders if folder is not None]
    for path in outputs:
        resolved = Path(_entry(path, {})[0], Path(path).name)
        folder = next((given for given, root in roots if root in resolved.parents), None)
        if folder is None:
            continue
        if resolved.suffix.lower() in IMAGE_SUFFIXES and not resolved.name.startswith("."):
            being = "is" if os.path.lexists(os.path.expanduser(os.fspath(path))) else "would be"
            raise InputError(f"output {path} {being} an image of the input image folder {folder} (suffix "
                             f"{resolved.suffix}): write it elsewhere, or with another suffix")


def check_outputs(
    inputs: Iterable[PathArg] = (),
    outputs: Iterable[PathArg] = (),
    folders: Iterable[PathArg] = (),
    images: Iterable[PathArg] = (),
    image_folders: Iterable[PathArg] = (),
) -> None:
    """Refuse, before any work, an output file that would overwrite an input or another output, or that is a folder.

    ``inputs``: files read (None entries ignored); ``outputs``: files written; ``folders``: output folders,
    refused when they are an existing file or when an input lies at the very same path; ``images``: the image
    files read (only looked at when an output exists already); ``image_folders``: folders whose images are read
    (searched recursively), where an output with an image suffix is refused.
    """
    inputs, outputs, folders = [p for p in inputs if p is not None], list(outputs), list(folders)
    seen_inputs = {_resolved(p): str(p) for p in inputs}
    seen_outputs: dict[Path, str] = {}
    for path in [*outputs, *folders]:
        if path is not None and not str(path).strip():
            raise InputError("an output path is empty (a file or folder name is needed)")
    for path in outputs:
        if path is None:
            continue
        resolved = _resolved(path)
        if resolved in seen_inputs:
            raise InputError(f"output {path} is the input {seen_inputs[resolved]}: writing it would destroy the input")
        linked = _same_file(path, inputs)
        if linked is not None:
            raise InputError(f"output {path} is a hard link to the input {linked}: writing it would destroy the input")
        if resolved in seen_outputs:
            raise InputError(f"outputs {seen_outputs[resolved]} and {path} are the same file")
        if resolved.is_dir():
            raise InputError(f"{path}: is a directory (an output file is needed here)")
        seen_outputs[resolved] = str(path)
    for path in folders:
        if path is None:
            continue
        resolved = _resolved(path)
        if resolved in seen_inputs:
            raise InputError(f"output folder {path} is the input {seen_inputs[resolved]}")
        if resolved.exists() and not resolved.is_dir():
            raise InputError(f"{path}: exists and is not a directory (an output folder is needed here)")
    for path in outputs:  # after the folders' own check, whose message names the folder given
        if path is not None:
            check_parent_folders(path)
    _check_image_inputs([path for path in outputs if path is not None], images, image_folders)
