"""Progress bars: a quiet run's bar does what tqdm's disabled bar does, without importing tqdm."""

import sys

from conftest import run_python

from isc.core.progress import SilentBar, progress


def test_a_silent_bar_iterates_counts_nothing_and_closes():
    with progress(range(3), disable=True, desc="x", unit="img") as bar:
        assert isinstance(bar, SilentBar) and list(bar) == [0, 1, 2]
        bar.update(5)
    bar.close()
    assert list(progress(disable=True)) == []


def test_a_bar_that_shows_is_tqdms_and_a_silent_one_never_imports_it():
    shown = progress(range(2), disable=False, file=sys.stderr)
    assert type(shown).__name__ == "tqdm" and list(shown) == [0, 1]
    done = run_python("-c", "import sys; from isc.core.progress import progress; list(progress(range(2), "
                      "disable=True)); assert 'tqdm' not in sys.modules")
    assert done.returncode == 0, done.stderr
