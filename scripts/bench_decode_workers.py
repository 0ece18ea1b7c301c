"""Images/s of the torchvision path with reading and decoding in the inference process and in decoding
processes beside it (``isc-extract --decode-processes N``), on the same generated JPEGs, warm page cache.

Two models: a tiny one (timm:resnet10t @ 32, random weights), whose input pipeline bounds the rate, and
``--model`` at ``--image-size``. Each rate is the best of ``--repeats`` calls of ``isc.extract.extraction.extract``
(the extraction loop, worker start-up included); the files of every process count are compared bit for bit::

    PYTHONPATH=. python scripts/bench_decode_workers.py                      # on a GPU machine
    PYTHONPATH=. python scripts/bench_decode_workers.py --device cpu --count 512 --processes 0,1,2 \\
        --model efficientnet_lite0
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import make_images  # noqa: E402

from isc.cli.common import positive_int  # noqa: E402
from isc.extract.extraction import extract  # noqa: E402
from isc.models import create_model  # noqa: E402


def counts(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=positive_int, default=8192, help="images (default 8192)")
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1, help="reading threads in all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--processes", type=counts, default=[0, 2, 4, 8], help="decoding process counts (0,2,4,8)")
    parser.add_argument("--model", default="timm:resnet50")
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--repeats", type=positive_int, default=2)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        paths = make_images(Path(work) / "images", args.count, (500, 400), args.threads)
        images = {p.stem: p for p in paths}
        for name, size in (("timm:resnet10t", 32), (args.model, args.image_size)):
            model = create_model(name, image_size=size)
            files = {}
            for processes in args.processes:
                output = Path(work) / f"{processes}.h5"
                rate = max(extract(images, output, model, batch_size=args.batch, device=args.device,
                                   decoder="torchvision", workers=args.threads, decode_processes=processes,
                                   quiet=True, resume=False).images_per_second for _ in range(args.repeats))
                with h5py.File(output, "r") as f:
                    files[processes] = f["descriptors"][()]
                same = np.array_equal(files[processes], files[args.processes[0]])
                rows.append((f"{name} @ {size}", processes, rate, same))
                print(f"{name} @ {size}, {processes} decoding processes: {rate:,.1f} images/s"
                      f"{'' if same else ' (DESCRIPTORS DIFFER)'}", flush=True)
    print(f"\n| model ({args.device}, {args.count} JPEGs ~500x400, batch {args.batch}, {args.threads} reading threads) "
          "| decoding processes | images/s |\n|---|---:|---:|")
    for model_name, processes, rate, _ in rows:
        print(f"| {model_name} | {processes or 'none (one process)'} | {rate:,.1f} |")
    return 0 if all(same for *_, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
