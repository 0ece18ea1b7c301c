"""Training batches for :mod:`isc.train.training`: each image as several augmented views (random crops, DISC21-style
edits from :mod:`isc.synth.edits`, flips, colour jitter), a few mixup/cutmix images appended to each batch, and
an order of images that every ``torchrun`` process shares and a resumed run continues."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision import transforms

from isc.core.files import InputError
from isc.extract.decode import broken_reason
from isc.synth.edits import random_edit


class AugmentedViews(Dataset):
    """Item ``i``: a ``[views, 3, S, S]`` tensor of independently augmented copies of image ``i``, and the
    unreadable images met while reading it (``{path: reason}``).

    An unreadable image is replaced by the next readable one, so that every batch keeps its size (the processes
    of a torchrun group gather equal batches). Runs in the DataLoader's worker processes; the recently decoded
    images of a worker are the overlays that the edits paste the image onto or over, as DISC21 pasted copies
    onto other photos.
    """

    max_skipped = 100  # unreadable images in a row before the folder is deemed unusable

    def __init__(
        self,
        paths: Sequence[Path],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        views: int = 2,
        edit_probability: float = 0.5,
        n_overlays: int = 4,
    ) -> None:
        self.paths, self.image_size, self.views = list(paths), image_size, views
        self.edit_probability, self.n_overlays = edit_probability, n_overlays
        # mild: the DISC21-style edits bring the strong crops, colour changes and overlays
        self.crop = transforms.RandomResizedCrop(image_size, scale=(0.5, 1.0))
        self.finish = transforms.Compose([
            transforms.Resize((image_size, image_size)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.5),
            transforms.RandomGrayscale(p=0.05),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])
        self.overlays: list[Image.Image] = []

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            image.draft("RGB", (2 * self.image_size, 2 * self.image_size))  # JPEG: decode at a reduced scale
            return image.convert("RGB")

    def load_readable(self, index: int) -> tuple[Image.Image, dict[str, str]]:
        """Image ``index``, or the first readable one after it; and the unreadable ones with their reasons."""
        broken: dict[str, str] = {}
        for offset in range(min(len(self.paths), self.max_skipped)):
            position = (index + offset) % len(self.paths)
            try:
                return self.load(position), broken
            except UnidentifiedImageError:
                broken[str(self.paths[position])] = "not an image (unidentified format)"
            except (OSError, Image.DecompressionBombError) as e:  # truncated, unreadable, too large
                broken[str(self.paths[position])] = broken_reason(e)
        raise InputError(f"{len(broken)} images in a row cannot be read, e.g. {next(iter(broken.items()))}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, str]]:
        image, broken = self.load_readable(index)
        rng = np.random.default_rng(int(torch.randint(2**62, ())))  # torch seeds each worker; the edits follow it
        views = torch.stack([self.view(image, rng) for _ in range(self.views)])
        self.overlays = [image.resize((self.image_size, self.image_size))] + self.overlays[: self.n_overlays - 1]
        return views, broken

    def view(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        image = self.crop(image)
        if rng.random() < self.edit_probability:
            image = random_edit(image, rng, self.overlays)
        return self.finish(image)


class TrainingOrder(Sampler[int]):
    """This process's image indices for micro-batches ``start..stop``: a fresh shuffle every epoch (seeded, so
    that a resumed run continues the same order), each global micro-batch split between the processes."""

    def __init__(self, n_images: int, batch_size: int, start: int, stop: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n_images, self.batch_size, self.start, self.stop = n_images, batch_size, start, stop
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_epoch = n_images // (batch_size * world_size)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for batch in range(self.start, self.stop):
            if batch // self.per_epoch != epoch:
                epoch = batch // self.per_epoch
                order = torch.randperm(self.n_images, generator=torch.Generator().manual_seed(self.seed + epoch))
            first = (batch % self.per_epoch) * self.batch_size * self.world_size + self.rank * self.batch_size
            yield from order[first : first + self.batch_size].tolist()


def mix_images(first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator, mixup_alpha: float = 1.0,
               cutmix_alpha: float = 1.0, cutmix_probability: float = 0.5) -> tuple[torch.Tensor, float]:
    """Mixup (a blend) or cutmix (a pasted box) of two ``[3, H, W]`` images; returns it and ``first``'s share."""
    if rng.random() >= cutmix_probability:
        share = float(rng.beta(mixup_alpha, mixup_alpha))
        return share * first + (1 - share) * second, share
    share = float(rng.beta(cutmix_alpha, cutmix_alpha))
    _, height, width = first.shape
    box_h, box_w = round(height * math.sqrt(1 - share)), round(width * math.sqrt(1 - share))
    y, x = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    mixed = first.clone()
    mixed[:, y : y + box_h, x : x + box_w] = second[:, y : y + box_h, x : x + box_w]
    return mixed, 1 - box_h * box_w / (height * width)  # the share the rounded box really left


@dataclass
class MixBatch:
    """DataLoader ``collate_fn``: stacks the views and appends ``round(fraction * images)`` mixed images.

    Returns ``images [R, 3, S, S]``, ``sources [R, 2]`` (indices of the batch's images each row shows) and
    ``shares [R, 2]`` (how much of each); a plain view shows its image twice with shares (1, 0).
    """

    fraction: float = 0.0
    mixup_alpha: float = 1.0
    cutmix_alpha: float = 1.0
    cutmix_probability: float = 0.5

    def __call__(self, samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        views = torch.stack(samples)  # [N, V, 3, S, S]
        n_images, n_views = views.shape[:2]
        images = views.flatten(0, 1)
        sources = torch.arange(n_images).repeat_interleave(n_views)[:, None].repeat(1, 2)
        shares = torch.tensor([[1.0, 0.0]]).repeat(len(images), 1)
        n_mixed = round(self.fraction * n_images) if n_images > 1 else 0
        if n_mixed:
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
            mixed, mixed_sources, mixed_shares = [], [], []
            for _ in range(n_mixed):
                a, b = rng.choice(n_images, size=2, replace=False)
                image, share = mix_images(views[a, rng.integers(n_views)], views[b, rng.integers(n_views)], rng,
                                          self.mixup_alpha, self.cutmix_alpha, self.cutmix_probability)
                mixed.append(image)
                mixed_sources.append([a, b])
                mixed_shares.append([share, 1 - share])
            images = torch.cat([images, torch.stack(mixed)])
            sources = torch.cat([sources, torch.tensor(mixed_sources)])
            shares = torch.cat([shares, torch.tensor(mixed_shares)])
        return images, sources, shares


@dataclass
class CollateViews:
    """DataLoader ``collate_fn`` of :class:`AugmentedViews`: ``mix``'s (images, sources, shares) of the views,
    and the unreadable images met while reading them (``{path: reason}``)."""

    mix: MixBatch

    def __call__(self, samples: list[tuple[torch.Tensor, dict[str, str]]]) -> tuple:
        broken = {path: reason for _, met in samples for path, reason in met.items()}
        return (*self.mix([views for views, _ in samples]), broken)
