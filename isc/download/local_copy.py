"""The local copy of a split (``<dest>/<split>_images/``): which files are verified, missing, corrupt or extra.

A small journal of verified (size, mtime, md5) in the folder avoids re-hashing a complete folder on every run."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from isc.core.files import atomic_path, file_digest
from isc.core.threads import bounded_map
from isc.download.s3 import PART_SUFFIX

INDEX_NAME = ".isc-verified.tsv"


class VerifiedIndex:
    """A journal of files already verified: ``name size mtime_ns md5`` lines, appended as files are verified.

    Appending (one line per file) survives kill -9; a torn last line is ignored. A file is trusted without
    re-hashing only while its size and mtime are those recorded and the recorded MD5 is the expected one.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / INDEX_NAME
        self.entries: dict[str, tuple[int, int, str]] = {}
        if self.path.is_file():
            for line in self.path.read_text(errors="replace").splitlines():
                parts = line.split("\t")
                if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit() and len(parts[3]) == 32:
                    self.entries[parts[0]] = (int(parts[1]), int(parts[2]), parts[3])
        self._journal = None

    def trusted(self, name: str, stat: os.stat_result, md5: str) -> bool:
        return self.entries.get(name) == (stat.st_size, stat.st_mtime_ns, md5)

    def record(self, name: str, stat: os.stat_result, md5: str) -> None:
        self._append(name, (stat.st_size, stat.st_mtime_ns, md5))

    def _append(self, name: str, entry: tuple[int, int, str]) -> None:
        if self.entries.get(name) == entry:
            return
        self.entries[name] = entry
        if self._journal is None:
            self._journal = open(self.path, "a")  # noqa: SIM115 (kept open for the run, closed by compact)
        self._journal.write("{}\t{}\t{}\t{}\n".format(name, *entry))
        self._journal.flush()

    def forget(self, name: str) -> None:
        """Stop trusting ``name`` (found corrupt): the next run hashes it again, and fetches it. Journalled as an
        entry no file matches (size 0, mtime 0, no MD5), so that a run killed before :meth:`compact` forgets it too."""
        if name in self.entries:
            self._append(name, (0, 0, "0" * 32))

    def compact(self, keep: Iterable[str]) -> None:
        """Rewrite the journal with one line per file in ``keep`` (atomically)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join("{}\t{}\t{}\t{}\n".format(n, *self.entries[n]) for n in keep if n in self.entries))


@dataclass
class FolderCheck:
    """State of the selected files in the destination folder (file names)."""

    verified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def check_folder(
    folder: Path,
    expected: dict[str, str],
    all_names: set[str],
    index: VerifiedIndex,
    rehash: bool = False,
    workers: int = 4,
    quiet: bool = True,
) -> FolderCheck:
    """Classify every file of ``expected`` (name -> md5); ``extra``: files in the folder not in ``all_names``.

    One listing of the folder finds the missing files; present files are trusted from the index while their
    size and mtime match (unless ``rehash``), the others are hashed in ``workers`` threads.
    """
    result = FolderCheck()
    present = {entry.name: entry for entry in os.scandir(folder)} if folder.is_dir() else {}
    to_hash = []
    for name, md5 in expected.items():
        entry = present.get(name)
        try:
            stat = entry.stat() if entry is not None else None
        except FileNotFoundError:
            stat = None
        if stat is None:
            result.missing.append(name)
        elif not rehash and index.trusted(name, stat, md5):
            result.verified.append(name)
        else:
            to_hash.append((name, stat))
    hashed = bounded_map(lambda item: (*item, file_digest(folder / item[0])), to_hash, workers)
    for name, stat, md5 in tqdm(hashed, total=len(to_hash), desc="checking local files", unit="file",
                                disable=quiet or not to_hash, dynamic_ncols=True):
        if md5 == expected[name]:
            result.verified.append(name)
            index.record(name, stat, md5)
        else:
            result.corrupt.append(name)
            index.forget(name)
    result.extra = sorted(n for n, e in present.items() if not n.startswith(".") and n not in all_names and e.is_file())
    return result


def remove_stale_parts(folder: Path) -> int:
    """Delete the temporary files a killed run left behind; returns how many."""
    stale = list(folder.glob(f".*{PART_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
