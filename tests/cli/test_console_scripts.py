"""The installed commands: every console script setup.cfg declares is on the PATH of the test environment and
answers --help, so a broken entry point (a renamed main, a missing module) fails here, not in a user's shell."""

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def console_scripts() -> dict[str, str]:
    """``{command: "module:function"}`` from setup.cfg's console_scripts: a new command is covered without an edit."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


SCRIPTS = console_scripts()


def test_setup_cfg_declares_the_commands():
    assert len(SCRIPTS) >= 13 and all(name.startswith("isc-") for name in SCRIPTS), SCRIPTS


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_each_installed_command_answers_help(command):
    # the environment's own bin folder, where pip put the scripts: not whatever an outer PATH finds first
    script = Path(sys.executable).parent / command
    assert script.is_file(), f"{command} is not installed next to {sys.executable} (pip install -e . again?)"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {command} "), done.stdout[:200]
    assert done.stderr == "", done.stderr
