"""The README's manual recipe (phase 1, then phase 2) run command by command on the mini dataset."""

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from isc.io import read_descriptor_track, read_ground_truth, read_predictions
from isc.metrics import evaluate
from isc.submit import check_matching_csv

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
    printed = {}
    for command in commands:
        assert command[0].startswith("isc-"), command
        module = "isc.cli." + command[0].removeprefix("isc-")
        done = subprocess.run([sys.executable, "-m", module, *command[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stderr[-2000:]}"
        printed[command[0]] = done.stdout
    # the µAP isc-eval prints is that of the predictions written, and far above chance
    muap = float(re.search(r"µAP\s*:\s*([0-9.]+)", printed["isc-eval"]).group(1))
    gt = read_ground_truth(tmp_path / "public_ground_truth.csv")
    predictions = read_predictions(tmp_path / "phase1_predictions.csv")
    assert muap == pytest.approx(evaluate(predictions, gt, restrict_to_ground_truth_queries=True).muap, abs=1e-5)
    assert muap > 0.3, printed["isc-eval"]
    submissions = tmp_path / "submissions"
    queries = pd.read_csv(tmp_path / "data" / "query_metadata.csv", dtype=str)["image_id"]
    references = sorted(pd.read_csv(tmp_path / "data" / "reference_metadata.csv", dtype=str)["image_id"])
    for phase in (1, 2):
        matching, descriptors = submissions / f"phase{phase}_matching.csv", submissions / f"phase{phase}_descriptors.h5"
        df, violations = check_matching_csv(matching, phase)
        assert violations == [] and set(df["query_id"]) <= set(queries)
        query_ids, _, reference_ids, reference = read_descriptor_track(descriptors)
        assert query_ids == sorted(q for q in queries if (int(q[1:]) >= 50_000) == (phase == 2))
        assert reference_ids == references
        for submission in (matching, descriptors):
            manifest = json.loads(Path(f"{submission}.manifest.json").read_text())
            assert manifest["md5"] == hashlib.md5(submission.read_bytes()).hexdigest(), submission
    # phase 2 keeps the phase-1 references byte for byte
    assert read_descriptor_track(submissions / "phase1_descriptors.h5")[3].tobytes() == reference.tobytes()
