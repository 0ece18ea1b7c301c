"""Issue 28, items 3, 5 and 8: isc-find on folders named as people name them (spaces, unicode, quotes, one stem
under two suffixes), a cache that follows the images and the model rather than the output, the groups on
stdout, exact copies marked, a threshold in (0, 1], --quiet, and a report that labels and links each image."""

import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isc.extract.image_files import ids_keeping_suffixes, list_images

REPO = Path(__file__).resolve().parents[2]
# PDQ has no default threshold: sscd's verified one, which these images were made to pass
PDQ = ("--model", "pdq", "--workers", "1", "--threshold", "0.55")


def find(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isc.cli.find", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def photo(seed: int) -> Image.Image:
    """A smooth random picture (PDQ needs structure, not noise), 160 x 120."""
    cells = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((160, 120), Image.BICUBIC)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """``beach.png`` and ``beach.jpg`` (one stem), an exact copy under a hostile name, a same-pixels copy in
    another file, an edited copy, and unrelated photos."""
    folder = tmp_path_factory.mktemp("find2") / "my photos"
    (folder / "trip 2021").mkdir(parents=True)
    photo(1).save(folder / "beach.png")
    photo(1).save(folder / "beach.jpg", quality=95)
    shutil.copy(folder / "beach.png", folder / "trip 2021" / 'beach "copy" é.png')
    photo(2).save(folder / "forêt.png")
    photo(2).save(folder / "trip 2021" / "forêt, again.bmp")  # the same pixels, other bytes
    photo(3).resize((128, 96)).save(folder / "l'hôtel smaller.jpg", quality=60)  # an edited copy
    photo(3).save(folder / "l'hôtel.jpg", quality=90)
    for seed in (4, 5):
        photo(seed).save(folder / f"unrelated {seed}.jpg")
    return folder


def test_same_stems_keep_their_suffix_and_nothing_else(photos, tmp_path):
    out = tmp_path / "m.csv"
    done = find(photos, "-o", out, *PDQ, "--quiet")
    assert done.returncode == 0, done.stderr
    ids = set(list_images(photos, suffix_on_clash=True))
    assert {"beach.jpg", "beach.png", "forêt", "trip 2021/forêt, again", "l'hôtel"} <= ids and "beach" not in ids
    matches = pd.read_csv(out, keep_default_na=False)
    assert {"beach.jpg", "beach.png"} <= set(matches["query_id"]) | set(matches["reference_id"])
    # the competition's rule is unchanged: a folder with one stem twice is refused there
    with pytest.raises(Exception, match="would both have id 'beach'"):
        list_images(photos)


def test_shared_ids_keep_suffixes_until_none_is_shared_in_any_order():
    paths = [("beach", Path("beach.jpg")), ("beach", Path("beach.png")), ("beach.jpg", Path("beach.jpg.png")),
             ("sea", Path("sea.jpg"))]
    expected = [("beach.jpg", Path("beach.jpg")), ("beach.png", Path("beach.png")),
                ("beach.jpg.png", Path("beach.jpg.png")), ("sea", Path("sea.jpg"))]
    assert ids_keeping_suffixes(paths) == expected
    assert sorted(ids_keeping_suffixes(paths[::-1])) == sorted(expected)


def test_the_cache_follows_the_images_and_the_model_not_the_output(photos, tmp_path, user_cache):
    first = find(photos, "-o", tmp_path / "groups.json", *PDQ, "--no-crops")
    assert first.returncode == 0 and "9 described this run" in first.stdout, first.stderr
    again = find(photos, "-o", tmp_path / "x.csv", *PDQ, "--no-crops")  # another output, the same images
    assert again.returncode == 0 and "0 described this run" in again.stdout, again.stderr
    assert [p.name for p in (user_cache / "isc" / "find").glob("my photos-*/*.h5")] == ["pdq.h5"]
    assert not [p for p in photos.rglob("*") if p.suffix in (".h5", ".cache", ".partial")]  # nothing in the images
    chosen = find(photos, "-o", tmp_path / "y.csv", *PDQ, "--no-crops", "--cache", tmp_path / "mine")
    assert chosen.returncode == 0 and "9 described this run" in chosen.stdout, chosen.stderr
    assert len(list((tmp_path / "mine").glob("my photos-*/pdq.h5"))) == 1
    # the cache folder may not be a file read: the list file given as the folder
    listing = tmp_path / "list.txt"
    listing.write_text("my photos/beach.png\n")
    refused = find(listing, "-o", tmp_path / "z.csv", *PDQ, "--cache", listing)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "is the input" in refused.stderr


def test_a_cache_per_folder_whatever_its_name(tmp_path):
    from isc.models import create_model
    from isc.pipeline.find import cache_path

    pdq, long_name = create_model("pdq"), tmp_path / ("é" * 120)  # 240 bytes: the name alone nearly fills NAME_MAX
    first = cache_path(tmp_path / "c", long_name, pdq, crops=True)
    assert first == cache_path(tmp_path / "c", tmp_path / "x" / ".." / ("é" * 120), pdq, crops=True)  # resolved
    assert first.parent != cache_path(tmp_path / "c", tmp_path / ("é" * 119), pdq, crops=True).parent
    assert len(os.fsencode(first.parent.name)) <= 255 and first.name == "pdq_crops.h5"


def test_without_output_the_groups_go_to_stdout_exact_copies_marked(photos, tmp_path):
    done = find(photos, *PDQ)
    assert done.returncode == 0, done.stderr
    blocks = [block.splitlines() for block in done.stdout.strip().split("\n\n")]
    lines = {line.split("\t")[0]: line.split("\t")[1:] for block in blocks for line in block}
    copy, pixels = photos / "trip 2021" / 'beach "copy" é.png', photos / "trip 2021" / "forêt, again.bmp"
    assert lines[str(copy)] == [f"same bytes as {photos / 'beach.png'}"]
    assert lines[str(pixels)] == [f"same pixels as {photos / 'forêt.png'}"]
    assert lines[str(photos / "l'hôtel smaller.jpg")] == [] and str(photos / "l'hôtel.jpg") in lines  # edited
    assert not any(str(photos / f"unrelated {seed}.jpg") in lines for seed in (4, 5))
    assert "pairs scoring >= 0.5" in done.stderr and not done.stderr.startswith("Traceback")
    out = tmp_path / "m.csv"
    assert find(photos, "-o", out, *PDQ, "--quiet").returncode == 0
    table = pd.read_csv(out, keep_default_na=False)
    exact = dict(zip(zip(table["query_path"], table["reference_path"], strict=True), table["exact"], strict=True))
    assert exact.get((str(photos / "beach.png"), str(copy))) == "bytes"
    assert exact.get((str(photos / "forêt.png"), str(pixels))) == "pixels"
    assert exact.get((str(photos / "l'hôtel.jpg"), str(photos / "l'hôtel smaller.jpg"))) == ""
    assert find(photos, "-o", tmp_path / "m.json", *PDQ, "--quiet").returncode == 0
    pairs = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["pairs"]
    assert {pair["exact"] for pair in pairs} >= {"bytes", "pixels", None}


@pytest.mark.parametrize("threshold, verified", [("1.5", True), ("0", True), ("-1", True), ("1.1", False)])
def test_a_threshold_outside_0_1_is_refused(photos, tmp_path, threshold, verified):
    """A score is a cosine, at most 1; verified, plus a bonus of up to 0.2 for matching local features."""
    done = find(photos, "-o", tmp_path / "m.csv", *PDQ, "--threshold", threshold, *([] if verified else ["--no-verify"]))
    assert done.returncode == 2 and done.stdout == "" and not (tmp_path / "m.csv").exists()
    highest = "1.2" if verified else "1"
    assert done.stderr == (f"isc-find: error: --threshold must be in (0, {highest}] ({highest}: the same image"
                           f"{', verified' if verified else ''}), got {threshold}\n")


def test_quiet_silences_informational_warnings_not_errors(photos, tmp_path):
    loud = find(photos, "-o", tmp_path / "m.csv", *PDQ)
    assert "warning: k = 10 is larger than the 8 references" in loud.stderr  # PDQ: not L2-normalised either
    quiet = find(photos, "-o", tmp_path / "m.csv", *PDQ, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    broken = find(photos, "-o", tmp_path / "m.csv", *PDQ, "--quiet", "--k", "0")
    assert broken.returncode == 2 and "error" in broken.stderr
    # unreadable images without an output file: the warning is their only record, --quiet keeps it
    folder = tmp_path / "some"
    folder.mkdir()
    for name in ("l'hôtel.jpg", "l'hôtel smaller.jpg"):
        shutil.copy(photos / name, folder / name)
    (folder / "broken «é».jpg").write_bytes(b"not a JPEG")
    done = find(folder, *PDQ, "--quiet")
    assert done.returncode == 0 and done.stdout.count("\n") == 2, done.stderr
    assert done.stderr.startswith(f"isc-find: warning: 1 unreadable image(s) left out: {folder / 'broken «é».jpg'} (")


def test_the_progress_bar_moves_every_few_images():
    from isc.cli.find import FIND_BATCH_SIZE, build_parser

    assert build_parser().parse_args(["x"]).batch_size == FIND_BATCH_SIZE <= 8
    assert f"images per batch (default {FIND_BATCH_SIZE})" in " ".join(build_parser().format_help().split())


def test_the_report_labels_each_side_links_the_files_and_shows_the_groups(photos, tmp_path):
    queries, references = tmp_path / "queries <q>", tmp_path / "references"
    queries.mkdir(), references.mkdir()
    shutil.copy(photos / "l'hôtel smaller.jpg", queries / "l'hôtel smaller.jpg")
    for name in ("l'hôtel.jpg", "unrelated 4.jpg", "unrelated 5.jpg"):
        shutil.copy(photos / name, references / name)
    page = tmp_path / "report" / "two.html"
    page.parent.mkdir()
    done = find(queries, references, "-o", tmp_path / "m.csv", "--report", page, *PDQ, "--quiet")
    assert done.returncode == 0, done.stderr
    text = page.read_text(encoding="utf-8")
    link = html.escape(quote(os.path.relpath(queries / "l'hôtel smaller.jpg", page.parent)))
    shown = html.escape(str(queries / "l'hôtel smaller.jpg"))
    assert f'query: <a href="{link}">{shown}</a>' in text
    assert 'reference: <a href="../references/l%27h%C3%B4tel.jpg">' in text and "<q>" not in text
    assert "<h2>Groups" not in text
    one = tmp_path / "one.html"
    assert find(photos, "--report", one, *PDQ, "--quiet").returncode == 0
    text = one.read_text(encoding="utf-8")
    assert "<h2>Groups <small>(3 shown of 3)</small></h2>" in text
    assert html.escape(quote(os.path.relpath(photos / "trip 2021" / 'beach "copy" é.png', tmp_path))) in text
    assert "exact copy: same bytes" in text


def test_a_small_folder_is_decoded_in_this_process_with_the_same_descriptors(photos, tmp_path, monkeypatch):
    """Issue 28, item 6: a folder of at most IN_PROCESS_DECODING images starts no decoding process (their start
    cost more than the decoding on 55 images) unless --workers is given, and its descriptors are the same."""
    import concurrent.futures

    from isc.extract.extraction import ExtractOptions
    from isc.models import create_model
    from isc.pipeline.find import IN_PROCESS_DECODING, describe

    class NoPool:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("a decoding process was started")

    model = create_model("pdq")
    images = list_images(photos, suffix_on_clash=True)
    assert 2 <= len(images) <= IN_PROCESS_DECODING
    pooled = describe(photos, tmp_path / "pooled.h5", model, ExtractOptions(workers=2), quiet=True)
    with monkeypatch.context() as patched:
        patched.setattr(concurrent.futures, "ProcessPoolExecutor", NoPool)  # the pool pixel_batches imports
        here = describe(photos, tmp_path / "here.h5", model, ExtractOptions(), quiet=True)
        with pytest.raises(AssertionError, match="decoding process"):  # told: the processes start
            describe(photos, tmp_path / "told.h5", model, ExtractOptions(workers=2), quiet=True)
    assert here.ids == pooled.ids and here.unreadable == pooled.unreadable
    assert np.array_equal(here.descriptors, pooled.descriptors)
