"""Images/s of each stage of GPU extraction, alone, to find which one bounds ``isc-extract``.

On generated ~500x400 JPEGs (``gpu_check.make_images``), warm page cache, batch 256::

    PYTHONPATH=. python scripts/bench_extract_stages.py                   # on a GPU machine
    PYTHONPATH=. python scripts/bench_extract_stages.py --count 512 --device cpu   # a quick run anywhere

Stages: reading the files; the header check that routes a file to nvJPEG or Pillow; nvJPEG batch decode
(one thread, and batches split over threads); libjpeg-turbo decode (``decode_jpeg`` on the CPU) in threads,
with and without the resize beside it; resizing decoded images on the device; normalising; the model's
forward pass alone; and ``isc.extract.extraction.extract`` whole, per decoder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import make_images  # noqa: E402

from isc.cli.common import one_line_usage_errors, positive_int  # noqa: E402
from isc.core.distributed import check_device  # noqa: E402
from isc.core.files import InputError  # noqa: E402
from isc.extract.decode import resize_image  # noqa: E402
from isc.extract.extraction import extract  # noqa: E402
from isc.extract.nvjpeg_batches import decode_jpegs, read_for_decode  # noqa: E402
from isc.extract.torch_batches import normalised_groups  # noqa: E402
from isc.models import create_model  # noqa: E402


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=positive_int, default=8192, help="images (default 8192)")
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="timm:resnet50")
    parser.add_argument("--sweep", action="store_true",
                        help="only isc.extract.extraction.extract with nvJPEG, over reading threads and batch sizes")
    one_line_usage_errors(parser)
    args = parser.parse_args(argv)
    try:
        check_device(args.device)
    except InputError as e:
        parser.error(str(e))
    device = torch.device(args.device)
    rows: list[tuple[str, float]] = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def stage(name: str, n: int, function: Callable[[], object]) -> object:
        function()  # warm-up: caches, cuDNN plans, nvJPEG handles
        sync()
        start = time.perf_counter()
        result = function()
        sync()
        rate = n / (time.perf_counter() - start)
        rows.append((name, rate))
        print(f"{name:<60} {rate:>10,.0f} images/s", flush=True)
        return result

    with tempfile.TemporaryDirectory() as work:
        paths = make_images(Path(work) / "images", args.count, (500, 400), args.threads)
        n = len(paths)
        images = {p.stem: p for p in paths}
        if args.sweep:
            for batch_size in (256, 512):
                for readers in (4, 8, 16):
                    output = Path(work) / "sweep.h5"
                    stage(f"isc.extract.extraction.extract, torchvision, batch {batch_size}, {readers} reading threads", n,
                          lambda b=batch_size, r=readers, o=output: (o.unlink(missing_ok=True), extract(
                              images, o, model=create_model(args.model), device=args.device, decoder="torchvision",
                              batch_size=b, workers=r, quiet=True)))
            return 0
        pool = ThreadPoolExecutor(args.threads)
        stage(f"read bytes, {args.threads} threads", n, lambda: list(pool.map(Path.read_bytes, paths)))
        encoded = stage(f"read + header check (read_for_decode), {args.threads} threads", n,
                        lambda: list(pool.map(lambda p: read_for_decode(p, 10**9, [224]), paths)))
        batches = chunks(encoded, args.batch)
        stage("nvJPEG/CPU batch decode, 1 thread", n,
              lambda: [decode_jpegs(batch, device) for batch in batches])
        for threads in (2, 4, 8):
            sub = [part for batch in batches for part in chunks(batch, -(-len(batch) // threads))]
            with ThreadPoolExecutor(threads) as decoders:
                stage(f"batch decode on {device.type}, batches split over {threads} threads", n,
                      lambda decoders=decoders, sub=sub: list(decoders.map(lambda b: decode_jpegs(b, device), sub)))
        cpu = torch.device("cpu")
        stage(f"decode_jpeg on the CPU, {args.threads} threads", n,
              lambda: list(pool.map(lambda t: decode_jpegs([t], cpu)[0], encoded)))
        stage(f"decode_jpeg + uint8 resize on the CPU, {args.threads} threads", n,
              lambda: list(pool.map(lambda t: resize_image(decode_jpegs([t], cpu)[0], 224, "square"), encoded)))
        decoded = [image for batch in batches[:8] for image in decode_jpegs(batch, device)]
        resized = stage(f"resize on {device.type}, one image at a time", len(decoded),
                        lambda: [resize_image(image, 224, "square") for image in decoded])
        model = create_model(args.model)
        half = device.type == "cuda"
        stage("normalise + stack", len(resized),
              lambda: normalised_groups(model, [resized], torch.float16 if half else torch.float32, half))
        model = model.to(device).eval()
        if half:
            model = model.half().to(memory_format=torch.channels_last)
        inputs = torch.randn(args.batch, 3, 224, 224, device=device, dtype=torch.float16 if half else torch.float32)
        steps = max(1, n // args.batch // 4)
        with torch.inference_mode():
            stage(f"{args.model} forward, batch {args.batch}", steps * args.batch,
                  lambda: [model(inputs) for _ in range(steps)])
        for decoder in ("torchvision", "pil"):
            output = Path(work) / f"{decoder}.h5"
            stage(f"isc.extract.extraction.extract, {decoder}", n, lambda d=decoder, o=output: (
                o.unlink(missing_ok=True),
                extract(images, o, model=create_model(args.model), device=args.device, decoder=d,
                        batch_size=args.batch, workers=args.threads, quiet=True)))
        pool.shutdown()
    print(f"\n| stage ({device}, {args.count} JPEGs ~500x400) | images/s |\n|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
