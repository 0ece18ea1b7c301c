"""Training batches for :mod:`isc.train.training`: each image as several augmented views (random crops, DISC21-style
edits from :mod:`isc.synth.edits`, flips, colour jitter), a few mixup/cutmix images appended to each batch, and
an order of images that every ``torchrun`` process shares and a resumed run continues.

Every random draw of a sample comes from its own seed (the run's seed and the sample's place in the training
order), never from a stream that depends on what a process drew before: a run resumed at a step draws what an
uninterrupted run draws there, whatever the number of loader processes."""

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
from isc.core.images import broken_reason
from isc.synth.edits import random_edit


class Overlays(Sequence[Image.Image]):
    """Images of the training set that an edit may paste its image onto or over (as DISC21 pasted copies onto
    other photos), decoded only when an edit takes one."""

    def __init__(self, views: AugmentedViews, indices: Sequence[int]) -> None:
        self.views, self.indices = views, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Image.Image:  # type: ignore[override]  # no slices: the edits pick one
        image, _ = self.views.load_readable(self.indices[item])
        return image.resize((self.views.image_size, self.views.image_size))


class AugmentedViews(Dataset):
    """Item ``(number, i)``: a ``[views, 3, S, S]`` tensor of independently augmented copies of image ``i``, the
    unreadable images met while reading it (``{path: reason}``), and a seed for the batch's mixing; every draw
    from the seed ``(seed, number)``, ``number`` being the sample's place in the training order
    (:class:`NumberedOrder`).

    An unreadable image is replaced by the next readable one, so that every batch keeps its size (the processes
    of a torchrun group gather equal batches). Runs in the DataLoader's worker processes.
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
        seed: int = 0,
    ) -> None:
        self.paths, self.image_size, self.views = list(paths), image_size, views
        self.edit_probability, self.n_overlays, self.seed = edit_probability, n_overlays, seed
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

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, dict[str, str], int]:
        number, index = item
        image, broken = self.load_readable(index)
        rng = np.random.default_rng([self.seed, number])
        overlays = Overlays(self, rng.choice(len(self.paths), min(self.n_overlays, len(self.paths)), replace=False))
        # torchvision's transforms draw from torch's global generator: seeded here, restored after
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            views = torch.stack([self.view(image, rng, overlays) for _ in range(self.views)])
        return views, broken, int(rng.integers(2**62))

    def view(self, image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image]) -> torch.Tensor:
        image = self.crop(image)
        if rng.random() < self.edit_probability:
            image = random_edit(image, rng, overlays)
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


class NumberedOrder(Sampler[tuple[int, int]]):
    """:class:`TrainingOrder`'s indices as ``(number, index)``: ``number`` the sample's place in the order of every
    process together (micro-batch, then process, then place in the batch), the same in a resumed run."""

    def __init__(self, order: TrainingOrder) -> None:
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        o = self.order
        for place, index in enumerate(o):
            batch, within = o.start + place // o.batch_size, place % o.batch_size
            yield (batch * o.world_size + o.rank) * o.batch_size + within, index


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

    def __call__(self, samples: list[torch.Tensor], rng: np.random.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``rng``: where the mixing draws from (default: a generator seeded from torch's)."""
        views = torch.stack(samples)  # [N, V, 3, S, S]
        n_images, n_views = views.shape[:2]
        images = views.flatten(0, 1)
        sources = torch.arange(n_images).repeat_interleave(n_views)[:, None].repeat(1, 2)
        shares = torch.tensor([[1.0, 0.0]]).repeat(len(images), 1)
        n_mixed = round(self.fraction * n_images) if n_images > 1 else 0
        if n_mixed:
            rng = rng or np.random.default_rng(int(torch.randint(2**62, ())))
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
    mixed from the first sample's seed, and the unreadable images met while reading them (``{path: reason}``)."""

    mix: MixBatch

    def __call__(self, samples: list[tuple[torch.Tensor, dict[str, str], int]]) -> tuple:
        broken = {path: reason for _, met, _ in samples for path, reason in met.items()}
        mixed = self.mix([views for views, _, _ in samples], np.random.default_rng(samples[0][2]))
        return (*mixed, broken)
