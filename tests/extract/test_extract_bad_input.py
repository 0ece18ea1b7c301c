"""isc-extract against bad input: outputs onto inputs, bad numbers and devices, non-finite descriptors,
images replaced under a resume, broken, 16-bit and float images, links, list files and selections."""

import json
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import cli, one_line_error
from PIL import Image
from skimage import data

from isc.cli.extract import main as extract_main
from isc.cli.run import main as run_main
from isc.core.descriptors import read_descriptor_attrs, read_descriptors
from isc.core.files import InputError
from isc.core.partial_log import PartialLog
from isc.extract.decode import decode_with_pillow
from isc.extract.extraction import extract, extraction_config, is_complete
from isc.extract.image_files import list_images, list_split_images
from isc.models import create_model

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


# a random-init ResNet at 32 pixels: fast, and enough wherever only ids, shapes and files are checked
FAST = ["--model", "resnet10t", "--image-size", "32", "--workers", "0", "--quiet"]


RUN_FAST = ["--model", "resnet10t", "--quiet"]


def _photo(name: str, size=(96, 72)) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size)


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three reference-named JPEGs of different photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, name in enumerate(("astronaut", "coffee", "chelsea")):
        _photo(name).save(folder / f"R{k:06d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def lite():
    # real ImageNet weights: descriptors of different photos differ, so closeness means something
    return create_model("efficientnet_lite0", image_size=64, pool="mean")


def _descriptors(path: Path) -> dict[str, np.ndarray]:
    ids, descriptors, _ = read_descriptors(path)
    return dict(zip(ids, descriptors, strict=True))


def test_output_onto_an_input_image_is_refused_naming_both(photos, tmp_path):
    image = photos / "R000000.jpg"
    before = image.read_bytes()
    result = cli("extract", "--images", str(photos), "-o", str(image), *FAST)
    one_line_error(result, "isc-extract", f"output {image} is the input {image}")
    (tmp_path / "link.h5").symlink_to(photos / "R000001.jpg")  # the same through a symbolic link
    assert extract_main(["--images", str(photos), "-o", str(tmp_path / "link.h5"), *FAST]) == 2
    assert image.read_bytes() == before and sorted(p.name for p in photos.iterdir()) == \
        ["R000000.jpg", "R000001.jpg", "R000002.jpg"]


def test_output_that_is_a_directory_is_named_as_given(photos, tmp_path, capsys):
    (tmp_path / "out.h5").mkdir()
    assert extract_main(["--images", str(photos), "-o", str(tmp_path / "out.h5"), *FAST]) == 2
    err = one_line_error(capsys.readouterr().err, "isc-extract")
    assert f"{tmp_path / 'out.h5'}: is a directory" in err and ".part" not in err


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--image-size", "0", "must be >= 1"), ("--max-pixels", "0", "must be >= 1"),
    ("--max-pixels", "-1", "must be >= 1"), ("--dim", "-3", "must be >= 1"), ("--workers", "-1", "must be >= 0"),
    ("--batch-size", "0", "must be >= 1"), ("--scales", "1,0", "positive"), ("--scales", "nan", "positive"),
    ("--max-broken", "-0.1", "must be >= 0"),
])
def test_extract_numbers_are_checked_when_parsed(option, value, message, photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        extract_main(["--images", str(photos), "-o", str(tmp_path / "out.h5"), option, value])
    assert exit_status.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {option}" in last_line and message in last_line
    assert not (tmp_path / "out.h5").exists()


def test_image_size_below_eight_is_one_line(photos, tmp_path):
    result = cli("extract", "--images", str(photos), "-o", str(tmp_path / "out.h5"), *FAST, "--image-size", "4")
    one_line_error(result, "isc-extract", "image size 4 is too small")


def test_non_finite_descriptors_are_refused_naming_the_images(tmp_path):
    class LogOfMean(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.log(images.mean(dim=(2, 3)) + 1.0)  # NaN for a black image (normalised below -1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but is a supported model format
        torch.jit.script(LogOfMean()).save(str(tmp_path / "nan.pt"))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), "black").save(folder / "black.png")
    Image.new("RGB", (40, 30), "white").save(folder / "white.png")
    out = tmp_path / "out.h5"
    result = cli("extract", "--images", str(folder), "-o", str(out), "--model", f"torchscript:{tmp_path / 'nan.pt'}",
                 "--image-size", "32", "--workers", "0", "--quiet")
    one_line_error(result, "isc-extract", "NaN or infinite descriptors for 1 image(s): black")
    assert not out.exists()


def test_resume_extracts_again_an_image_replaced_after_a_kill(photos, lite, tmp_path):
    (photos / "R000002.jpg").write_bytes(b"")  # the strict run stops there, after the first batch, as a kill would
    images = list_images(photos)
    out = tmp_path / "out.h5"
    with pytest.raises(InputError, match="empty file"):
        extract(images, out, lite, batch_size=2, workers=0, quiet=True, strict=True)
    partial = PartialLog.read(tmp_path / "out.h5.rank0-of-1.partial")
    assert partial.ids == ["R000000", "R000001"] and partial.stamps.shape == (2, 2)

    _photo("rocket").save(photos / "R000000.jpg", quality=90)  # replaced while the run was down
    os.utime(photos / "R000000.jpg", ns=(1, 1))  # an old mtime restored: the ctime still says it changed
    _photo("chelsea").save(photos / "R000002.jpg", quality=90)
    summary = extract(images, out, lite, batch_size=2, workers=0, quiet=True)
    assert summary.resumed == 1 and summary.processed == 2
    fresh = extract(images, tmp_path / "fresh.h5", lite, batch_size=2, workers=0, quiet=True, resume=False)
    resumed, expected = _descriptors(out), _descriptors(Path(fresh.output))
    assert sorted(resumed) == ["R000000", "R000001", "R000002"]
    for image_id in resumed:
        np.testing.assert_allclose(resumed[image_id], expected[image_id], atol=1e-5)
    with h5py.File(out) as f:
        stamps = f["file_stamps"][()]
        assert f["file_stamps"].attrs["columns"] == "size,ctime_ns"
    stat = (photos / "R000000.jpg").stat()
    assert stamps[0].tolist() == [stat.st_size, stat.st_ctime_ns]


def test_partial_file_of_the_old_format_is_replaced_with_a_warning(photos, lite, tmp_path):
    (tmp_path / "out.h5.rank0-of-1.partial").write_bytes(b'isc-partial/1\n{"model": "x"}\n' + b"\0" * 40)
    with pytest.warns(UserWarning, match="isc-partial/1 of an older isc-extract"):
        summary = extract(list_images(photos), tmp_path / "out.h5", lite, workers=0, quiet=True)
    assert summary.resumed == 0 and summary.extracted == 3


def test_is_complete_notices_a_replaced_or_repaired_image(photos, tmp_path):
    model = create_model("resnet10t", image_size=32)
    config = extraction_config(model)
    images = {**list_images(photos), "R000003": photos / "R000003.jpg"}
    (photos / "R000003.jpg").write_text("not an image")
    out = tmp_path / "out.h5"
    extract(images, out, model, workers=0, quiet=True, max_broken=1)
    assert is_complete(out, images, config)
    _photo("rocket").save(photos / "R000003.jpg", quality=90)  # the broken image repaired
    assert not is_complete(out, images, config)
    extract(images, out, model, workers=0, quiet=True)
    assert is_complete(out, images, config)
    os.utime(photos / "R000001.jpg", ns=(5, 5))  # touched: same size, another time
    assert not is_complete(out, images, config)
    extract(images, out, model, workers=0, quiet=True)
    with h5py.File(out, "a") as f:  # a file of an older isc-extract: nothing to check the images against
        del f["file_stamps"]
    assert not is_complete(out, images, config)


def test_nothing_readable_exits_1_and_writes_nothing(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    out = tmp_path / "out.h5"
    result = cli("extract", "--images", str(folder), "-o", str(out), *FAST)
    one_line_error(result, "isc-extract", "none of the 2 images could be read (empty: empty file", status=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no output, no partial file


def test_many_broken_images_are_warned_about_in_one_line(photos, lite, tmp_path):
    (photos / "R000003.jpg").write_bytes(b"")
    result = cli("extract", "--images", str(photos), "-o", str(tmp_path / "out.h5"), *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (f"isc-extract: warning: {tmp_path / 'out.h5'}: 1 of 4 images (25.0%) are "
                                     "broken, more than 1.0% (listed in its attribute 'broken')")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under the threshold: no warning
        extract(list_images(photos), tmp_path / "quiet.h5", lite, workers=0, quiet=True, max_broken=0.25)


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(lite, tmp_path):
    grey = np.asarray(_photo("astronaut", (128, 96)).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # mode I;16
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.tif")
    Image.fromarray(grey.astype(np.int32) * 257).save(tmp_path / "grey32.tif")  # mode I
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "float.tif")  # mode F, 0-1
    eight_bit = decode_with_pillow(tmp_path / "grey8.png").int()
    for name in ("grey16.png", "grey16.tif", "grey32.tif", "float.tif"):
        assert (decode_with_pillow(tmp_path / name).int() - eight_bit).abs().max() <= 1, name
    images = {name.replace(".", "_"): tmp_path / name for name in ("grey8.png", "grey16.png", "float.tif")}
    extract(images, tmp_path / "out.h5", lite, workers=0, quiet=True)
    descriptors = _descriptors(tmp_path / "out.h5")
    for name in ("grey16_png", "float_tif"):
        np.testing.assert_allclose(descriptors[name], descriptors["grey8_png"], atol=1e-3)


@pytest.mark.parametrize(("device", "message"), [
    ("tpu", "device 'tpu': not a device (cpu, cuda or cuda:N)"),
    ("cuda:x", "device 'cuda:x': not a device"),
    pytest.param("cuda", "device 'cuda': no GPU is visible to torch",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_bad_device_is_one_line(device, message, photos, tmp_path, capsys):
    assert extract_main(["--images", str(photos), "-o", str(tmp_path / "out.h5"), *FAST, "--device", device]) == 2
    one_line_error(capsys.readouterr().err, "isc-extract", message)
    assert run_main([str(tmp_path / "work"), "--data", str(photos), "--device", device,
                     "--submissions-dir", str(tmp_path / "sub"), *RUN_FAST]) == 2
    one_line_error(capsys.readouterr().err, "isc-run", message)


def test_cuda_without_a_gpu_is_one_line_in_a_subprocess(photos, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = cli("extract", "--images", str(photos), "-o", str(tmp_path / "out.h5"), *FAST, "--device", "cuda")
    one_line_error(result, "isc-extract", "no GPU is visible")


def test_a_folder_for_a_file_and_a_file_for_a_folder_are_named(photos, tmp_path, capsys):
    out = str(tmp_path / "out.h5")
    assert extract_main(["--images", str(photos), "-o", out, *FAST, "--checkpoint", str(tmp_path)]) == 2
    one_line_error(capsys.readouterr().err, "isc-extract", f"{tmp_path}: is a directory (a checkpoint file is needed)")
    assert extract_main(["--images", str(photos), "-o", out, "--model", f"torchscript:{tmp_path}"]) == 2
    one_line_error(capsys.readouterr().err, "isc-extract", "is a directory (a TorchScript file is needed)")
    a_file = photos / "R000000.jpg"
    assert extract_main(["--split", "reference", "--data", str(a_file), "-o", out, *FAST]) == 2
    one_line_error(capsys.readouterr().err, "isc-extract", f"{a_file}: is not a directory")
    assert run_main([str(tmp_path / "work"), "--data", str(a_file), "--submissions-dir", str(tmp_path / "s"),
                     *RUN_FAST]) == 2
    one_line_error(capsys.readouterr().err, "isc-run", f"{a_file}: is not a directory")


def test_links_and_folders_named_like_images_are_listed_as_broken(photos, tmp_path):
    (photos / "loop.jpg").symlink_to(photos / "loop.jpg")
    (photos / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (photos / "folder.jpg").mkdir()
    (photos / "sub").mkdir()
    (photos / "sub" / "up.jpg").symlink_to(photos)  # a link to a folder above: not followed forever
    result = cli("extract", "--images", str(photos), "-o", str(tmp_path / "out.h5"), *FAST, "--max-broken", "1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["extracted"] == 3
    assert summary["broken"] == {"dangling": "cannot read (No such file or directory)",
                                 "folder": "cannot read (Is a directory)",
                                 "loop": "cannot read (Too many levels of symbolic links)",
                                 "sub/up": "cannot read (Is a directory)"}


def test_list_file_ids_are_stems_paths_relative_to_the_list(photos, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "images.txt").write_text(f"../photos/R000000.jpg\n{photos / 'R000001.jpg'}\n\nmissing.jpg\n")
    out = tmp_path / "out.h5"
    # run from another folder: the relative lines are relative to the list, not to the working directory
    result = cli("extract", "--images", str(lists / "images.txt"), "-o", str(out), *FAST, "--max-broken", "1", "--json",
                 cwd=photos)
    assert result.returncode == 0, result.stderr
    assert read_descriptors(out)[0] == ["R000000", "R000001"]
    assert json.loads(read_descriptor_attrs(out)["broken"]) == {"missing": "cannot read (No such file or directory)"}


def test_list_file_with_two_files_of_the_same_stem_is_refused(photos, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    shutil.copy(photos / "R000000.jpg", tmp_path / "other" / "R000000.png")
    listing = tmp_path / "list.txt"
    listing.write_text("photos/R000000.jpg\nother/R000000.png\n")
    assert extract_main(["--images", str(listing), "-o", str(tmp_path / "out.h5"), *FAST]) == 2
    err = one_line_error(capsys.readouterr().err, "isc-extract")
    assert f"{tmp_path / 'photos/R000000.jpg'} and {tmp_path / 'other/R000000.png'}" in err
    assert "id 'R000000'" in err


def test_phase_and_id_ranges_select_and_are_recorded(mini_dataset, tmp_path):
    phase2 = tmp_path / "phase2.h5"
    result = cli("extract", "--data", str(mini_dataset), "--split", "query", "--phase", "2", "-o", str(phase2), *FAST)
    assert result.returncode == 0, result.stderr
    ids = read_descriptors(phase2, split="query")[0]
    assert ids == [i for i in list_split_images(mini_dataset, "query") if i >= "Q50000"] and len(ids) == 8
    assert read_descriptor_attrs(phase2)["phase"] == 2
    ranges = tmp_path / "ranges.h5"
    assert extract_main(["--data", str(mini_dataset), "--split", "reference", "--ids", "R000000-R000004",
                         "--ids", "R000010", "-o", str(ranges), *FAST]) == 0
    assert read_descriptors(ranges)[0] == [f"R{i:06d}" for i in (0, 1, 2, 3, 4, 10)]
    assert read_descriptor_attrs(ranges)["ids"] == "R000000-R000004,R000010"


@pytest.mark.parametrize(("args", "message"), [
    (["--split", "reference", "--phase", "1"], "a phase selects query images"),
    (["--split", "reference", "--ids", "Q00000-Q00009"], "'Q00000' is not a reference id"),
    (["--split", "reference", "--ids", "R900000-R900009"], "no reference images in R900000-R900009"),
    (["--split", "query", "--phase", "1", "--ids", "Q50000"], "no query images in phase 1 and Q50000"),
    (["--images", "{mini}/query_images", "--ids", "Q00000"], "--phase and --ids select competition ids"),
])
def test_bad_selections_are_one_line(args, message, mini_dataset, tmp_path, capsys):
    args = [a.format(mini=mini_dataset) for a in args]
    assert extract_main([*args, "--data", str(mini_dataset), "-o", str(tmp_path / "out.h5"), *FAST]) == 2
    one_line_error(capsys.readouterr().err, "isc-extract", message)


def test_class_per_folder_tree_keeps_each_images_class(tmp_path):
    root = tmp_path / "reid"
    for person, photo_names in {"0001": ["astronaut", "coffee"], "0002": ["chelsea"]}.items():
        (root / person).mkdir(parents=True)
        for k, name in enumerate(photo_names):
            _photo(name).save(root / person / f"c{k}_s1.jpg", quality=90)
    (root / "0002" / "broken.jpg").write_bytes(b"")
    out = tmp_path / "out.h5"
    assert extract_main(["--images", str(root), "-o", str(out), *FAST, "--max-broken", "1"]) == 0
    with h5py.File(out) as f:
        ids = [x.decode() for x in f["ids"][()]]
        classes = [x.decode() for x in f["classes"][()]]
        assert f["classes"].dtype.kind == "S"
    assert ids == ["0001/c0_s1", "0001/c1_s1", "0002/c0_s1"]  # stems repeat across classes: ids keep the folder
    assert classes == [image_id.split("/")[0] for image_id in ids]
    # images at more than one depth: not a class-per-folder tree, no classes
    _photo("rocket").save(root / "top.jpg")
    assert extract_main(["--images", str(root), "-o", str(tmp_path / "flat.h5"), *FAST, "--max-broken", "1"]) == 0
    with h5py.File(tmp_path / "flat.h5") as f:
        assert "classes" not in f


def test_decode_processes_are_refused_with_the_pil_decoder(mini_dataset, tmp_path):
    out = tmp_path / "e.h5"
    done = cli("extract", "--images", mini_dataset / "reference_images", "-o", out, "--model", "pdq", "--decoder", "pil",
               "--decode-processes", "2", "--quiet")
    assert not out.exists()
    one_line_error(done, "isc-extract", "--decode-processes needs the torchvision decoder, and this run decodes "
                   "with pil (whose decoding runs in the worker processes)")
