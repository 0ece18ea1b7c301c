"""--help says what an option does and points to docs/BENCHMARKS.md for how well: no measured figure is copied
into a command's help, where it would drift from the benchmarks."""

import importlib
import re

import pytest
from conftest import REPO

COMMANDS = sorted(p.stem for p in (REPO / "isc" / "cli").glob("*.py") if "def build_parser" in p.read_text())
# a score, a precision or recall, a time or a speed-up, as the benchmarks write them
FIGURES = re.compile(r"µAP [+-]?\d|µAP from|[+-]\d?\.\d+ µAP|(precision|recall) \d?\.\d|\d s on |\d+(\.\d+)?x faster|\d+(\.\d+)? vs \d")


def test_the_figures_pattern_finds_a_copied_figure():
    assert FIGURES.search("scored by its best view: µAP 0.728 -> 0.781 with sscd on photos")
    assert FIGURES.search("kept 58 pairs, 55 of them copies (precision 0.95, recall 0.69)")
    assert FIGURES.search("scored best on photos (docs/BENCHMARKS.md: +0.046 µAP over SSCD's)")
    assert not FIGURES.search("6x the query extraction work, gain in docs/BENCHMARKS.md")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_holds_no_benchmark_figure(command):
    text = importlib.import_module(f"isc.cli.{command}").build_parser().format_help()
    assert not FIGURES.search(text), FIGURES.search(text)
