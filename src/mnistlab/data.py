"""Datasets as uint8 tensors on the training device, with a seeded val split and batch slicing.

Images stay uint8 until a batch is taken; `Dataset.inputs` converts and normalises on the fly,
so there is no per-sample PIL or DataLoader work in the training loop.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hydra.utils import get_class
from torch import Tensor

from mnistlab.config import ConfigError


class DataError(ConfigError):
    """The dataset cannot be read or fetched; the message says where it looked and the fix."""


@dataclass(frozen=True)
class Split:
    """Images (uint8, N x H x W) and their integer labels (N)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Split":
        """Return this split on `device`."""
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Dataset:
    """The train, val and test splits of one dataset, with what the model needs to know of it."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: float
    std: float

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """Shape of one model input: channels, height, width."""
        return (1, *self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of target classes."""
        return len(self.classes)

    def to(self, device: torch.device) -> "Dataset":
        """Return the dataset with every split on `device`."""
        return replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )

    def inputs(self, images: Tensor) -> Tensor:
        """Turn a uint8 batch (B x H x W) into normalised float model inputs (B x 1 x H x W)."""
        scale = 1.0 / (255.0 * self.std)
        return (images.unsqueeze(1).float() * scale).sub_(self.mean / self.std)


def batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images, labels) batches, shuffled by `generator` if given; the last may be partial."""
    n = len(split)
    if generator is None:
        for start in range(0, n, batch_size):
            yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(split.labels.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield split.images[idx], split.labels[idx]


def hold_out(images: Tensor, labels: Tensor, val_size: int, seed: int) -> tuple[Split, Split]:
    """Split training data into (train, val), choosing the `val_size` val samples with `seed`."""
    if not 1 <= val_size < len(labels):
        raise ConfigError(
            f"data.val_size={val_size} is invalid: use an integer from 1 to {len(labels) - 1} "
            f"(the training set has {len(labels)} samples)"
        )
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    return Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx])


def load_torchvision(
    dataset: str,
    root: str,
    download: bool,
    val_size: int,
    mean: float,
    std: float,
    seed: int,
) -> Dataset:
    """Read a torchvision MNIST-style dataset (downloading it if allowed) into uint8 tensors."""
    cls = get_class(dataset)
    root_path = Path(root).expanduser().resolve()
    raw = root_path / cls.__name__ / "raw"
    try:
        train = cls(str(root_path), train=True, download=download)
        test = cls(str(root_path), train=False, download=download)
    except (RuntimeError, OSError) as err:
        expected = ", ".join(Path(url).name.removesuffix(".gz") for url, _ in cls.resources)
        why = " ".join(str(err).split()) if download else "data.download=false"
        raise DataError(
            f"data.root={root}: no {cls.__name__} in {raw} (expected {expected}) and {why}. "
            f"Fix: set data.root=<folder that holds {cls.__name__}/raw> (or MNISTLAB_DATA), "
            "or go online with data.download=true"
        ) from err
    train_split, val_split = hold_out(train.data, train.targets, val_size, seed)
    return Dataset(
        train=train_split,
        val=val_split,
        test=Split(test.data, test.targets),
        classes=list(train.classes),
        mean=mean,
        std=std,
    )


def _templates(num_classes: int, size: int, generator: torch.Generator) -> Tensor:
    """One grey-level template per class: a sum of three Gaussian blobs at class-specific places."""
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centres = torch.rand(num_classes, 3, 2, generator=generator) * (size - 12) + 6
    widths = torch.rand(num_classes, 3, generator=generator) * 2 + 2
    dist2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    blobs = torch.exp(-dist2 / (2 * widths[..., None, None] ** 2)).sum(dim=1)
    return 230 * blobs / blobs.amax(dim=(1, 2), keepdim=True)


def make_synthetic(
    train_size: int,
    test_size: int,
    val_size: int,
    noise: float,
    mean: float,
    std: float,
    seed: int,
    num_classes: int = 10,
    size: int = 28,
) -> Dataset:
    """Generate learnable 10-class 28x28 images: a template per class, shifted <= 2 px, plus noise.

    The templates are the same for every seed (the task is fixed); `seed` draws the samples.
    """
    templates = _templates(num_classes, size, torch.Generator().manual_seed(20261129))
    generator = torch.Generator().manual_seed(seed)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(num_classes, (n,), generator=generator)
        shifts = torch.randint(-2, 3, (n, 2), generator=generator).tolist()
        pairs = zip(labels.tolist(), shifts, strict=True)
        images = torch.stack([templates[c].roll(s, dims=(0, 1)) for c, s in pairs])
        images += noise * torch.randn(images.shape, generator=generator)
        return images.clamp_(0, 255).round_().to(torch.uint8), labels

    train_split, val_split = hold_out(*sample(train_size), val_size, seed)
    return Dataset(
        train=train_split,
        val=val_split,
        test=Split(*sample(test_size)),
        classes=[f"class {i}" for i in range(num_classes)],
        mean=mean,
        std=std,
    )
