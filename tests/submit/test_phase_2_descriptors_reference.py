"""A phase-2 descriptor-track submission warns only when it lacks the phase-1 references."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from conftest import cli

from isc.core.descriptors import write_descriptors

ATTRS = {"model": "resnet50", "image_size": 224}


def test_phase_2_descriptors_warn_without_the_phase_1_reference_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    references = ["R000000", "R000001", "R000002"]
    write_descriptors(tmp_path / "r.h5", references, rng.standard_normal((3, 8)), ATTRS)
    (tmp_path / "r.txt").write_text("\n".join(references) + "\n")
    for phase, queries in ((1, ["Q00000", "Q00001"]), (2, ["Q50000", "Q50001"])):
        write_descriptors(tmp_path / f"q{phase}.h5", queries, rng.standard_normal((2, 8)), ATTRS)
        (tmp_path / f"q{phase}.txt").write_text("\n".join(queries) + "\n")

    def submit(phase: int, *extra: object) -> subprocess.CompletedProcess:
        return cli("submit", "descriptors", "--query", tmp_path / f"q{phase}.h5", "--reference", tmp_path / "r.h5",
                   "--phase", phase, "--expected-queries", tmp_path / f"q{phase}.txt", "--expected-references",
                   tmp_path / "r.txt", *extra)

    first = submit(1, "-o", tmp_path / "p1.h5")
    assert first.returncode == 0 and "warning" not in first.stderr, first.stderr
    warned = submit(2, "-o", tmp_path / "p2.h5")
    assert warned.returncode == 0, warned.stderr
    warnings = [line for line in warned.stderr.splitlines() if "warning" in line]
    assert warnings == ["isc-submit: warning: phase 2 without --phase1-reference: the reuse of the phase-1 "
                        "references is not checked"], warned.stderr
    checked = submit(2, "--phase1-reference", tmp_path / "p1.h5", "-o", tmp_path / "p2b.h5")
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr
