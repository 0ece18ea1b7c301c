"""isc-synth: layout, true MD5s, determinism, ground truth that holds, edits on odd inputs, the CLI."""

import hashlib
import io

import numpy as np
import pytest
from conftest import MINI_DATASET, cli, one_line_error
from PIL import Image

from isc.cli import synth as cli_synth
from isc.core.competition import ID_PATTERNS
from isc.core.files import InputError
from isc.core.tables import read_ground_truth, read_metadata
from isc.synth.dataset import generate_dataset, read_manifest
from isc.synth.draw import base_image
from isc.synth.edits import EDITS, PHOTOMETRIC_EDITS, random_edit

SPLITS = ("query", "reference", "training")
CHANGE_COLOURS = {"colour", "overlay_onto"}  # the edits that leave little of the original colours
BUCKET = "s3://drivendata-competition-fb-isc-data/all"


def thumbnail(path, size=16, transpose=None) -> np.ndarray:
    """A zero-mean, unit-norm grayscale thumbnail: its dot products are correlations."""
    with Image.open(path) as image:
        image = image.convert("L").resize((size, size), Image.Resampling.BOX)
        pixels = np.asarray(image if transpose is None else image.transpose(transpose), np.float64).ravel()
    pixels -= pixels.mean()
    return pixels / max(np.linalg.norm(pixels), 1e-9)


def colour_histogram(path, bins=6) -> np.ndarray:
    """Normalised RGB histogram: crops, flips, rotations and small overlays barely move it."""
    with Image.open(path) as image:
        levels = np.asarray(image.convert("RGB").resize((64, 64)), np.int64) * bins // 256
    counts = np.bincount(((levels[..., 0] * bins + levels[..., 1]) * bins + levels[..., 2]).ravel(), minlength=bins**3)
    return counts / counts.sum()


def metadata_md5s(root) -> dict[str, str]:
    return {split: dict(zip(*read_metadata(root / f"{split}_metadata.csv", split)[["image_id", "md5_checksum"]].T.values,
                            strict=True)) for split in SPLITS}


def test_layout_ids_and_counts(mini_dataset):
    metadata = {split: read_metadata(mini_dataset / f"{split}_metadata.csv", split) for split in SPLITS}
    assert len(metadata["reference"]) == MINI_DATASET["references"]
    assert len(metadata["training"]) == MINI_DATASET["training"]
    assert len(metadata["query"]) == MINI_DATASET["queries"] + MINI_DATASET["phase2_queries"]
    for split, df in metadata.items():
        files = sorted(p.name for p in (mini_dataset / f"{split}_images").iterdir())
        assert files == sorted(f"{i}.jpg" for i in df["image_id"])
        assert all(ID_PATTERNS[split].fullmatch(i) for i in df["image_id"])
        assert (df["s3_uri"] == [f"{BUCKET}/{split}_images/{i}.jpg" for i in df["image_id"]]).all()
    query_ids = metadata["query"]["image_id"].tolist()
    assert query_ids[0] == "Q00000" and query_ids[MINI_DATASET["queries"]] == "Q50000"
    assert sorted(p.name for p in mini_dataset.iterdir() if p.is_file()) == [
        "ground_truth.csv", "ground_truth_phase2.csv", "isc_synth.json",
        "query_metadata.csv", "reference_metadata.csv", "training_metadata.csv"]


def test_images_are_jpegs_in_the_size_range(mini_dataset):
    for split in ("reference", "training"):
        for path in (mini_dataset / f"{split}_images").iterdir():
            with Image.open(path) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert MINI_DATASET["min_size"] <= max(image.size) <= MINI_DATASET["max_size"]
    sizes = {Image.open(p).size for p in (mini_dataset / "query_images").iterdir()}
    assert len(sizes) > 20  # queries come in many shapes


def test_metadata_md5s_are_true(mini_dataset):
    for split, md5s in metadata_md5s(mini_dataset).items():
        for image_id, md5 in md5s.items():
            assert hashlib.md5((mini_dataset / f"{split}_images" / f"{image_id}.jpg").read_bytes()).hexdigest() == md5


def test_ground_truth_files(mini_dataset):
    phase1 = read_ground_truth(mini_dataset / "ground_truth.csv")
    phase2 = read_ground_truth(mini_dataset / "ground_truth_phase2.csv")
    assert phase1["query_id"].tolist() == [f"Q{i:05d}" for i in range(MINI_DATASET["queries"])]
    assert phase2["query_id"].tolist() == [f"Q{50_000 + i:05d}" for i in range(MINI_DATASET["phase2_queries"])]
    references = set(read_metadata(mini_dataset / "reference_metadata.csv")["image_id"])
    for gt, n in ((phase1, MINI_DATASET["queries"]), (phase2, MINI_DATASET["phase2_queries"])):
        matched = gt[gt["reference_id"] != ""]
        assert len(matched) == round(n / 2)
        assert set(matched["reference_id"]) <= references
    # the pairing is shuffled: the matched references are not simply the queries' own numbers
    matched = phase1[phase1["reference_id"] != ""]
    assert sum(int(q[1:]) == int(r[1:]) for q, r in zip(matched["query_id"], matched["reference_id"], strict=True)) <= 1
    summary = read_manifest(mini_dataset)["summary"]
    assert summary["matches"] == round(MINI_DATASET["queries"] / 2)
    assert summary["phase2_matches"] == round(MINI_DATASET["phase2_queries"] / 2)


def test_matched_queries_derive_from_their_reference(mini_dataset):
    manifest = read_manifest(mini_dataset)
    gt = read_ground_truth(mini_dataset / "ground_truth.csv")
    gt2 = read_ground_truth(mini_dataset / "ground_truth_phase2.csv")
    pairs = [(q, r) for q, r in zip([*gt["query_id"], *gt2["query_id"]], [*gt["reference_id"], *gt2["reference_id"]],
                                    strict=True) if r]
    reference_ids = sorted(p.stem for p in (mini_dataset / "reference_images").iterdir())
    paths = [mini_dataset / "reference_images" / f"{r}.jpg" for r in reference_ids]
    # each reference as stored, mirrored and upside down: [3, n, 256]
    references = np.stack([np.stack([thumbnail(p, transpose=t) for p in paths])
                           for t in (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM)])
    # edits that move no pixel (or only mirror the image) keep the thumbnail: the true reference is the
    # closest one (absolute correlation: an inversion gives -1)
    easy = [(q, r) for q, r in pairs if set(manifest["query_edits"][q]) <= PHOTOMETRIC_EDITS | {"flip"}]
    assert len(easy) >= 3
    for query, reference in easy:
        correlations = np.abs(references @ thumbnail(mini_dataset / "query_images" / f"{query}.jpg")).max(axis=0)
        assert reference_ids[int(np.argmax(correlations))] == reference, (query, manifest["query_edits"][query])
        assert correlations.max() > 0.8
    # edits that keep the colours (crops, rotations, blur, text...) keep the colour histogram
    keeps_colours = [(q, r) for q, r in pairs if not set(manifest["query_edits"][q]) & CHANGE_COLOURS]
    assert len(keeps_colours) >= 6
    histograms = np.stack([colour_histogram(p) for p in paths])
    hits = [reference_ids[int(np.argmax(np.minimum(histograms, colour_histogram(
        mini_dataset / "query_images" / f"{q}.jpg")).sum(axis=1)))] == r for q, r in keeps_colours]
    assert np.mean(hits) >= 0.8


def test_references_and_training_are_distinct(mini_dataset):
    md5s = metadata_md5s(mini_dataset)
    assert not set(md5s["reference"].values()) & set(md5s["training"].values())
    assert len(set(md5s["reference"].values())) == len(md5s["reference"])
    references = np.stack([thumbnail(p) for p in sorted((mini_dataset / "reference_images").iterdir())])
    training = np.stack([thumbnail(p) for p in sorted((mini_dataset / "training_images").iterdir())])
    assert (references @ training.T).max() < 0.95
    within = references @ references.T
    np.fill_diagonal(within, 0)
    assert within.max() < 0.95


def test_distractor_queries_copy_no_reference(mini_dataset):
    gt = read_ground_truth(mini_dataset / "ground_truth.csv")
    manifest = read_manifest(mini_dataset)
    references = np.stack([thumbnail(p) for p in sorted((mini_dataset / "reference_images").iterdir())])
    for query in gt.loc[gt["reference_id"] == "", "query_id"]:
        if set(manifest["query_edits"][query]) <= PHOTOMETRIC_EDITS:
            assert np.abs(references @ thumbnail(mini_dataset / "query_images" / f"{query}.jpg")).max() < 0.9


def test_same_seed_same_bytes_whatever_the_workers(mini_dataset, tmp_path):
    # a pool of two processes rebuilds the fixture (one process) byte for byte
    generate_dataset(tmp_path / "again", workers=2, quiet=True, **MINI_DATASET)
    for name in ("query_metadata.csv", "reference_metadata.csv", "training_metadata.csv", "ground_truth.csv",
                 "ground_truth_phase2.csv", "isc_synth.json"):
        assert (tmp_path / "again" / name).read_bytes() == (mini_dataset / name).read_bytes(), name


def test_other_seed_other_images(mini_dataset, tmp_path):
    small = {**MINI_DATASET, "references": 3, "queries": 2, "phase2_queries": 0, "training": 2}
    generate_dataset(tmp_path / "seed0", workers=1, quiet=True, **small)
    generate_dataset(tmp_path / "seed1", workers=1, quiet=True, **{**small, "seed": 1})
    fixture, same, other = metadata_md5s(mini_dataset), metadata_md5s(tmp_path / "seed0"), metadata_md5s(tmp_path / "seed1")
    # each image depends on (seed, split, index) only: a smaller run is a prefix of a larger one
    for split in ("reference", "training"):
        assert same[split].items() <= fixture[split].items()
        assert not set(other[split].values()) & set(fixture[split].values())


def test_rerun_overwrites_its_own_output_and_drops_stale_images(tmp_path):
    out = tmp_path / "out"
    generate_dataset(out, references=5, queries=2, phase2_queries=1, training=3, min_size=32, max_size=48,
                     workers=1, quiet=True)
    generate_dataset(out, references=2, queries=2, phase2_queries=0, training=1, min_size=32, max_size=48,
                     workers=1, quiet=True)
    assert sorted(p.name for p in (out / "reference_images").iterdir()) == ["R000000.jpg", "R000001.jpg"]
    assert sorted(p.name for p in (out / "query_images").iterdir()) == ["Q00000.jpg", "Q00001.jpg"]
    assert read_ground_truth(out / "ground_truth_phase2.csv").empty
    assert read_manifest(out)["complete"] is True


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not written by isc-synth"):
        generate_dataset(tmp_path, references=1, queries=1, phase2_queries=0, training=1, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("bad", [{"references": -1}, {"min_size": 100, "max_size": 50}, {"match_fraction": 1.5},
                                 {"queries": 50_001}])
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(InputError):
        generate_dataset(tmp_path / "out", **{"references": 1, "queries": 1, "phase2_queries": 0, "training": 1, **bad})
    assert not (tmp_path / "out").exists()


def test_base_images_vary(tmp_path):
    images = [base_image(np.random.default_rng(i), 64, 128) for i in range(12)]
    assert len({im.size for im in images}) > 6
    assert all(64 <= max(im.size) <= 128 and im.mode == "RGB" for im in images)
    assert np.std([np.asarray(im).mean() for im in images]) > 5
    assert np.asarray(base_image(np.random.default_rng(3), 64, 128)).tobytes() == np.asarray(images[3]).tobytes()


def odd_images():
    rgba = Image.new("RGBA", (40, 30), (10, 200, 30, 0))
    rgba.paste((255, 0, 0, 128), (5, 5, 20, 20))
    return {
        "1x1": Image.new("RGB", (1, 1), (5, 6, 7)),
        "3x2-gray": Image.new("L", (3, 2), 128),
        "rgba": rgba,
        "palette": Image.new("P", (17, 50), 3),
        "wide": Image.new("RGB", (300, 4), (0, 0, 0)),
        "photo": base_image(np.random.default_rng(0), 64, 96),
    }


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_every_edit_runs_on_odd_inputs(edit):
    overlays = [Image.new("LA", (9, 9))]
    for name, image in odd_images().items():
        for seed in range(3):
            out = EDITS[edit](image, np.random.default_rng(seed), overlays if seed else ())
            assert out.mode == "RGB" and min(out.size) >= 1, (edit, name)
    photo = odd_images()["photo"]
    first = EDITS[edit](photo, np.random.default_rng(7))
    assert first.tobytes() == EDITS[edit](photo, np.random.default_rng(7)).tobytes()  # the rng decides everything


def test_random_edit_changes_the_image_and_chains():
    photo = base_image(np.random.default_rng(1), 96, 128)
    outputs = [random_edit(photo, np.random.default_rng(seed)) for seed in range(20)]
    assert all(out.mode == "RGB" for out in outputs)
    assert sum(out.size != photo.size for out in outputs) >= 5  # geometry changes happen
    assert all(out.size != photo.size or out.tobytes() != photo.tobytes() for out in outputs)
    buffer = io.BytesIO()
    random_edit(Image.new("L", (5, 5)), np.random.default_rng(0)).save(buffer, "JPEG")  # savable as a query


def test_cli_generates_a_dataset(tmp_path):
    out = tmp_path / "cli"
    result = cli("synth", str(out), "--seed", "3", "--references", "4", "--queries", "3", "--phase2-queries", "1",
                          "--training", "2", "--min-size", "40", "--max-size", "64", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "4 references" in result.stdout and "3 phase-1 queries" in result.stdout
    assert len(read_metadata(out / "query_metadata.csv", "query")) == 4
    assert read_manifest(out)["params"]["seed"] == 3
    quiet = cli("synth", str(out), "--seed", "3", "--references", "4", "--queries", "3", "--phase2-queries", "1",
                         "--training", "2", "--min-size", "40", "--max-size", "64", "--workers", "1", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


@pytest.mark.parametrize("args, message", [
    (["--references", "-3"], "argument --references: must be >= 0"),
    (["--seed", "abc"], "argument --seed: not an integer"),
])
def test_cli_bad_arguments_one_line_error(tmp_path, args, message):
    result = cli("synth", str(tmp_path / "out"), *args)
    one_line_error(result, "isc-synth", message)


def test_cli_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    result = cli("synth", str(tmp_path), "--quiet")
    one_line_error(result, "isc-synth", "not written by isc-synth")


def test_cli_help_explains_every_option():
    result = cli("synth", "--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # argparse lists an option even with no help: each must have its own text, and be printed
    actions = [a for a in cli_synth.build_parser()._actions if a.dest != "help"]
    assert [a.dest for a in actions if not (a.help or "").strip()] == []
    for action in actions:
        assert (action.option_strings[-1] if action.option_strings else action.metavar or action.dest) in result.stdout
    assert len(actions) >= 15
