"""Files read and written safely: :class:`InputError` (bad input, one line at the command boundary), text
files sniffed before parsing (:func:`check_text_file`), paths checked (:func:`check_file`), every write through
:func:`atomic_path` (a temporary name, then a rename: a crash never leaves a half-written file under the real
name), OS errors reported with their path (:func:`os_error_at`), and digests.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path


class InputError(ValueError):
    """Bad input from the user: the CLI prints it as one line and exits non-zero."""


class SettingError(InputError):
    """A setting of an options object out of its range, said as ``<setting> <problem>``: a command names the
    setting by its own flag instead."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting} {problem}")
        self.setting, self.problem = setting, problem


class NoImageRead(InputError):
    """Not one of the images could be read (to describe, or to verify): nothing is written."""


def shown(value: object, limit: int = 100) -> str:
    """A value quoted in a message: its repr (non-printable characters escaped), cut after ``limit`` characters."""
    text = str(value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


SNIFF_BYTES = 1 << 16  # what is read of a text file before parsing it
# byte-order marks of the encodings a text editor may save a CSV in, UTF-32 before UTF-16 (whose marks begin theirs)
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))


def check_text_file(path: str | Path, what: str) -> None:
    """InputError, from its first 64 KiB and before any parsing, for a file that is not UTF-8 text: UTF-16 or
    UTF-32 (by the byte-order mark, or by NULs beside ASCII letters), or binary (a NUL byte); a sparse or
    binary file of gigabytes is then refused at once, without being read whole."""
    check_file(path, "file")
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), None)
    if encoding is None and b"\0" in head:
        even_nuls, odd_nuls = head[0::2].count(0), head[1::2].count(0)
        if max(even_nuls, odd_nuls) > 0.9 * (len(head) // 2) and min(even_nuls, odd_nuls) < 0.1 * (len(head) // 2):
            encoding = "UTF-16"
        else:
            raise InputError(f"{path}: not a text {what} (binary content: a NUL byte at offset {head.index(0)})")
    if encoding:
        raise InputError(f"{path}: {encoding} text, a {what} must be UTF-8 (save it as UTF-8)")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # files taken as images


# ------------------------------------------------------------------------------------- atomic write


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    check_parent_folders(path)
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                # mode 0o666 less the umask, as for any new file (mkstemp would make it private)
                os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        named = os_error_at(e, path, tmp_path)
        if named is e:
            raise
        raise named from e
    finally:
        with contextlib.suppress(OSError):  # a read-only or vanished folder: nothing was left there
            tmp_path.unlink(missing_ok=True)


def check_parent_folders(path: str | Path) -> None:
    """InputError when a folder that ``path`` would be written in is an existing file (``afile/out.csv``):
    creating the folders would fail with a bare "File exists"."""
    for parent in Path(path).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(f"{path}: {parent} is {'a file' if parent.is_file() else 'not a folder'}, "
                                 "it cannot hold the output")
            return


def os_error_at(error: OSError, path: str | Path, tmp_path: str | Path | None = None) -> OSError:
    """``error`` as the OSError of the same kind naming ``path``, the user's file, when it names ``tmp_path`` (the
    temporary twin of ``path``) or no file at all, or says the disk is full (shutil's copy names its source then);
    errno and reason are dug out of h5py's text, which alone holds them."""
    disk_full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    if error.filename is not None and (tmp_path is None or str(error.filename) != str(tmp_path)) and not disk_full:
        return error
    number, reason = error.errno, error.strerror
    if number is None:
        found = re.search(r"errno = (\d+)", str(error))
        number = int(found.group(1)) if found else None
        reason = os.strerror(number) if number else str(error)
    return OSError(number, reason, str(path))


def jsonable(value: object) -> object:
    """``value`` as JSON can hold it: numpy arrays and scalars as lists and numbers, bytes as text, keys as
    text, a non-finite float as its text (JSON has none), anything else unknown (a path) as its str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):  # a numpy array or scalar, without importing numpy here
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if value is None or isinstance(value, str | int | float) else str(value)


def write_json(path: str | Path, content: object, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``content`` as JSON (:func:`jsonable`), atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(content), indent=indent, sort_keys=sort_keys) + "\n", encoding="utf-8")
    return Path(path)


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks: MD5 by default (the competition's metadata
    checksum), or any :mod:`hashlib` algorithm (models fingerprint their files with sha256)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: str | Path, what: str, here: bool = False) -> None:
    """InputError unless ``path`` is an existing file: ``PATH: is a directory (a WHAT is needed[ here])`` for a
    folder, ``PATH: no such WHAT`` otherwise."""
    article = "an" if what[:1].lower() in "aeio" or what.startswith(("ONNX", "HDF5")) else "a"
    if Path(path).is_dir():
        raise InputError(f"{path}: is a directory ({article} {what} is needed{' here' if here else ''})")
    if not Path(path).is_file():
        kind = special_file_kind(path)
        raise InputError(f"{path}: is a {kind}, not a file ({article} {what} is needed)" if kind
                         else f"{path}: no such {what}")


def special_file_kind(path: str | Path) -> str | None:
    """What an existing path that is neither a file nor a folder is (``named pipe (FIFO)``, ``socket``, ...);
    None when there is nothing there."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"))
    return next((kind for test, kind in kinds if test(mode)), "special file")
