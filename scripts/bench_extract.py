"""Benchmark isc-extract end to end: JPEG files on disk -> descriptors in an HDF5 file, in images/s.

For ResNet-50 at 224 (random init) and EfficientNet-Lite0 at 320, the torchvision-decode path (nvJPEG on a
GPU) and the Pillow + DataLoader path run side by side on the same synthetic JPEGs (400-800 px a side,
~170 KB, like DISC21), each with the files in the page cache (warm) and after evicting them (cold), beside
the raw parallel read rate of the same files (the disk's ceiling).

Cold runs drop the page cache (``echo 3 > /proc/sys/vm/drop_caches``, root only); without root each
file's pages are evicted with ``posix_fadvise(DONTNEED)``, which needs no privilege.

    python scripts/bench_extract.py --images 2000            # on a GPU machine
    python scripts/bench_extract.py --images 128 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from isc.extract.extraction import extract
from isc.models import create_model

MODELS = {"resnet50@224": ("timm:resnet50", 224), "efficientnet_lite0@320": ("efficientnet_lite0", 320)}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs 400-800 px a side: crops of real photos, resized, with sensor-like noise."""
    from skimage import data  # here: gpu_check.py imports this script on machines without it

    rng = np.random.default_rng(seed)
    photos = [np.asarray(getattr(data, name)())[..., :3] for name in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        top, left = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = Image.fromarray(photo[top:top + h * 3 // 4, left:left + w * 3 // 4])
        size = (int(rng.integers(400, 801)), int(rng.integers(400, 801)))
        pixels = np.asarray(crop.resize(size, Image.BILINEAR), dtype=np.float32)
        pixels += rng.normal(0, 12, pixels.shape)
        path = folder / f"R{i:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=93)
        paths.append(path)
    return paths


def evict(paths: list[Path]) -> str:
    """Drop the files from the page cache; returns the method used."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise"


def read_rate(paths: list[Path], threads: int) -> tuple[float, float]:
    """(MB/s, files/s) reading every file with ``threads`` threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda p: len(p.read_bytes()), paths))
    seconds = time.perf_counter() - start
    return total / seconds / 1e6, len(paths) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="number of synthetic JPEGs (default 2000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256 if torch.cuda.is_available() else 32)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="threads / DataLoader processes")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--dir", type=Path, help="where to write the JPEGs (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "reference_images"
        paths = make_jpegs(folder, args.images)
        mean_kb = np.mean([p.stat().st_size for p in paths]) / 1e3
        print(f"{len(paths)} JPEGs, mean {mean_kb:.0f} KB; device {args.device}, {args.workers} workers, "
              f"batch {args.batch_size}; {platform.processor() or platform.machine()}, torch {torch.__version__}")
        method = evict(paths)
        cold_mb, cold_files = read_rate(paths, args.workers)
        warm_mb, warm_files = read_rate(paths, args.workers)
        results = {"images": len(paths), "mean_kb": round(mean_kb), "eviction": method, "device": args.device,
                   "read": {"cold_mb_s": round(cold_mb), "cold_files_s": round(cold_files),
                            "warm_mb_s": round(warm_mb), "warm_files_s": round(warm_files)}, "runs": []}
        print(f"raw parallel read: cold {cold_mb:,.0f} MB/s ({cold_files:,.0f} files/s), warm {warm_mb:,.0f} MB/s "
              f"({warm_files:,.0f} files/s); cold = page cache evicted by {method}")
        images = {p.stem: p for p in paths}
        for label in args.models:
            name, size = MODELS[label]
            model = create_model(name, image_size=size)
            # warm-up: first CUDA kernels, cudnn autotuning, worker start-up paths
            extract(dict(list(images.items())[: 2 * args.batch_size]), Path(tmp) / "warmup.h5", model,
                    batch_size=args.batch_size, device=args.device, workers=args.workers, quiet=True, resume=False)
            for decoder in ("torchvision", "pil"):
                for cache in ("cold", "warm"):
                    if cache == "cold":
                        evict(paths)
                    summary = extract(images, Path(tmp) / "out.h5", model, batch_size=args.batch_size,
                                      device=args.device, workers=args.workers, decoder=decoder, quiet=True,
                                      resume=False)
                    rate = summary.images_per_second
                    results["runs"].append({"model": label, "decoder": decoder, "cache": cache,
                                            "images_per_second": rate})
                    print(f"{label:24s} {decoder:12s} {cache:5s} {rate:10,.1f} images/s", flush=True)
        print()
        print("| model | decoder path | warm images/s | cold images/s | cold / raw read |")
        print("|---|---|---:|---:|---:|")
        for label in args.models:
            for decoder in ("torchvision", "pil"):
                rate = {r["cache"]: r["images_per_second"] for r in results["runs"]
                        if r["model"] == label and r["decoder"] == decoder}
                path = ("GPU decode (nvJPEG)" if args.device.startswith("cuda") else "torchvision decode (CPU)") \
                    if decoder == "torchvision" else "Pillow + DataLoader"
                print(f"| {label} | {path} | {rate['warm']:,.1f} | {rate['cold']:,.1f} | "
                      f"{rate['cold'] / cold_files:.0%} |")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
