"""isc-synth --photos/--drawings: non-overlapping detailed tiles, one split per photo, each base image used once."""

from collections import defaultdict
from itertools import combinations

import numpy as np
import pytest
import skimage.data
from conftest import cli, one_line_error
from PIL import Image, ImageDraw

from isc.core.files import InputError
from isc.core.tables import read_ground_truth, read_metadata
from isc.synth.dataset import generate_dataset, read_manifest
from isc.synth.photos import (
    BaseSource,
    PhotoOptions,
    detail,
    detailed_tiles,
    grid_boxes,
    plan_base_images,
    render_base,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera",
          "gravel", "grass", "brick", "moon", "retina")
COUNTS = {"references": 24, "training": 12, "queries": 10, "phase2_queries": 4, "min_size": 48, "max_size": 96}
OPTIONS = {"tile_size": 128, "max_tiles_per_photo": 3}
SPLIT_OF_PREFIX = {"R": "reference", "T": "training", "Q": "query"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(photos, drawings): scikit-image's sample photos scaled to a long side of 512, plus a flat grey photo and
    a smooth gradient that the detail filter must drop; drawings on transparency."""
    root = tmp_path_factory.mktemp("photos")
    photos, drawings = root / "photos", root / "drawings"
    (photos / "more").mkdir(parents=True)
    drawings.mkdir()
    for i, name in enumerate(PHOTOS):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.thumbnail((512, 512))
        image.save(photos / ("more" if i % 2 else "") / f"{name}.png")
    Image.new("RGB", (512, 384), (120, 130, 140)).save(photos / "flat.jpg")
    ramp = np.linspace(0, 255, 512, dtype=np.float32)
    Image.fromarray(np.stack([np.tile(ramp, (384, 1))] * 3, axis=-1).astype(np.uint8)).save(photos / "gradient.png")
    (photos / "notes.txt").write_text("not an image")
    for i in range(12):
        drawing = Image.new("RGBA", (240, 200), (0, 0, 0, 0))
        draw = ImageDraw.Draw(drawing)
        for k in range(6 + i):  # a different scribble each: enough detail to be kept
            draw.line([(20 + 17 * ((k * 7 + i) % 11), 20 + 15 * ((k * 5 + 2 * i) % 11)),
                       (200 - 13 * ((k * 3 + i) % 13), 180 - 11 * ((k + 3 * i) % 15))],
                      fill=(40 * k % 256, 90, 200 - 10 * i, 255), width=3 + k % 4)
        drawing.save(drawings / f"d{i:02d}.png")
    return photos, drawings


@pytest.fixture(scope="module")
def photo_set(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("photo_set")
    generate_dataset(root, seed=3, workers=1, quiet=True,
                     base_images=PhotoOptions(photos=folders[0], drawings=folders[1], **OPTIONS), **COUNTS)
    return root


def disjoint(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_tiles_do_not_overlap_and_each_photo_feeds_one_split(photo_set):
    bases = read_manifest(photo_set)["base_images"]
    boxes, splits = defaultdict(list), defaultdict(set)
    for image, source in bases.items():
        if "photo" in source:
            boxes[source["photo"]].append(tuple(source["box"]))
            splits[source["photo"]].add(SPLIT_OF_PREFIX[image[0]])
    assert len(boxes) >= 5
    assert all(len(s) == 1 for s in splits.values()), splits
    for photo, tiles in boxes.items():
        assert len(tiles) <= OPTIONS["max_tiles_per_photo"]
        assert all(disjoint(a, b) for a, b in combinations(tiles, 2)), photo
        assert all(b[2] - b[0] == b[3] - b[1] == OPTIONS["tile_size"] for b in tiles)
    assert {"flat.jpg", "gradient.png"}.isdisjoint(boxes)  # no detail, no tile
    assert "more/coffee.png" in boxes  # photos are found in sub-folders


def test_no_base_image_is_used_twice_and_every_split_mixes_photos_and_drawings(photo_set):
    bases = read_manifest(photo_set)["base_images"]
    keys = [(s.get("photo") or s["drawing"], tuple(s.get("box", ()))) for s in bases.values()]
    assert len(keys) == len(set(keys))
    kinds = {split: {("photo" if "photo" in s else "drawing") for i, s in bases.items() if SPLIT_OF_PREFIX[i[0]] == split}
             for split in SPLIT_OF_PREFIX.values()}
    assert kinds["reference"] == kinds["training"] == {"photo", "drawing"}  # photos fall short: drawings fill


def test_ground_truth_is_consistent_with_the_base_images(photo_set):
    bases = read_manifest(photo_set)["base_images"]
    references = set(read_metadata(photo_set / "reference_metadata.csv", "reference")["image_id"])
    training = set(read_metadata(photo_set / "training_metadata.csv", "training")["image_id"])
    truth = {**dict(read_ground_truth(photo_set / "ground_truth.csv")[["query_id", "reference_id"]].values),
             **dict(read_ground_truth(photo_set / "ground_truth_phase2.csv")[["query_id", "reference_id"]].values)}
    assert len(truth) == COUNTS["queries"] + COUNTS["phase2_queries"]
    assert references | training <= bases.keys()  # every reference and training image is a tile or a drawing
    for query, reference in truth.items():
        if reference:  # an edited copy of a reference: no base image of its own
            assert reference in references and query not in bases
        else:  # a distractor: its own base image, from photos that feed no reference
            assert query in bases
    assert len(bases) == len(references) + len(training) + sum(1 for r in truth.values() if not r)


def test_same_seed_same_bytes_other_seed_other_plan(folders, photo_set, tmp_path):
    options = PhotoOptions(photos=folders[0], drawings=folders[1], **OPTIONS)
    generate_dataset(tmp_path / "again", seed=3, workers=2, quiet=True, base_images=options, **COUNTS)
    generate_dataset(tmp_path / "other", seed=4, workers=1, quiet=True, base_images=options, **COUNTS)
    for split in ("reference", "training", "query"):
        first, again, other = (read_metadata(root / f"{split}_metadata.csv", split)["md5_checksum"].tolist()
                               for root in (photo_set, tmp_path / "again", tmp_path / "other"))
        assert first == again
        assert first != other
    assert read_manifest(tmp_path / "again")["base_images"] == read_manifest(photo_set)["base_images"]


def test_detail_filter_drops_flat_tiles(folders, tmp_path):
    gravel = np.asarray(Image.fromarray(skimage.data.gravel()).convert("RGB"))[:256, :256]
    half_flat = np.full((256, 512, 3), 128, np.uint8)
    half_flat[:, 256:] = gravel
    Image.fromarray(half_flat).save(tmp_path / "half.png")
    kept = detailed_tiles(tmp_path / "half.png", 128, 300)
    assert kept == [b for b in grid_boxes(512, 256, 128) if b[0] >= 256]
    assert detail(Image.new("RGB", (300, 200), (10, 200, 30))) < 50
    assert detail(Image.open(folders[0] / "gradient.png")) < 300
    assert detail(Image.fromarray(gravel)) > 300


def test_a_tile_renders_its_own_part_of_the_photo(tmp_path):
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    pixels = np.zeros((256, 256, 3), np.float32)
    for k, colour in enumerate(colours):
        y, x = divmod(k, 2)
        pixels[128 * y:128 * (y + 1), 128 * x:128 * (x + 1)] = colour
    noisy = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "quadrants.png")
    for k, box in enumerate(grid_boxes(256, 256, 128)):
        image = render_base(BaseSource(str(tmp_path / "quadrants.png"), "quadrants.png", box), rng, 40, 90)
        assert 40 <= max(image.size) <= 90 and image.mode == "RGB"
        assert np.abs(np.asarray(image, np.float32).mean(axis=(0, 1)) - colours[k]).max() < 12


def test_a_drawing_lies_whole_on_a_plain_background(folders):
    rng = np.random.default_rng(1)
    image = np.asarray(render_base(BaseSource(str(folders[1] / "d00.png"), "d00.png"), rng, 80, 120), np.int16)
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (np.abs(corners - corners[0]).max(axis=1) <= 2).sum() >= 3  # the canvas is one colour


def test_too_few_base_images_is_one_clear_error(folders, tmp_path):
    options = PhotoOptions(photos=folders[0], max_tiles_per_photo=1, tile_size=128)
    with pytest.raises(InputError, match=r"not enough base images: 30 references .* 12 from 14 photos"):  # 1 tile each
        plan_base_images(options, {"reference": 30, "training": 10, "query": 5}, seed=0, quiet=True)
    with pytest.raises(InputError, match="not a folder"):
        generate_dataset(tmp_path / "out", base_images=PhotoOptions(photos=tmp_path / "missing"), quiet=True)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_cli_photos_and_drawings(folders, tmp_path):
    out = tmp_path / "set"
    run = cli("synth", out, "--photos", folders[0], "--drawings", folders[1], "--tile-size", "128",
              "--max-tiles-per-photo", "3", "--references", "8", "--training", "4", "--queries", "4",
              "--phase2-queries", "0", "--min-size", "48", "--max-size", "64", "--workers", "1", "--quiet")
    assert run.returncode == 0, run.stderr
    assert read_manifest(out)["params"]["base_images"]["tile_size"] == 128
    assert len(list((out / "reference_images").iterdir())) == 8
    for bad, message in ((["--photos", str(tmp_path / "missing")], "not a folder"),
                         (["--photos", str(folders[0]), "--tile-size", "0"], "--tile-size"),
                         (["--photos", str(folders[0]), "--references", "5000"], "not enough base images")):
        one_line_error(cli("synth", tmp_path / "bad", *bad, "--quiet"), "isc-synth", message)
