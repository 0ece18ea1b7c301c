"""The README's manual recipe (phase 1, then phase 2) run command by command on the mini dataset."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
# the mini dataset has 40 training images: too few to learn 256 dimensions
SUBSTITUTIONS = {"--dim 256": "--dim 16"}


def recipe_commands() -> list[list[str]]:
    """The commands of the README block marked ``<!-- manual-recipe -->``, continuation lines joined."""
    block = re.search(r"<!-- manual-recipe -->\n```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no manual-recipe block"
    text = block.group(1).replace("\\\n", " ")
    for old, new in SUBSTITUTIONS.items():
        assert old in text, f"{old!r} is no longer in the recipe"
        text = text.replace(old, new)
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_manual_recipe_runs_as_written(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    shutil.copy(mini_dataset / "ground_truth.csv", tmp_path / "public_ground_truth.csv")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "ISC_SUBMISSIONS_DIR": str(tmp_path / "submissions"),
           "PYTHONPATH": str(README.parent)}
    commands = recipe_commands()
    assert len(commands) >= 15
    for command in commands:
        assert command[0].startswith("isc-"), command
        module = "isc.cli." + command[0].removeprefix("isc-")
        done = subprocess.run([sys.executable, "-m", module, *command[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stderr[-2000:]}"
    for name in ("phase1_matching.csv", "phase1_descriptors.h5", "phase2_matching.csv", "phase2_descriptors.h5"):
        assert (tmp_path / "submissions" / name).is_file(), name
        assert (tmp_path / "submissions" / f"{name}.manifest.json").is_file(), name
