"""isc-extract: image descriptors of a split, a folder or a list of files, to one HDF5 file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from isc.cli.common import (
    check_outputs,
    non_negative_float,
    non_negative_int,
    positive_int,
    print_broken,
    run_command,
)
from isc.cli.options import (
    add_crop_views_option,
    add_grid_option,
    add_model_options,
    add_phase_option,
    add_scales_option,
    check_grid,
    cut_views,
    extract_options,
    model_choice,
)
from isc.core.competition import SPLITS, split_folder
from isc.core.files import InputError, NoImageRead
from isc.extract.extraction import DECODERS, ExtractOptions, extract
from isc.extract.image_files import image_classes, list_images, list_split_images, select_split_images
from isc.models import POOLINGS, RESIZE_MODES, create_model, given_options


def build_parser() -> argparse.ArgumentParser:
    defaults = ExtractOptions()
    parser = argparse.ArgumentParser(
        prog="isc-extract",
        description="Extract one descriptor per image into an HDF5 file (datasets ids, descriptors, file_stamps: "
        "the size and status-change time (ctime) of each image, and classes for a class-per-folder tree; the model, "
        "preprocessing and selection in its attributes). Resumable: a killed run continues from "
        "OUT.rankR-of-N.partial, extracting again the images changed since. "
        "Several GPUs or machines: torchrun --nproc_per_node N -m isc.cli.extract ...",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", choices=SPLITS, help="an ISC split: the images under DATA/<split>_images/")
    source.add_argument("--images", metavar="DIR_OR_LIST",
                        help="any image folder, searched recursively (id = relative path without suffix; a "
                        "class-per-folder tree ROOT/<class>/<image> also gets the dataset 'classes'), or a text "
                        "file listing one image path a line (id = file name without suffix; relative paths are "
                        "relative to the list file's folder; a missing file is listed as broken)")
    parser.add_argument("--data", metavar="ROOT", help="dataset root of --split (where isc-download writes)")
    add_phase_option(parser, "with --split query: only the queries of this phase")
    parser.add_argument("--ids", action="append", default=[], metavar="FIRST-LAST",
                        help="with --split: only ids in this inclusive range (e.g. R000000-R000099) or this single "
                        "id; repeatable")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="descriptor file to write")
    add_model_options(parser)
    parser.add_argument("--checkpoint", metavar="PATH", help="weights saved by isc-train (save_checkpoint)")
    parser.add_argument("--pretrained", action="store_true",
                        help="let timm download its ImageNet weights (needs the network)")
    parser.add_argument("--resize", choices=RESIZE_MODES,
                        help="square: resize to N x N; short-edge: keep the aspect ratio, short edge at N "
                        "(default: the model's)")
    parser.add_argument("--pool", choices=POOLINGS, help="pooling of a timm backbone (default gem)")
    parser.add_argument("--dim", type=positive_int, help="linear projection of a timm backbone to this dimension")
    add_scales_option(parser, defaults.scales, "describe each image")
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    parser.add_argument("--crops", action="store_true",
                        help="for query or reference files of the matching track: each image gives 6 adjacent rows "
                        "with its id, its full view then 5 crops (the four corners and the centre, 2/3 of each "
                        "side), each its own descriptor (attribute views_per_id); isc-search scores each pair by its "
                        "best (query view, reference view). Not for the descriptor track, which takes one row per "
                        "image (isc-submit descriptors refuses the file)")
    add_grid_option(parser, ExtractOptions.grid, "with --crops, each image")
    add_crop_views_option(parser, ExtractOptions.cut_views, "--crops'")
    parser.add_argument("--decoder", choices=DECODERS,
                        help="torchvision: batched JPEG decode on the device (nvJPEG on a GPU); pil: Pillow in "
                        "DataLoader workers, or, for a model that takes uint8 pixels, in worker processes that hand "
                        "it numpy pixels (PDQ hashes there) with no torch batches: the same descriptors, faster "
                        "(default: pil for those models and on the CPU, else torchvision)")
    parser.add_argument("--decode-processes", type=non_negative_int, default=defaults.decode_processes, metavar="N",
                        help="torchvision decoder: N processes read and decode (nvJPEG on a GPU) beside the one that "
                        "runs the model, sharing the --workers reading threads; the same descriptors, bit for bit, "
                        "faster when reading and decoding in one process cannot keep up with the model. 0: all in "
                        "one process (the default, until scripts/gpu_check.py has measured the processes on a GPU)")
    parser.add_argument("--fp32", action="store_true", help="float32 inference on a GPU (default float16)")
    parser.add_argument("--max-pixels", type=positive_int, default=defaults.max_pixels,
                        help=f"larger images are listed as broken (default {defaults.max_pixels:,})")
    parser.add_argument("--max-broken", type=non_negative_float, default=defaults.max_broken, metavar="FRACTION",
                        help=f"warn when more than this fraction of the images is broken (default {defaults.max_broken:g}; "
                        "1: never). "
                        "When no image at all can be read, nothing is written and the exit status is 1")
    parser.add_argument("--strict", action="store_true", help="fail on the first broken image instead of "
                        "listing it")
    parser.add_argument("--restart", action="store_true",
                        help="ignore the partial file of an earlier run instead of resuming from it")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _images(args: argparse.Namespace) -> dict[str, Path]:
    """The images chosen by --split (with --phase and --ids) or --images."""
    if args.images:
        if args.phase or args.ids:
            raise InputError("--phase and --ids select competition ids: use them with --split")
        return list_images(args.images)
    if not args.data:
        raise InputError("--split needs --data ROOT (the folder holding <split>_images/)")
    return select_split_images(list_split_images(args.data, args.split), args.split, args.phase, args.ids)


def run(args: argparse.Namespace) -> int:
    images = _images(args)
    listing = args.images if args.images and not Path(args.images).is_dir() else None
    # an output that does not exist yet cannot be an input: resolving a million image paths is then skipped
    check_outputs(inputs=[listing, args.checkpoint, *(images.values() if os.path.lexists(args.output) else ())],
                  outputs=[args.output],
                  image_folders=[args.images if args.images and listing is None else None,
                                 split_folder(args.data, args.split) if args.split else None])
    check_grid(args.grid, args.crops, "--grid", "--crops")
    extraction = extract_options(
        args, decoder=args.decoder, scales=args.scales, flip=args.flip, crops=args.crops, grid=args.grid,
        cut_views=cut_views(args, args.crops, ExtractOptions.cut_views, "--crops"),
        half=False if args.fp32 else None, strict=args.strict, resume=not args.restart, max_pixels=args.max_pixels,
        max_broken=args.max_broken, decode_processes=args.decode_processes)
    options = given_options(image_size=args.image_size, resize=args.resize, pool=args.pool, dim=args.dim)
    model_name, why = model_choice(args)
    model = create_model(model_name, checkpoint=args.checkpoint, pretrained=args.pretrained, **options)
    if why and not args.quiet:
        print(f"isc-extract: no --model given, using {model_name}; {why}", file=sys.stderr)
    source = split_folder(args.data, args.split) if args.split else args.images
    try:
        summary = extract(
            images, args.output, model, extraction, quiet=args.quiet,
            classes=image_classes(images) if args.images and not listing else None,
            attrs={"source": str(source), "split": args.split, "checkpoint": args.checkpoint, "phase": args.phase,
                   "ids": ",".join(args.ids) or None},
        )
    except NoImageRead as e:
        print(f"isc-extract: error: {e}", file=sys.stderr)
        return 1
    if summary.rank != 0:
        return 0
    if args.json:
        print(json.dumps(dataclasses.asdict(summary)))
        return 0
    broken = summary.broken
    views = summary.views_per_id
    count = f"{summary.extracted * views} descriptors ({summary.extracted} images x {views} views)" \
        if views > 1 else f"{summary.extracted} descriptors"
    print(f"{count} of dimension {summary.dimension} ({summary.model}) "
          f"written to {summary.output}; {summary.processed} images this run "
          f"({summary.images_per_second} images/s on {summary.device}, {summary.decoder} decoder"
          f"{f' in {summary.decode_processes} processes' if summary.decode_processes else ''}"
          f"{', uint8 pixels' if summary.pixels else ''}), "
          f"{summary.resumed} resumed, {len(broken)} broken")
    print_broken(broken, "attribute 'broken' of the output")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
