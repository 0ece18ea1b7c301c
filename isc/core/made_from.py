"""The one rule of "up to date" for a derived file: it was made from the same inputs with the same settings.

A record of what made a file (:class:`MadeFrom`) holds the settings that change its content and a fingerprint of
each input file; it is written beside the file (``<file>.made-from.json``) after the file itself, so a run killed
while making the file leaves no record claiming it. :meth:`MadeFrom.why_redo` compares the record on disk with the
one a run would write and says, in a few words, why the file must be made again (None: it is up to date).

A fingerprint is an input's size and modification time in nanoseconds, never a digest of its content: inputs are
descriptor files of gigabytes, read once per step otherwise, and every writer renames a new file into place
(:func:`isc.core.files.atomic_path`), so a rewritten input always has a new time; an input rewritten with the same
bytes costs a redo, never a stale result. The record also holds the fingerprint of the file it describes, so a file
replaced by hand or by a run killed before its record was written is never taken for the recorded one.

Inputs are named by their path relative to a root (the work folder), so a work folder moved or copied with its
times (``cp -a``) stays up to date; an input outside the root is named by its absolute path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from isc.core.files import jsonable, write_json

RECORD_SUFFIX = ".made-from.json"
MISSING = "missing"  # the reason for a file that is not there: no more needs saying on a first run


def record_path(output: str | Path) -> Path:
    """Where the record of what made ``output`` is kept."""
    return Path(str(output) + RECORD_SUFFIX)


def fingerprint(path: str | Path) -> dict[str, int] | None:
    """An input's size and modification time (ns); None when it is not a file."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _name(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # outside the work folder (a given calibration, a data root): its full path
        return str(path.resolve())


def _flat(settings: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested settings as one level of names (``search k``), what a reason quotes."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{name} "))
        else:
            flat[name] = value
    return flat


def _said(value: object) -> str:
    """A setting's new value in a reason: on, off, none, or its JSON cut at 40 characters."""
    if isinstance(value, bool) or value is None:
        return {True: "on", False: "off", None: "none"}[value]
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _gone(value: object) -> str:
    """A setting the record named and the settings now leave out (named only where not the default)."""
    return "off" if value is True else "default"


@dataclass(frozen=True)
class MadeFrom:
    """What a derived file is made from: ``settings`` (JSON-able, by name; nested mappings allowed) and
    ``inputs`` (fingerprints by path relative to the root)."""

    settings: dict[str, object]
    inputs: dict[str, dict[str, int] | None]

    @classmethod
    def of(cls, settings: Mapping[str, object], inputs: Iterable[str | Path], root: str | Path) -> MadeFrom:
        """The record a step would write now: its settings, and each input file as it is on disk now."""
        root = Path(root)
        return cls(json.loads(json.dumps(jsonable(dict(settings)), sort_keys=True)),
                   {_name(Path(p), root): fingerprint(p) for p in inputs})

    def why_redo(self, output: str | Path, *companions: str | Path) -> str | None:
        """None when ``output`` (and each companion file written with it) exists and its record equals this one;
        else why it must be made again: ``missing``, ``no record of what made it``, ``changed since it was made``,
        ``settings changed (reference crops off)``, ``input changed (descriptors/reference.h5)``."""
        output = Path(output)
        absent = [Path(p).name for p in (output, *companions) if not Path(p).is_file()]
        if absent:
            return MISSING if output.name in absent else f"{MISSING} ({', '.join(absent)})"
        try:
            record = json.loads(record_path(output).read_text(encoding="utf-8"))
            settings, inputs, made = record["settings"], record["inputs"], record["output"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):  # absent, or cut by a crash
            return "no record of what made it"
        if made != fingerprint(output):
            return "changed since it was made"
        if settings != self.settings:
            was, now = _flat(settings), _flat(self.settings)
            changed = [f"{name} {_said(now[name]) if name in now else _gone(was[name])}"
                       for name in sorted(set(was) | set(now)) if was.get(name) != now.get(name)]
            return f"settings changed ({', '.join(changed)})"
        if inputs != self.inputs:
            changed = sorted(name for name in set(inputs) | set(self.inputs)
                             if name not in inputs or name not in self.inputs or inputs[name] != self.inputs[name])
            return f"input{'s' if len(changed) > 1 else ''} changed ({', '.join(changed)})"
        return None

    def record(self, output: str | Path) -> Path:
        """Write the record of ``output``, once ``output`` and its companions are complete."""
        return write_json(record_path(output), {"settings": self.settings, "inputs": self.inputs,
                                                "output": fingerprint(output)}, indent=1, sort_keys=True)
