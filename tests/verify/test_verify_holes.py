"""Verification earns its place: on a small labelled set whose distractors are near-duplicates of the references
(the same picture at low resolution, other details), isc-run's default, which verifies the matching track's
candidates, scores a clearly higher µAP than ``--no-verify``."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from isc.core.tables import write_metadata
from isc.synth.draw import base_image
from isc.synth.edits import colour, crop, jpeg, rotate, scale, text

REPO = Path(__file__).resolve().parents[2]
SIZE = (256, 192)
GROUPS, MEMBERS = 6, 3  # references: 6 groups of 3 near-duplicates


def _low(rng: np.random.Generator) -> np.ndarray:
    """A group's shared picture: what a global descriptor sees (the layout and colours, no detail)."""
    return np.asarray(base_image(rng, 256, 256).resize(SIZE).filter(ImageFilter.GaussianBlur(10)), np.float32)


def _detail(rng: np.random.Generator) -> np.ndarray:
    """A member's own detail: the high frequencies of another picture, which local features see."""
    image = base_image(rng, 256, 256).resize(SIZE)
    return np.asarray(image, np.float32) - np.asarray(image.filter(ImageFilter.GaussianBlur(3)), np.float32)


def _picture(low: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(np.clip(low + 0.8 * _detail(rng), 0, 255).astype(np.uint8))


def build_near_duplicates(root: Path, seed: int = 0) -> Path:
    """References R000000-R000017 in groups of 3 sharing their low frequencies; queries Q00000-Q00011 edited copies
    of the first two of each group, Q00012-Q00015 new pictures of the groups' kind (no copy); 40 training images;
    the metadata CSVs and the ground truth ``gt.csv``."""
    for split in ("query", "reference", "training"):
        (root / f"{split}_images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    references = []
    for _ in range(GROUPS):
        low = _low(rng)
        references += [_picture(low, rng) for _ in range(MEMBERS)]
    for number, image in enumerate(references):
        image.save(root / "reference_images" / f"R{number:06d}.jpg", quality=92)
    edits = (crop, rotate, scale, colour, text, jpeg)
    truth = []
    for group in range(GROUPS):
        for member in range(2):
            source = group * MEMBERS + member
            query = f"Q{len(truth):05d}"
            edits[(group + member) % len(edits)](references[source], rng).convert("RGB").save(
                root / "query_images" / f"{query}.jpg", quality=85)
            truth.append((query, f"R{source:06d}"))
    for _ in range(4):
        query = f"Q{len(truth):05d}"
        _picture(_low(rng), rng).save(root / "query_images" / f"{query}.jpg", quality=85)
        truth.append((query, ""))
    for number in range(40):
        base_image(rng, 160, 256).save(root / "training_images" / f"T{number:06d}.jpg", quality=90)
    for split in ("query", "reference", "training"):
        files = sorted((root / f"{split}_images").iterdir())
        write_metadata(root / f"{split}_metadata.csv", pd.DataFrame({
            "image_id": [f.stem for f in files], "s3_uri": [f"s3://isc/{split}_images/{f.name}" for f in files],
            "md5_checksum": [hashlib.md5(f.read_bytes()).hexdigest() for f in files]}))
    pd.DataFrame(truth, columns=["query_id", "reference_id"]).to_csv(root / "gt.csv", index=False)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """isc-run on the set (pdq descriptors: no extra), with its default verification and with --no-verify:
    {"verify" | "no-verify": (work folder, summary)}. Two whole runs: the claim is about isc-run's µAP."""
    root = tmp_path_factory.mktemp("near_duplicates")
    data = build_near_duplicates(root / "data")
    done = {}
    for name in ("verify", "no-verify"):
        work = root / name
        run = subprocess.run([sys.executable, "-m", "isc.cli.run", str(work), "--data", str(data), "--model", "pdq",
                              "--pca-dim", "16", "--phases", "1", "--gt", str(data / "gt.csv"), "--quiet", "--json",
                              *(["--no-verify"] if name == "no-verify" else [])],
                             capture_output=True, text=True, timeout=600, cwd=REPO)
        assert run.returncode == 0, run.stderr[-2000:]
        done[name] = (work, json.loads(run.stdout))
    return done


def _sources_outranked(predictions: pd.DataFrame, truth: pd.DataFrame) -> int:
    """How many near-duplicates of a query's source (same group) score above the source, over every query."""
    count = 0
    for query, source in zip(truth["query_id"], truth["reference_id"], strict=True):
        candidates = predictions[predictions["query_id"] == query]
        found = candidates.loc[candidates["reference_id"] == source, "score"]
        bar = found.iloc[0] if len(found) else -np.inf
        group = int(source[1:]) // MEMBERS
        count += int(((candidates["score"] > bar) & (candidates["reference_id"].str[1:].astype(int) // MEMBERS
                                                     == group)).sum())
    return count


def test_the_distractors_are_near_duplicates_that_fool_the_global_descriptor(runs):
    work, _ = runs["no-verify"]
    truth = pd.read_csv(work.parent / "data" / "gt.csv", dtype=str, keep_default_na=False)
    predictions = pd.read_csv(work / "predictions_phase1.csv", dtype={"query_id": str, "reference_id": str})
    assert _sources_outranked(predictions, truth[truth["reference_id"] != ""]) >= 3  # 5 with this seed


def test_isc_runs_default_verification_beats_no_verify_by_a_clear_margin(runs):
    verified, plain = (runs[name][1]["metrics"]["phase 1 matching"] for name in ("verify", "no-verify"))
    # seed 0: 0.899 against 0.556; the set drawn from seeds 1, 2, 3: +0.19, +0.05, +0.18. The runs are
    # deterministic (PDQ, SIFT, seeded RANSAC), so the margin asked only has to hold for this seed
    assert verified["muap"] > plain["muap"] + 0.15, (verified, plain)
    assert verified["n_true_positives"] == plain["n_true_positives"]  # the same candidates, re-ranked
    steps = {name: {(s["stage"], s["target"]) for s in runs[name][1]["steps"]} for name in runs}
    verifying = {("calibrate", "copies"), ("verify", "phase 1")}  # the calibration fitted on self-made copies
    assert verifying <= steps["verify"] and not verifying & steps["no-verify"]


def test_verifying_in_this_process_leaves_its_thread_counts():
    """workers=0 verifies here with one thread per library, as a worker does, then gives the caller its own
    counts back: a later extraction in the same process computes with the threads it had (and the same bits)."""
    import cv2
    import torch

    from isc.verify.workers import task_map

    torch.set_num_threads(2)
    before = torch.get_num_threads(), cv2.getNumThreads()
    with task_map(0) as map_tasks:
        assert list(map_tasks(abs, iter([-1, 2]), 1)) == [1, 2]
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before
