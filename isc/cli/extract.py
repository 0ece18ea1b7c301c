"""isc-extract: image descriptors of a split, a folder or a list of files, to one HDF5 file."""

from __future__ import annotations

import argparse
import json

from isc.cli.common import run_command
from isc.extract import DECODERS, DEFAULT_MAX_PIXELS, extract, list_images, list_split_images
from isc.io import SPLITS, InputError
from isc.models import DEFAULT_MODEL, POOLINGS, RESIZE_MODES, create_model


def _scales(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-extract",
        description="Extract one descriptor per image into an HDF5 file (datasets ids, descriptors; the model "
        "and preprocessing in its attributes). Resumable: a killed run continues from OUT.rankR-of-N.partial. "
        "Several GPUs or machines: torchrun --nproc_per_node N -m isc.cli.extract ...",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", choices=SPLITS, help="an ISC split: the images under DATA/<split>_images/")
    source.add_argument("--images", metavar="DIR_OR_LIST",
                        help="any image folder (searched recursively; id = relative path without suffix) or a "
                        "text file listing one image path a line")
    parser.add_argument("--data", metavar="ROOT", help="dataset root of --split (where isc-download writes)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="descriptor file to write")
    parser.add_argument("--model", default=None,
                        help=f"efficientnet_lite0/1/2 (offline ImageNet weights), any timm architecture (e.g. "
                        f"resnet50; timm:NAME for a random init), torchscript:PATH or pdq (default: the "
                        f"checkpoint's model, else {DEFAULT_MODEL})")
    parser.add_argument("--checkpoint", metavar="PATH", help="weights saved by isc-train (save_checkpoint)")
    parser.add_argument("--pretrained", action="store_true",
                        help="let timm download its ImageNet weights (needs the network)")
    parser.add_argument("--image-size", type=int, help="input size in pixels (default: the model's)")
    parser.add_argument("--resize", choices=RESIZE_MODES,
                        help="square: resize to N x N; short-edge: keep the aspect ratio, short edge at N "
                        "(default: the model's)")
    parser.add_argument("--pool", choices=POOLINGS, help="pooling of a timm backbone (default gem)")
    parser.add_argument("--dim", type=int, help="linear projection of a timm backbone to this dimension")
    parser.add_argument("--scales", type=_scales, default=[1.0], metavar="S1,S2",
                        help="test-time scales relative to the image size, descriptors averaged (default 1)")
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available; one GPU per "
                        "rank under torchrun)")
    parser.add_argument("--workers", type=int,
                        help="reading threads (torchvision decoder) or DataLoader processes (pil decoder)")
    parser.add_argument("--decoder", choices=DECODERS,
                        help="torchvision: batched JPEG decode on the device (nvJPEG on a GPU); pil: Pillow in "
                        "DataLoader workers (default: torchvision on a GPU, pil on the CPU)")
    parser.add_argument("--fp32", action="store_true", help="float32 inference on a GPU (default float16)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"larger images are listed as broken (default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--strict", action="store_true", help="fail on the first broken image instead of "
                        "listing it")
    parser.add_argument("--restart", action="store_true",
                        help="ignore the partial file of an earlier run instead of resuming from it")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.split:
        if not args.data:
            raise InputError("--split needs --data ROOT (the folder holding <split>_images/)")
        images = list_split_images(args.data, args.split)
    else:
        images = list_images(args.images)
    options = {key: value for key, value in
               {"image_size": args.image_size, "resize": args.resize, "pool": args.pool, "dim": args.dim}.items()
               if value is not None}
    model_name = args.model if args.model or args.checkpoint else DEFAULT_MODEL
    model = create_model(model_name, checkpoint=args.checkpoint, pretrained=args.pretrained, **options)
    source = f"{args.data}/{args.split}_images" if args.split else args.images
    summary = extract(
        images, args.output, model, batch_size=args.batch_size, device=args.device, workers=args.workers,
        decoder=args.decoder, scales=args.scales, flip=args.flip, half=False if args.fp32 else None,
        strict=args.strict, resume=not args.restart, max_pixels=args.max_pixels, quiet=args.quiet,
        attrs={"source": str(source), "split": args.split, "checkpoint": args.checkpoint},
    )
    if summary["rank"] != 0:
        return 0
    if args.json:
        print(json.dumps(summary))
        return 0
    broken = summary["broken"]
    print(f"{summary['extracted']} descriptors of dimension {summary['dimension']} ({summary['model']}) "
          f"written to {summary['output']}; {summary['processed']} images this run "
          f"({summary['images_per_second']} images/s on {summary['device']}, {summary['decoder']} decoder), "
          f"{summary['resumed']} resumed, {len(broken)} broken")
    for image_id, reason in list(broken.items())[:20]:
        print(f"  broken {image_id}: {reason}")
    if len(broken) > 20:
        print(f"  ... and {len(broken) - 20} more (attribute 'broken' of the output)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
