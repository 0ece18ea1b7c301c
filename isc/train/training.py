"""Self-supervised copy-detection training on unlabeled images, the SSCD recipe in one short pipeline.

- every image gives two or more views, each a random crop, often a chain of DISC21-style edits
  (:func:`isc.synth.edits.random_edit`), a flip and colour jitter; the views of one image are positives, every other image of the (cross-process)
  batch a negative;
- a few mixup/cutmix images are appended to each batch: positive to both sources, weighted by their shares;
- loss: InfoNCE with a temperature plus the differential-entropy (KoLeo) regulariser, as in SSCD;
- AdamW with a linear warm-up and cosine decay, optionally frozen BatchNorm and early layers, gradient accumulation, mixed precision on the GPU,
  ``torchrun`` for several processes (DistributedDataParallel, gloo on the CPU, nccl on GPUs);
- ``RUN_DIR/last.pt`` every N steps (resumable), ``RUN_DIR/log.jsonl`` one line per step,
  ``RUN_DIR/eval.jsonl`` µAP on a held-out mini dataset with and without score normalisation."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from isc.core.distributed import barrier, join_process_group, leave_process_group, this_device
from isc.core.files import InputError, SettingError, atomic_path
from isc.core.processes import worker_context
from isc.extract.image_files import list_images
from isc.models import DEFAULT_MODEL, create_model, load_checkpoint, save_checkpoint, untrainable
from isc.train.evaluation import evaluate_model
from isc.train.objective import (
    freeze_batch_norm,
    freeze_first_layers,
    gather_batch,
    instance_targets,
    learning_rate,
    sscd_loss,
)
from isc.train.training_data import AugmentedViews, CollateViews, MixBatch, NumberedOrder, TrainingOrder

# --------------------------------------------------------------------------------------------- loop


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in ``RUN_DIR/config.json`` and in every checkpoint."""

    data: str
    run_dir: str
    model: str = DEFAULT_MODEL
    dim: int | None = 256
    init_checkpoint: str | None = None
    pretrained: bool = False
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    accumulate: int = 1
    views: int = 2
    image_size: int = 160
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: float = 0.05
    temperature: float = 0.05
    entropy_weight: float = 3.0
    mix_fraction: float = 0.125
    edit_probability: float = 0.5
    freeze_bn: bool = False
    freeze_fraction: float = 0.0
    amp: bool | None = None
    device: str | None = None
    workers: int = 4
    checkpoint_every: int = 100
    eval_data: str | None = None
    eval_every: int = 0
    seed: int = 0
    resume: bool = False
    torchscript: bool = False
    quiet: bool = False


class TrainingDiverged(InputError):
    """The loss or the weights stopped being finite: the run stops before writing such weights."""


def weights_are_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer (BatchNorm statistics included) is finite."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def setup_process(device: str | None) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether the process group was started here) of this process; joins the
    process group when started by ``torchrun``. ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (one process on that
    GPU; under ``torchrun``, whose ranks each take their own GPU, refused); the device itself is
    :func:`isc.core.distributed.this_device`'s choice, by the rule of its ``check_device``."""
    if device is not None and ":" in device and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SettingError("device", f"names one GPU ({device!r}), and each process of torchrun takes its own: use cuda")
    where = this_device(device)
    rank, world_size, started = join_process_group(where)
    return rank, world_size, where, started


def set_training_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        freeze_batch_norm(model)


def total_steps(config: TrainConfig, n_images: int, world_size: int) -> int:
    """Optimiser steps of the run: ``--steps``, or ``--epochs`` passes over the images."""
    batches_per_epoch = n_images // (config.batch_size * world_size)
    if batches_per_epoch == 0:
        raise InputError(f"{config.data}: {n_images} images, fewer than one batch "
                         f"({config.batch_size} per process x {world_size} processes)")
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil((config.epochs or 1.0) * batches_per_epoch / config.accumulate))


def check_config(config: TrainConfig) -> None:
    """InputError (:class:`SettingError` naming the setting) unless every setting of ``config`` is in range."""
    reason = untrainable(config.model)
    if reason:
        raise InputError(f"model {config.model!r} cannot be trained: {reason} (isc-train fine-tunes timm models, "
                         f"e.g. {DEFAULT_MODEL})")
    for name in ("batch_size", "accumulate", "image_size", "checkpoint_every", "steps"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise SettingError(name, f"must be at least 1, got {value}")
    if config.views < 2:
        raise SettingError("views", f"must be at least 2 (the views of an image are its positives), got {config.views}")
    for name in ("lr", "weight_decay", "warmup", "temperature", "entropy_weight", "mix_fraction", "edit_probability",
                 "freeze_fraction", "epochs"):
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise SettingError(name, f"must be a finite number, got {value}")
    for name in ("temperature", "lr", "epochs"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise SettingError(name, f"must be positive, got {value}")
    for name in ("weight_decay", "entropy_weight"):
        if getattr(config, name) < 0:
            raise SettingError(name, f"must be >= 0, got {getattr(config, name)}")
    for name in ("mix_fraction", "edit_probability", "freeze_fraction"):
        if not 0 <= getattr(config, name) <= 1:
            raise SettingError(name, f"must lie in [0, 1], got {getattr(config, name)}")
    if not 0 <= config.warmup < 1:
        raise SettingError("warmup", f"must lie in [0, 1), got {config.warmup}")
    if config.eval_data is not None and not (Path(config.eval_data) / "ground_truth.csv").is_file():
        raise SettingError("eval_data", f"{config.eval_data}: no ground_truth.csv (expected an isc-synth dataset)")


def _keep_log_until(path: Path, step: int) -> None:
    """Drop the lines a crashed run logged after its last checkpoint, so that a resumed log has each step once."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


@dataclass
class TrainResult:
    """What :func:`train` did (the fields in the order of ``isc-train --json``)."""

    steps: int  # the step reached
    start: int  # the step this call started from (0, or the resumed checkpoint's)
    checkpoint: str
    torchscript: str | None
    seconds: float
    evaluations: list[dict[str, float]]  # {"step", "muap", "muap_normalized"} per evaluation
    broken: dict[str, str]  # unreadable image path: why, skipped


def train(config: TrainConfig) -> TrainResult | None:
    """Train (or, with ``config.resume``, continue) a run; returns what it did, with the evaluations made
    (None in the processes other than the first of a ``torchrun`` group)."""
    check_config(config)
    rank, world_size, device, started = setup_process(config.device)
    try:
        return _train(config, rank, world_size, device)
    finally:
        leave_process_group(started)


@dataclass
class _Optimisation:
    """The weights a process trains and what updates them, new or from ``last.pt``."""

    model: nn.Module
    trained: nn.Module  # the model, or its DistributedDataParallel wrapper across processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: bool
    amp_dtype: torch.dtype
    start: int  # the step the run starts from (0, or the resumed checkpoint's)


def _check_resume(config: TrainConfig, last: Path) -> None:
    """SettingError unless ``resume`` agrees with what the run directory holds."""
    if config.resume and not last.is_file():
        raise SettingError("resume", f"is set, but {last} does not exist")
    if not config.resume and last.is_file():
        raise SettingError("resume", f"is not set, but {last} exists: set it to continue that run, or choose another "
                           "run directory")


def _prepare_model(config: TrainConfig, last: Path, device: torch.device, world_size: int) -> _Optimisation:
    """The model on ``device`` with its optimiser and loss scaler, restored from ``last`` when resuming."""
    torch.manual_seed(config.seed)  # the same new head on every process (DDP also broadcasts rank 0's)
    if config.resume:
        model, state = create_model(config.model, checkpoint=last), load_checkpoint(last)
    else:
        # the training resolution becomes the model's: isc-extract then resizes images as they were trained
        model = create_model(config.model, checkpoint=config.init_checkpoint, pretrained=config.pretrained,
                             dim=config.dim, image_size=config.image_size, resize="square")
        state = {}
    model.to(device)
    freeze_first_layers(model, config.freeze_fraction)
    set_training_mode(model, config.freeze_bn)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    amp = device.type == "cuda" if config.amp is None else config.amp
    amp_dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    if state:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as e:
            raise InputError(f"{last}: its optimiser state does not fit ({e}); resume with the options of "
                             f"{Path(config.run_dir) / 'config.json'}") from None
        scaler.load_state_dict(state["scaler"])
    trained = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    return _Optimisation(model, trained, optimizer, scaler, amp, amp_dtype, int(state.get("step", 0)))


def _training_loader(config: TrainConfig, paths: list[Path], model: nn.Module, start: int, steps: int, rank: int,
                     world_size: int, device: torch.device) -> DataLoader:
    """This process's batches of augmented views from step ``start`` to ``steps``."""
    # each sample draws its augmentations from its own seed: a resumed run draws what an uninterrupted one does
    return DataLoader(
        AugmentedViews(paths, config.image_size, model.mean, model.std, config.views, config.edit_probability,
                       seed=config.seed),
        batch_size=config.batch_size,
        sampler=NumberedOrder(TrainingOrder(len(paths), config.batch_size, start * config.accumulate,
                                            steps * config.accumulate, config.seed, rank, world_size)),
        num_workers=config.workers,
        collate_fn=CollateViews(MixBatch(config.mix_fraction)),
        pin_memory=device.type == "cuda",
        drop_last=True,
        multiprocessing_context=worker_context(["isc.train.training_data"]) if config.workers else None,
    )


def _open_run_dir(config: TrainConfig, run_dir: Path, start: int) -> None:
    """Write the run's config and cut its logs back to the step it starts from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    _keep_log_until(run_dir / "log.jsonl", start)
    _keep_log_until(run_dir / "eval.jsonl", start)


def _diverged(config: TrainConfig, last: Path, saved: int, step: int, what: str) -> TrainingDiverged:
    kept = f"{last} holds step {saved}" if saved else "no checkpoint was written"
    return TrainingDiverged(f"step {step}: {what}, training diverged ({kept}); lower the learning rate "
                            f"(now {config.lr:g}) or the entropy weight, or train without mixed precision")


def _evaluate_at(config: TrainConfig, model: nn.Module, device: torch.device, rank: int, world_size: int, step: int,
                 evaluations: list[dict[str, float]]) -> None:
    """µAP of the model at ``step`` (:func:`evaluate_model`), appended to ``evaluations`` and ``eval.jsonl`` by the
    first process; every process then goes back to training together."""
    run_dir = Path(config.run_dir)
    result = evaluate_model(model, config.eval_data, run_dir / "eval", str(device), config.workers, config.quiet)
    if rank == 0:
        result = {"step": step, **result}
        evaluations.append(result)
        with open(run_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        if not config.quiet:
            tqdm.write(f"step {step}: µAP {result['muap']:.4f}, with score normalisation {result['muap_normalized']:.4f}")
    set_training_mode(model, config.freeze_bn)
    barrier(world_size)


def _optimiser_step(config: TrainConfig, run: _Optimisation, batches: Iterator, step: int, lr: float, rank: int,
                    world_size: int, device: torch.device, broken: dict[str, str],
                    diverged: Callable[[int, str], TrainingDiverged]) -> dict[str, float]:
    """One optimiser step over ``accumulate`` micro-batches at learning rate ``lr``; returns the mean loss and
    statistics, adds the unreadable images met to ``broken``, raises ``diverged`` on a non-finite loss."""
    # what the step draws (dropout, drop path) from a seed of its own, as a resumed run draws it
    torch.manual_seed(config.seed + 1_000_003 * (1 + rank) + step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    totals: dict[str, float] = {}
    for micro in range(config.accumulate):
        images, sources, shares, met = next(batches)
        images, sources, shares = (t.to(device, non_blocking=True) for t in (images, sources, shares))
        broken.update(met)
        targets = instance_targets(sources, shares, config.batch_size * world_size, rank * config.batch_size)
        # DDP: synchronise the gradients once per optimiser step, on the last micro-batch
        last_micro = micro == config.accumulate - 1
        with contextlib.nullcontext() if world_size == 1 or last_micro else run.trained.no_sync():
            with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.amp):
                embeddings = run.trained(images)
            all_embeddings, all_targets, offset = gather_batch(embeddings.float(), targets)
            loss, stats = sscd_loss(embeddings, targets, all_embeddings, all_targets, offset,
                                    config.temperature, config.entropy_weight)
            if not math.isfinite(loss.item()):
                raise diverged(step + 1, f"the loss is {loss.item()}")
            run.scaler.scale(loss / config.accumulate).backward()
        for key, value in {"loss": loss.item(), **stats}.items():
            totals[key] = totals.get(key, 0.0) + value / config.accumulate
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return totals


def _all_broken(broken: dict[str, str], world_size: int) -> dict[str, str]:
    """The unreadable images of every process (each read other images), sorted by path."""
    if world_size > 1:
        gathered: list[dict[str, str]] = [{} for _ in range(world_size)]
        dist.all_gather_object(gathered, broken)
        broken = {path: reason for part in gathered for path, reason in part.items()}
    return dict(sorted(broken.items()))


def _train(config: TrainConfig, rank: int, world_size: int, device: torch.device) -> TrainResult | None:
    run_dir, paths = Path(config.run_dir), list(list_images(config.data).values())
    last = run_dir / "last.pt"
    _check_resume(config, last)
    steps = total_steps(config, len(paths), world_size)
    run = _prepare_model(config, last, device, world_size)
    model, start = run.model, run.start
    loader = _training_loader(config, paths, model, start, steps, rank, world_size, device)
    is_main = rank == 0
    if is_main:
        _open_run_dir(config, run_dir, start)
    evaluations: list[dict[str, float]] = []
    broken: dict[str, str] = {}  # unreadable images skipped, path -> reason
    saved = start  # the step that last.pt holds (0: none written)

    batches = iter(loader)
    if config.eval_data and start == 0:
        _evaluate_at(config, model, device, rank, world_size, 0, evaluations)
    warmup_steps = round(config.warmup * steps)
    rows_per_process = config.batch_size * config.views + round(config.mix_fraction * config.batch_size)
    began = time.perf_counter()
    with open(run_dir / "log.jsonl" if is_main else os.devnull, "a") as log, tqdm(
        total=steps, initial=start, desc="isc-train", unit="step", disable=config.quiet or not is_main
    ) as bar:
        for step in range(start, steps):
            lr = learning_rate(step, steps, config.lr, warmup_steps)
            totals = _optimiser_step(config, run, batches, step, lr, rank, world_size, device, broken,
                                     partial(_diverged, config, last, saved))
            done, elapsed = step + 1, time.perf_counter() - began
            record = {"step": done, "lr": lr, **totals, "seconds": round(elapsed, 3),
                      "rows_per_s": round(rows_per_process * world_size * config.accumulate * (done - start) / elapsed, 2)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{totals['loss']:.3f}", lr=f"{lr:.2e}")
            bar.update()
            save_due = done % config.checkpoint_every == 0 or done == steps
            eval_due = config.eval_data and (config.eval_every and done % config.eval_every == 0 or done == steps)
            # every process checks (they hold the same weights), so that all of them stop together
            if (save_due or eval_due) and not weights_are_finite(model):
                raise _diverged(config, last, saved, done, "the weights are no longer finite")
            if is_main and save_due:
                save_checkpoint(model, last, step=done, optimizer=run.optimizer.state_dict(),
                                scaler=run.scaler.state_dict(), config=asdict(config))
                saved = done
            if eval_due:
                _evaluate_at(config, model, device, rank, world_size, done, evaluations)

    broken = _all_broken(broken, world_size)
    if not is_main:
        return None
    torchscript = None
    if config.torchscript:
        torchscript = run_dir / "model.torchscript.pt"
        export_torchscript(model, torchscript, config.image_size)
    return TrainResult(steps=steps, start=start, checkpoint=str(last),
                       torchscript=str(torchscript) if torchscript else None,
                       seconds=round(time.perf_counter() - began, 1), evaluations=evaluations, broken=broken)


def export_torchscript(model: nn.Module, path: str | Path, image_size: int) -> None:
    """Write ``model`` traced as TorchScript (normalised images in, descriptors out) for ``torchscript:PATH``."""
    network = copy.deepcopy(model.net if hasattr(model, "net") else model).cpu().eval()
    with torch.no_grad():
        traced = torch.jit.trace(network, torch.zeros(1, 3, image_size, image_size))
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
