"""The extraction engine: both decoders agree, odd and broken images, resume, torchrun sharding, the CLI."""

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, one_line_error
from PIL import Image
from skimage import data

from isc.cli.extract import main
from isc.core.descriptors import read_descriptor_attrs, read_descriptors
from isc.core.files import InputError
from isc.core.partial_log import PartialLog
from isc.extract.decode import nvjpeg_size
from isc.extract.extraction import extract
from isc.extract.image_files import list_images, list_split_images
from isc.models import create_model, save_checkpoint

SIZE = 64
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def model():
    # real ImageNet weights: descriptors of different photos differ, so closeness means something
    return create_model("efficientnet_lite0", image_size=SIZE, pool="mean")


def _photo(name: str, size=(200, 150)) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size)


def _huge_jpeg(path: Path) -> None:
    """A valid small JPEG whose header claims 60000 x 60000 pixels."""
    _photo("coffee", (16, 16)).save(path, quality=90)
    raw = bytearray(path.read_bytes())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> Path:
    """Valid images in every awkward form, and one file of each kind of breakage."""
    folder = tmp_path_factory.mktemp("odd")
    upright = _photo("astronaut")
    upright.save(folder / "plain.jpg", quality=95)
    upright.save(folder / "progressive.jpg", quality=95, progressive=True)
    upright.convert("L").save(folder / "gray.jpg", quality=95)
    upright.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    upright.convert("RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.jpg", quality=95)
    _photo("coffee").save(folder / "coffee.jpg", quality=90)
    (folder / "sub").mkdir()
    _photo("chelsea", (150, 220)).save(folder / "sub" / "cat.jpg", quality=90)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    coffee = (folder / "coffee.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(coffee[: len(coffee) // 3])
    _huge_jpeg(folder / "huge.jpg")
    return folder


BROKEN = {"empty": "empty file", "text": "not an image", "truncated": "cannot decode", "huge": "too large"}


def _extract(images, output, model, **options):
    summary = extract(images, output, model, **{"batch_size": 4, "workers": 0, "quiet": True, "max_broken": 1,
                                                **options})
    ids, descriptors, attrs = read_descriptors(output)
    return dict(zip(ids, descriptors, strict=True)), attrs, summary


@pytest.fixture(scope="module")
def by_decoder(odd_images, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return {decoder: _extract(list_images(odd_images), out / f"{decoder}.h5", model, decoder=decoder)
            for decoder in ("pil", "torchvision")}


def test_both_decoders_give_the_same_descriptors(by_decoder):
    pil, torchvision = by_decoder["pil"][0], by_decoder["torchvision"][0]
    assert sorted(pil) == sorted(torchvision) == ["alpha", "cmyk", "coffee", "gray", "plain", "progressive",
                                                  "rotated", "sideways", "sub/cat"]
    for image_id in pil:
        # the only difference is Pillow's draft mode (DCT downscaling), largest at this tiny image size
        assert np.abs(pil[image_id] - torchvision[image_id]).max() < 0.03, image_id
        assert float(pil[image_id] @ torchvision[image_id]) > 0.99, image_id


def test_odd_but_valid_images_are_decoded_right(by_decoder):
    descriptors = by_decoder["torchvision"][0]

    def cos(a, b):
        return float(descriptors[a] @ descriptors[b])

    for same in ("progressive", "cmyk", "alpha", "rotated"):
        assert cos("plain", same) > 0.95, same
    assert cos("plain", "gray") > cos("plain", "coffee") + 0.1  # colour is lost, content is not
    assert cos("plain", "rotated") > 0.99 > cos("plain", "sideways") + 0.1  # EXIF orientation applied
    assert cos("plain", "coffee") < 0.8
    assert all(abs(np.linalg.norm(d) - 1) < 1e-5 for d in descriptors.values())


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_broken_images_are_listed_with_reasons(by_decoder, decoder):
    _, attrs, summary = by_decoder[decoder]
    broken = json.loads(attrs["broken"])
    assert attrs["n_broken"] == len(broken) == 4 and summary.broken == broken
    for image_id, reason in BROKEN.items():
        assert reason in broken[image_id], (image_id, broken[image_id])
    assert summary.extracted == 9 and attrs["n_images"] == 13


def _pillow_would_send_to_nvjpeg(data: bytes) -> bool:
    """The rule nvjpeg_size stands for, through Pillow: an 8-bit L or RGB JPEG with no EXIF rotation."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return (image.format == "JPEG" and image.mode in ("RGB", "L")
                    and image.getexif().get(0x0112, 1) in (0, 1))
    except Exception:  # noqa: BLE001 - whatever Pillow cannot open is not for nvJPEG either
        return False


def test_nvjpeg_routing_reads_the_markers_as_pillow_does(odd_images, tmp_path):
    upright = _photo("astronaut", (90, 70))
    for orientation in (1, 3, 8):
        exif = Image.Exif()
        exif[0x010F] = "camera"  # a tag before the orientation in the IFD
        exif[0x0112] = orientation
        upright.save(tmp_path / f"exif{orientation}le.jpg", quality=90, exif=exif.tobytes())
        # Pillow writes little-endian EXIF; cameras also write big-endian ("MM") blocks
        ifd = struct.pack(">HHHIHH", 1, 0x0112, 3, 1, orientation, 0) + b"\x00" * 4
        upright.save(tmp_path / f"exif{orientation}be.jpg", quality=90,
                     exif=b"Exif\x00\x00MM\x00\x2a" + struct.pack(">I", 8) + ifd)
    upright.save(tmp_path / "icc.jpg", quality=90, icc_profile=b"\x00" * 300, optimize=True, subsampling=0)
    upright.save(tmp_path / "restart.jpg", quality=90, restart_marker_rows=1)
    upright.save(tmp_path / "dpi.jpg", quality=90, dpi=(300, 300), comment=b"\xff\xd9 a marker-like comment")
    upright.save(tmp_path / "image.mpo", format="MPO", save_all=True, append_images=[upright])
    Image.new("1", (40, 30)).save(tmp_path / "bilevel.png")
    files = [p for p in [*odd_images.rglob("*"), *tmp_path.iterdir()] if p.is_file()]
    routed = {}
    for path in files:
        if path.name == "huge.jpg":
            continue  # Pillow refuses to open it; the pixel limit is isc.extract.nvjpeg_batches.read_for_decode's, checked after
        data = path.read_bytes()
        size = nvjpeg_size(data)
        routed[path.name] = size is not None
        assert routed[path.name] == _pillow_would_send_to_nvjpeg(data), path.name
        if size is not None:
            with Image.open(path) as image:
                assert size == image.size, path.name
    assert routed["plain.jpg"] and routed["gray.jpg"] and routed["progressive.jpg"] and routed["exif1le.jpg"]
    assert routed["exif1be.jpg"] and not routed["exif3be.jpg"]
    assert not routed["cmyk.jpg"] and not routed["rotated.jpg"] and not routed["exif8le.jpg"]
    assert not routed["image.mpo"] and not routed["alpha.png"]


def test_strict_fails_on_the_first_broken_image(odd_images, model, tmp_path):
    with pytest.raises(InputError, match="empty.jpg: empty file"):
        extract(list_images(odd_images), tmp_path / "out.h5", model, batch_size=4, workers=0, quiet=True,
                strict=True)
    assert not (tmp_path / "out.h5").exists()


def test_pillow_workers_tta_and_short_edge(odd_images, tmp_path):
    images = {k: v for k, v in list_images(odd_images).items() if k not in BROKEN}
    tta = create_model("efficientnet_lite0", image_size=SIZE, pool="mean", resize="short-edge")
    results = {decoder: _extract(images, tmp_path / f"{decoder}.h5", tta, decoder=decoder, scales=(1.0, 0.75),
                                 flip=True, **({"workers": 2} if decoder == "pil" else {}))
               for decoder in ("pil", "torchvision")}
    (pil, attrs, _), (torchvision, _, _) = results["pil"], results["torchvision"]
    assert attrs["scales"] == "[1.0, 0.75]" and attrs["flip"] and attrs["resize"] == "short-edge"
    for image_id in images:
        assert float(pil[image_id] @ torchvision[image_id]) > 0.99
        assert abs(np.linalg.norm(pil[image_id]) - 1) < 1e-5


def test_torn_last_batch_of_a_killed_run_is_extracted_again(odd_images, model, tmp_path):
    good = {k: v for k, v in list_images(odd_images).items() if k not in BROKEN}
    output = tmp_path / "out.h5"
    fresh = extract(good, tmp_path / "fresh.h5", model, batch_size=2, workers=0, quiet=True)
    first_four = {k: good[k] for k in ("alpha", "cmyk", "coffee", "gray")}
    with pytest.raises(InputError):  # stops at "text", after two batches, as a kill would
        extract({**first_four, "text": list_images(odd_images)["text"]}, output, model,
                batch_size=2, workers=0, quiet=True, strict=True)
    partial = tmp_path / "out.h5.rank0-of-1.partial"
    intact = PartialLog.read(partial).ids
    assert len(intact) == 4
    with open(partial, "r+b") as f:  # a kill in the middle of writing the second batch
        f.truncate(partial.stat().st_size - 5)
    assert PartialLog.read(partial).ids == intact[:2]
    summary = extract(good, output, model, batch_size=2, workers=0, quiet=True)
    assert summary.resumed == 2
    ids, resumed, _ = read_descriptors(output)
    fresh_ids, fresh_descriptors, _ = read_descriptors(fresh.output)
    assert ids == fresh_ids
    np.testing.assert_allclose(resumed, fresh_descriptors, atol=1e-5)


def test_garbage_partial_file_is_replaced_with_a_warning(odd_images, model, tmp_path):
    good = {k: v for k, v in list_images(odd_images).items() if k not in BROKEN}
    (tmp_path / "out.h5.rank0-of-1.partial").write_bytes(b"\x89HDF\r\n junk")
    with pytest.warns(UserWarning, match="unreadable partial file"):
        summary = extract(good, tmp_path / "out.h5", model, workers=0, quiet=True)
    assert summary.resumed == 0 and summary.extracted == len(good)


def test_interrupted_run_resumes_and_never_mixes_models(odd_images, model, tmp_path):
    images = list_images(odd_images)
    good = {k: v for k, v in images.items() if k not in BROKEN}
    # the strict run stops at "empty" (third in id order) after writing the batches before it
    ordered = {**{k: good[k] for k in ("alpha", "cmyk")}, "empty": images["empty"],
               **{k: good[k] for k in good if k not in ("alpha", "cmyk")}}
    output = tmp_path / "out.h5"
    with pytest.raises(InputError):
        extract(ordered, output, model, batch_size=2, workers=0, quiet=True, strict=True)
    partial = tmp_path / "out.h5.rank0-of-1.partial"
    assert partial.exists() and not output.exists()
    assert PartialLog.read(partial).ids == ["alpha", "cmyk"]

    other = create_model("efficientnet_lite0", image_size=SIZE, pool="max")
    with pytest.raises(InputError, match="model_options"):
        extract(good, output, other, workers=0, quiet=True)

    summary = extract(good, output, model, batch_size=2, workers=0, quiet=True)
    assert summary.resumed == 2 and summary.processed == len(good) - 2
    assert not partial.exists()
    resumed_ids, resumed, _ = read_descriptors(output)
    fresh_ids, fresh, _ = read_descriptors(extract(good, tmp_path / "fresh.h5", model, workers=0,
                                                   quiet=True).output)
    assert resumed_ids == fresh_ids == sorted(good)
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)


def test_split_listing_and_bad_inputs(mini_dataset, tmp_path):
    queries = list_split_images(mini_dataset, "query")
    assert list(queries) == sorted(queries) and all(k.startswith("Q") for k in queries)
    with pytest.raises(InputError, match="no such folder"):
        list_split_images(tmp_path, "reference")
    (tmp_path / "reference_images").mkdir()
    (tmp_path / "reference_images" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a reference id"):
        list_split_images(tmp_path, "reference")
    listing = tmp_path / "list.txt"
    listing.write_text(f"reference_images/cat.jpg\n\n{next(iter(queries.values()))}\n")
    assert list(list_images(listing)) == [next(iter(queries)), "cat"]  # a listed image's id is its stem
    with pytest.raises(InputError, match="no such folder or list file"):
        list_images(tmp_path / "missing")


def test_cli_with_a_training_checkpoint(mini_dataset, tmp_path):
    trained = create_model("resnet10t", image_size=SIZE, dim=32)
    save_checkpoint(trained, tmp_path / "run" / "last.pt", optimizer={}, epoch=1)
    out = tmp_path / "query.h5"
    result = cli("extract", "--data", str(mini_dataset), "--split", "query", "-o", str(out), "--checkpoint",
                 str(tmp_path / "run" / "last.pt"), "--workers", "0", "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    ids, descriptors, attrs = read_descriptors(out, split="query")
    assert ids == sorted(list_split_images(mini_dataset, "query")) and descriptors.shape == (len(ids), 32)
    assert attrs["model_fingerprint"] == trained.fingerprint() and attrs["split"] == "query"
    assert json.loads(result.stdout)["extracted"] == len(ids)



def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["--split", "query", "-o", str(tmp_path / "out.h5")]) == 2
    assert one_line_error(capsys.readouterr().err, "isc-extract") == \
        "isc-extract: error: --split needs --data ROOT (the folder holding <split>_images/)"
    assert main(["--images", str(tmp_path / "missing"), "-o", str(tmp_path / "out.h5")]) == 2
    one_line_error(capsys.readouterr().err, "isc-extract", "no such folder or list file")


@pytest.mark.slow
def test_torchrun_two_processes_merge_in_id_order(mini_dataset, tmp_path):
    model = create_model("resnet10t", image_size=32)
    save_checkpoint(model, tmp_path / "model.pt")
    common = ["--data", str(mini_dataset), "--split", "query", "--checkpoint", str(tmp_path / "model.pt"),
              "--device", "cpu", "--workers", "0", "--quiet"]
    single = tmp_path / "single.h5"
    extract(list_split_images(mini_dataset, "query"), single, model, workers=0, quiet=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sharded = tmp_path / "sharded.h5"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "isc.cli.extract", *common, "-o", str(sharded)],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ids, descriptors, attrs = read_descriptors(sharded, split="query")
    single_ids, single_descriptors, _ = read_descriptors(single)
    assert ids == single_ids == sorted(ids)
    np.testing.assert_allclose(descriptors, single_descriptors, atol=1e-5)
    assert not list(tmp_path.glob("*.partial"))
    assert read_descriptor_attrs(sharded)["n_images"] == len(ids)
