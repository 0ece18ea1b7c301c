"""isc-train: self-supervised copy-detection training on unlabeled images (SSCD recipe)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from isc.cli.common import (
    check_outputs,
    int_between,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    print_broken,
    run_command,
)
from isc.core.distributed import needs_torch, torch_installed
from isc.models import DEFAULT_MODEL, MAX_IMAGE_SIZE
from isc.models.registry import models_help

if TYPE_CHECKING:
    from isc.train.training import TrainConfig


def add_recipe_options(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """The "recipe" group: the views, the loss, the mixing, the edits and the frozen layers."""
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--views", type=positive_int, default=defaults.views, help=f"augmented views per image (default {defaults.views})")
    recipe.add_argument("--temperature", type=positive_float, default=defaults.temperature,
                        help=f"InfoNCE temperature (default {defaults.temperature})")
    recipe.add_argument("--entropy-weight", type=non_negative_float, default=defaults.entropy_weight,
                        help=f"weight of the KoLeo differential-entropy regulariser (default {defaults.entropy_weight}; "
                        "0: off; SSCD used 30 with 4,096-image batches, which stalls small batches)")
    recipe.add_argument("--mix-fraction", type=non_negative_float, default=defaults.mix_fraction,
                        help="mixup/cutmix images appended per batch, as a fraction of its images (default "
                        f"{defaults.mix_fraction}; 0: off)")
    recipe.add_argument("--edit-probability", type=non_negative_float, default=defaults.edit_probability,
                        help=f"chance that a view gets DISC21-style edits (default {defaults.edit_probability})")
    recipe.add_argument("--freeze-bn", action="store_true",
                        help="keep BatchNorm statistics and weights at their starting values (small batches)")
    recipe.add_argument("--freeze-fraction", type=non_negative_float, default=defaults.freeze_fraction,
                        help="freeze the first fraction of the network's parameter tensors (early layers keep their "
                        "ImageNet filters; steps get cheaper as their backward pass is skipped; default 0)")
    recipe.add_argument("--seed", type=non_negative_int, default=defaults.seed, help="seed of the data order and augmentations")


def build_parser() -> argparse.ArgumentParser:
    from isc.train.training import TrainConfig  # torch: main() checks it is installed first

    defaults = TrainConfig(data="", run_dir="")
    parser = argparse.ArgumentParser(
        prog="isc-train",
        description="Train a copy-detection descriptor (backbone + GeM + projection) without labels: augmented "
        "views of each image are positives, the other images of the batch negatives (InfoNCE + KoLeo entropy "
        "regulariser, mixup/cutmix, DISC21-style edits). Writes RUN_DIR/last.pt (loads in "
        "`isc-extract --model NAME --checkpoint RUN_DIR/last.pt`), RUN_DIR/log.jsonl (loss and learning rate per "
        "step) and RUN_DIR/eval.jsonl (with --eval-data). Several processes: `torchrun --nproc-per-node N "
        "-m isc.cli.train ...` (DistributedDataParallel; --batch-size is per process). A non-finite loss stops the "
        "run with an error, before such weights are written.",
    )
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", required=True, help="folder of training images (e.g. ROOT/training_images); "
                      "unreadable images are skipped and listed at the end")
    data.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder: checkpoint, logs, config")
    data.add_argument("--model", default=DEFAULT_MODEL,
                      help=f"{models_help(trainable=True)} (default {DEFAULT_MODEL})")
    data.add_argument("--init-checkpoint", metavar="PATH", help="start from these weights (a save_checkpoint file)")
    data.add_argument("--pretrained", action="store_true",
                      help="let timm download ImageNet weights for a timm architecture (needs the network; the "
                      "efficientnet_lite models always start from their offline ImageNet weights)")
    data.add_argument("--dim", type=non_negative_int, default=defaults.dim,
                      help=f"projection to this many dimensions (default {defaults.dim}; 0: none, the backbone's width)")
    data.add_argument("--image-size", type=int_between(1, MAX_IMAGE_SIZE), default=defaults.image_size,
                      help=f"training resolution, square (default {defaults.image_size}); becomes the model's "
                      "extraction size")

    schedule = parser.add_argument_group("schedule")
    length = schedule.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimiser steps to train (default: one epoch)")
    length.add_argument("--epochs", type=positive_float, help="passes over the training images (fractions allowed)")
    schedule.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                          help=f"images per process and micro-batch (default {defaults.batch_size}); each gives "
                          "--views rows")
    schedule.add_argument("--accumulate", type=positive_int, default=defaults.accumulate,
                          help="micro-batches per optimiser step (gradient accumulation; negatives stay within a "
                          "micro-batch)")
    schedule.add_argument("--lr", type=positive_float, default=defaults.lr, help=f"peak AdamW learning rate (default {defaults.lr})")
    schedule.add_argument("--weight-decay", type=non_negative_float, default=defaults.weight_decay,
                          help=f"AdamW weight decay (default {defaults.weight_decay})")
    schedule.add_argument("--warmup", type=non_negative_float, default=defaults.warmup,
                          help=f"fraction of the steps with a linear warm-up, then cosine decay (default {defaults.warmup})")

    add_recipe_options(parser, defaults)

    run = parser.add_argument_group("running")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when a GPU is visible; under torchrun, "
                     "cuda: each process takes its own GPU)")
    run.add_argument("--amp", action=argparse.BooleanOptionalAction,
                     help="mixed precision (default: on for cuda: bfloat16, or float16 with loss scaling)")
    run.add_argument("--workers", type=non_negative_int, default=defaults.workers,
                     help=f"DataLoader processes doing the augmentations, per process (default {defaults.workers})")
    run.add_argument("--checkpoint-every", type=positive_int, default=defaults.checkpoint_every,
                     help=f"write RUN_DIR/last.pt every N steps (default {defaults.checkpoint_every}) and at the end")
    run.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last.pt")
    run.add_argument("--eval-data", metavar="DIR",
                     help="held-out isc-synth dataset (query/reference/training images + ground_truth.csv): µAP with "
                     "and without score normalisation at the start, every --eval-every steps and at the end")
    run.add_argument("--eval-every", type=non_negative_int, default=defaults.eval_every,
                     help="steps between evaluations (default 0: at the start and the end only)")
    run.add_argument("--torchscript", action="store_true",
                     help="also write RUN_DIR/model.torchscript.pt (loads as --model torchscript:PATH)")
    run.add_argument("--json", action="store_true", help="print the run's summary as one JSON object")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from isc.train.training import TrainConfig, train

    check_outputs(inputs=[args.data, args.init_checkpoint, args.eval_data], folders=[args.output])
    config = TrainConfig(
        data=args.data, run_dir=args.output, model=args.model, dim=args.dim or None, init_checkpoint=args.init_checkpoint,
        pretrained=args.pretrained, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
        accumulate=args.accumulate, views=args.views, image_size=args.image_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, temperature=args.temperature,
        entropy_weight=args.entropy_weight, mix_fraction=args.mix_fraction, edit_probability=args.edit_probability,
        freeze_bn=args.freeze_bn, freeze_fraction=args.freeze_fraction, amp=args.amp, device=args.device, workers=args.workers,
        checkpoint_every=args.checkpoint_every, eval_data=args.eval_data, eval_every=args.eval_every, seed=args.seed,
        resume=args.resume, torchscript=args.torchscript, quiet=args.quiet,
    )
    summary = train(config)
    if summary is None:  # not the first process of a torchrun group: it reports
        return 0
    if args.json:
        print(json.dumps(dataclasses.asdict(summary)))
    elif not args.quiet:
        broken = summary.broken
        print(f"{summary.steps} steps, checkpoint {summary.checkpoint}, {len(broken)} unreadable images skipped")
        for evaluation in summary.evaluations:
            print(f"step {evaluation['step']}: µAP {evaluation['muap']:.4f}, "
                  f"with score normalisation {evaluation['muap_normalized']:.4f}")
        print_broken(broken, "--json lists them all")
    return 0


def main(argv: list[str] | None = None) -> int:
    if not torch_installed():  # the parser's defaults are the trainer's, which is torch's: one line, no traceback
        print(f"isc-train: error: {needs_torch('training')}", file=sys.stderr)
        return 2
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
