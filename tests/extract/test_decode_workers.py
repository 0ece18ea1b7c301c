"""Reading and decoding in worker processes (isc.extract.decode_workers, isc-extract --decode-processes): the file of the
single-process path bit for bit, broken images and crops included; resume after kill -9; errors, worker deaths,
Ctrl-C and a killed parent leave no process behind."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import torch
from conftest import running, wait_until
from PIL import Image

import isc.extract.decode_workers
import isc.extract.nvjpeg_batches
from isc.cli.extract import main
from isc.core.partial_log import PartialLog
from isc.extract.extraction import extract
from isc.extract.image_files import list_images
from isc.models import create_model

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
MANY = 40  # images of the kill-and-resume runs: each of their three extractions reads them all, one per batch
BROKEN = {"empty": "empty file", "text": "not an image", "truncated": "cannot decode"}
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning",
                                        "ignore:This process .* is multi-threaded:DeprecationWarning")


def _picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour field with noise: JPEG-like content, in a few milliseconds."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    return Image.fromarray((smooth + rng.integers(-20, 21, smooth.shape)).clip(0, 255).astype(np.uint8))


def _folder(folder: Path, count: int) -> Path:
    """``count`` JPEGs of 40-120 px in several aspect ratios, then a PNG with alpha, a CMYK JPEG (both
    decoded by Pillow) and the :data:`BROKEN` files."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        _picture(rng, int(rng.integers(40, 121)), int(rng.integers(40, 121))).save(folder / f"R{i:03d}.jpg",
                                                                                    quality=90)
    _picture(rng, 90, 60).convert("RGBA").save(folder / "alpha.png")
    _picture(rng, 70, 100).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    first = (folder / "R000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(first[: len(first) // 3])
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On two shared cores an OpenMP pool of two spins against the decoding processes: 25 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return list_images(_folder(tmp_path_factory.mktemp("decode") / "images", 20))


@pytest.fixture(scope="module")
def models() -> dict[str, object]:
    return {resize: create_model("efficientnet_lite0", image_size=SIZE, resize=resize)
            for resize in ("square", "short-edge")}


def _contents(path: Path) -> dict[str, object]:
    """Every dataset (as bytes: bit for bit) and attribute of an HDF5 file."""
    with h5py.File(path, "r") as f:
        return {**{name: (f[name].dtype.str, f[name].shape, f[name][()].tobytes()) for name in f},
                **{f"attr {key}": str(value) for key, value in f.attrs.items()}}


def _descendants() -> set[psutil.Process]:
    """The live decoding processes under this one: not multiprocessing's forkserver and resource tracker, which
    serve every later run of this process by design."""
    from multiprocessing import forkserver, resource_tracker

    servers = {forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid}
    return {p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE and p.pid not in servers}


def _all_gone(processes: list[psutil.Process], seconds: float = 20) -> bool:
    """Whether every one of ``processes`` has ended (a zombie left to a reaper counts as ended) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for p in processes:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _extract(images, output, model, **options):
    return extract(images, output, model, **{"device": "cpu", "decoder": "torchvision", "workers": 2, "quiet": True,
                                             "max_broken": 1, "resume": False, **options})


@pytest.mark.parametrize("batch_size, processes, resize, options", [
    (4, 2, "square", {}),
    (5, 3, "short-edge", {"crops": True}),
    (64, 4, "square", {"scales": (1.0, 0.75), "flip": True}),  # one batch: one process
], ids=["square", "short-edge crops", "one batch, scales and flip"])
def test_processes_write_the_file_of_one_process_bit_for_bit(batch_size, processes, resize, options, images, models,
                                                             tmp_path):
    before = _descendants()
    one = _extract(images, tmp_path / "one.h5", models[resize], batch_size=batch_size, **options)
    many = _extract(images, tmp_path / "many.h5", models[resize], batch_size=batch_size,
                    decode_processes=processes, **options)
    assert (one.decode_processes, many.decode_processes) == (0, processes)
    assert _descendants() == before  # the workers are gone once extract returns
    assert many.broken == one.broken and set(one.broken) == set(BROKEN)
    for image_id, reason in BROKEN.items():
        assert many.broken[image_id].startswith(reason), many.broken[image_id]
    assert many.extracted == one.extracted == len(images) - len(BROKEN)
    assert _contents(tmp_path / "many.h5") == _contents(tmp_path / "one.h5")


def _fail_in_workers(how):
    """A decode_jpegs that runs ``how`` in a worker process and decodes here (the workers are forked for this:
    a forkserver's would not inherit the patch)."""
    parent, decode = os.getpid(), isc.extract.nvjpeg_batches.decode_jpegs

    def decode_jpegs(encoded, device):
        if os.getpid() != parent:
            how()
        return decode(encoded, device)

    return decode_jpegs


def _raise():
    raise ValueError("a bug in the decoding")


@pytest.mark.parametrize("how, error, message", [
    (_raise, ValueError, "a bug in the decoding"),
    (lambda: os.kill(os.getpid(), signal.SIGKILL), RuntimeError, r"decoding process \d+ ended \(exit code -9\)"),
], ids=["exception", "killed"])
def test_an_error_in_a_worker_ends_the_run_and_every_worker(how, error, message, images, models, tmp_path,
                                                            monkeypatch):
    monkeypatch.setattr(isc.extract.nvjpeg_batches, "decode_jpegs", _fail_in_workers(how))
    monkeypatch.setattr(isc.extract.decode_workers, "worker_context", lambda preload: multiprocessing.get_context("fork"))
    before = _descendants()
    with pytest.raises(error, match=message):
        _extract(images, tmp_path / "out.h5", models["square"], batch_size=2, decode_processes=3)
    assert _descendants() == before
    assert not (tmp_path / "out.h5").exists()


def test_bad_decode_processes_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["--images", ".", "-o", "out.h5", "--decode-processes", "-1"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "isc-extract: error: argument --decode-processes: must be >= 0, got '-1' (see --help)"]


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """Enough images, one per batch, for a run to be caught in the middle (stopped after 3: 37 still to go)."""
    return _folder(tmp_path_factory.mktemp("slow") / "images", MANY)


def _command(folder: Path, output: Path, processes: int, *extra: str) -> list[str]:
    """isc-extract with one torch thread (see :func:`one_torch_thread`), one image per batch: the batches, hence
    the descriptors, of a resumed run are those of an uninterrupted one."""
    return ["env", "OMP_NUM_THREADS=1", sys.executable, "-m", "isc.cli.extract", "--images", str(folder), "-o", str(output), "--model",
            "efficientnet_lite0", "--image-size", str(SIZE), "--batch-size", "1", "--workers", "2", "--device", "cpu",
            "--decoder", "torchvision", "--decode-processes", str(processes), "--max-broken", "1", "--quiet", *extra]


def _stopped_mid_run(folder: Path, output: Path, stop: signal.Signals
                     ) -> tuple[int, str, list[psutil.Process], list[psutil.Process]]:
    """(exit status, stderr, its decoding workers, all its child processes) of isc-extract with 2 decoding processes sent ``stop`` once 3 images are
    in its partial log: SIGINT to its whole process group, as a terminal's Ctrl-C; SIGKILL to it alone, as the
    kernel's out-of-memory killer."""
    partial = Path(f"{output}.rank0-of-1.partial")
    with running(_command(folder, output, 2), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                 text=True, start_new_session=True) as child:
        wait_until(lambda: partial.exists() and len(PartialLog.read(partial).ids) >= 3, child)
        processes = psutil.Process(child.pid).children(recursive=True)
        workers = [p for p in processes if "forkserver" in " ".join(p.parent().cmdline())]  # forked by the server
        (os.killpg if stop == signal.SIGINT else os.kill)(child.pid, stop)
        _, stderr = child.communicate(timeout=60)
    return child.returncode, stderr, workers, processes


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_file_of_one_uninterrupted_run(many_images, tmp_path):
    out = tmp_path / "out.h5"
    status, _, workers, processes = _stopped_mid_run(many_images, out, signal.SIGKILL)
    assert status == -signal.SIGKILL and not out.exists()
    # the orphaned workers saw their parent die, and so did the forkserver and the resource tracker
    assert len(workers) == 2 and _all_gone(processes)
    resumed = subprocess.run(_command(many_images, out, 2, "--json"), cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] >= 3 and summary["resumed"] + summary["processed"] == MANY + 5  # + alpha, cmyk and the 3 broken
    assert summary["decode_processes"] == 2
    fresh = subprocess.run(_command(many_images, tmp_path / "fresh.h5", 0), cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    assert _contents(out) == _contents(tmp_path / "fresh.h5")


@pytest.mark.slow
def test_ctrl_c_stops_the_run_and_its_workers(many_images, tmp_path):
    out = tmp_path / "out.h5"
    status, stderr, workers, processes = _stopped_mid_run(many_images, out, signal.SIGINT)
    assert status == 130 and stderr.strip().splitlines() == ["isc-extract: interrupted"]
    assert len(workers) == 2 and _all_gone(processes, 5)
    assert not out.exists() and len(PartialLog.read(Path(f"{out}.rank0-of-1.partial")).ids) >= 3
