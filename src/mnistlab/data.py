"""Datasets as uint8 tensors on the training device, with a seeded val split and batch slicing.

Images stay uint8 until a batch is taken (`Dataset.inputs` converts it: no per-sample work in the
loop); training batches are augmented on their device by their own seeded generator (`augment`).
"""

import contextlib
import hashlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torch.utils.data import Dataset as TorchDataset

from mnistlab import distributed
from mnistlab.errors import UserError
from mnistlab.files import atomic_write
from mnistlab.options import Augment, Check, Loader, at_least, finite

VAL_SIZE = at_least(1, "an integer >= 1, e.g. data.val_size=5000")
MEAN = Check(finite, "a finite pixel mean, e.g. 0.1307")
STD = Check(lambda v: finite(v) and v > 0, "a positive pixel std, e.g. 0.3081")
MAX_SHIFT = 2  # pixels, for shift and affine
MAX_DEGREES = 10.0  # affine's rotation
MAX_SCALE = 0.1  # affine's zoom in or out, as a fraction


def augment(images: Tensor, kind: Augment, generator: torch.Generator) -> Tensor:
    """Shift (by whole pixels) or warp (rotate, scale, shift) each image of a float batch
    (B x C x H x W, black = 0); the random draws come from `generator` (a CPU generator)."""
    kind = Augment(kind)
    if kind is Augment.none:
        return images
    n, _, height, width = images.shape
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2), generator=generator).float()
    # affine_grid's coordinates run from -1 to 1 across the image: one pixel is 2 / size
    tx, ty = shifts[:, 0] * 2 / width, shifts[:, 1] * 2 / height
    if kind is Augment.shift:
        angle, scale = torch.zeros(n), torch.ones(n)
    else:
        draws = torch.rand(n, 2, generator=generator) * 2 - 1
        angle = draws[:, 0] * math.radians(MAX_DEGREES)
        scale = 1 + draws[:, 1] * MAX_SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    mode = "nearest" if kind is Augment.shift else "bilinear"
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def get_class(path: str) -> type:
    """The class a dotted path names, e.g. torchvision.datasets.MNIST."""
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)


def normalize(images: Tensor, mean: float, std: float) -> Tensor:
    """Images in 0-255 (B x H x W, or B x C x H x W) to float inputs: (x / 255 - mean) / std."""
    images = images.unsqueeze(1) if images.dim() == 3 else images
    return (images.float() * (1.0 / (255.0 * std))).sub_(mean / std)


@dataclass(frozen=True)
class Split:
    """Images (uint8, N x H x W for one channel, or N x C x H x W) and their labels (N); `samples`
    is a per-sample torch Dataset over the same images, for `data.loader=torch`."""

    images: Tensor
    labels: Tensor
    samples: TorchDataset | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Split":
        """Return this split with its tensors on `device`."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


@dataclass(frozen=True)
class Dataset:
    """The train, val and test splits of one dataset, with what the model needs to know of it."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: float
    std: float
    loader: Loader = Loader.tensor
    num_workers: int = 0
    device: torch.device = torch.device("cpu")
    augment: Augment = Augment.none  # applied to training batches only

    def __post_init__(self) -> None:
        if Augment(self.augment) is not Augment.none and Loader(self.loader) is Loader.torch:
            raise UserError(
                f"data.augment={Augment(self.augment).value} works on whole batches of the "
                "tensor loader: use data.loader=tensor, or data.augment=none"
            )

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """Shape of one model input: channels, height, width."""
        shape = tuple(self.train.images.shape[1:])
        return (1, *shape) if len(shape) == 2 else shape

    @property
    def num_classes(self) -> int:
        """Number of target classes."""
        return len(self.classes)

    def to(self, device: torch.device) -> "Dataset":
        """Return the dataset for training on `device`; tensor batches then never leave it."""
        if self.loader is Loader.torch:  # the DataLoader reads on the CPU; batches move per step
            return replace(self, device=device)
        splits = {name: getattr(self, name).to(device) for name in ("train", "val", "test")}
        return replace(self, **splits, device=device)

    def inputs(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A uint8 batch as normalised float inputs (B x C x H x W), augmented if `generator`."""
        if generator is not None and Augment(self.augment) is not Augment.none:
            images = images.unsqueeze(1) if images.dim() == 3 else images
            images = augment(images.float(), self.augment, generator)
        return normalize(images, self.mean, self.std)

    def train_subset(self, size: int) -> "Dataset":
        """The dataset with only the first `size` training samples (a fixed set to overfit)."""
        train = self.train
        return replace(self, train=Split(train.images[:size], train.labels[:size]))

    def info(self) -> dict:
        """What a trained model needs to know of its data to predict: shapes, names, scaling."""
        return {
            "in_shape": list(self.in_shape),
            "classes": list(self.classes),
            "mean": self.mean,
            "std": self.std,
        }

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator | None = None,
        skip: int = 0, augment: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:  # fmt: skip
        """Yield (inputs, labels) on the device, shuffled by `generator` if given, from batch
        `skip` on (an epoch resumed midway); the last batch may be partial. With `augment`,
        batch j is augmented with draws seeded by `generator`'s seed and j alone."""
        n = len(split)
        order = None  # in order; else this rank's share of a seeded shuffle
        if generator is not None:
            order = distributed.shard(torch.randperm(n, generator=generator))
        if self.loader is Loader.torch:
            loader = DataLoader(
                split.samples,
                batch_size=batch_size,
                sampler=None if order is None else order.tolist(),
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )
            for inputs, labels in itertools.islice(loader, skip, None):
                yield inputs.to(self.device, non_blocking=True), labels.to(self.device)
            return
        if order is None:
            for start in range(0, n, batch_size):
                end = start + batch_size
                yield self.inputs(split.images[start:end]), split.labels[start:end]
            return
        order = order.to(split.labels.device)
        base = generator.initial_seed() * 31
        for start in range(skip * batch_size, len(order), batch_size):
            idx = order[start : start + batch_size]
            draws = torch.Generator().manual_seed(base + start // batch_size) if augment else None
            yield self.inputs(split.images[idx], draws), split.labels[idx]


def hold_out(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val) of a training set of `n`; `seed` chooses the `val_size` val samples."""
    if not 1 <= val_size < n:
        raise UserError(
            f"data.val_size={val_size} is invalid: use an integer from 1 to {n - 1} "
            f"(the training set has {n} samples)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def cached(cache_dir: str | Path | None, name: str, stamp: str, build: Callable[[], dict]) -> dict:
    """`build()`'s tensors, kept as `name`-<hash of `stamp`>.pt in `cache_dir` (None: not kept);
    a corrupt cache is rebuilt, never trusted; an unwritable one only costs the build next time."""
    key = hashlib.sha1(stamp.encode()).hexdigest()[:12]
    cache = Path(cache_dir).expanduser() / f"{name}-{key}.pt" if cache_dir else None
    if cache and cache.exists():
        try:
            return torch.load(cache, weights_only=True)
        except Exception:
            cache.unlink(missing_ok=True)
    tensors = build()
    if cache:
        with contextlib.suppress(OSError):
            atomic_write(cache, lambda f: torch.save(tensors, f))
    return tensors


def read_cached(dataset: str, root: Path, download: bool, cache_dir: str | Path | None) -> dict:
    """The dataset's uint8 tensors and class names, decoded once, then cached in `cache_dir` by
    the raw files' names, sizes and times (a cache hit skips torchvision's 1.4 s import)."""
    raw = root / dataset.rsplit(".", 1)[-1] / "raw"
    files = sorted(raw.glob("*ubyte"))
    stamp = "".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in files)

    def decode() -> dict:
        cls = get_class(dataset)
        tensors = {"classes": list(cls.classes)}
        for name in ("train", "test"):
            split = cls(str(root), train=name == "train", download=download)
            tensors[f"{name}_images"], tensors[f"{name}_labels"] = split.data, split.targets
        return tensors

    about = f"{dataset}|{root}|{stamp}"  # no stamp: files downloaded now are cached next run
    return cached(cache_dir if stamp else None, raw.parent.name, about, decode)


def read_or_explain(dataset: str, root: str, download: bool, cache_dir: str | None) -> dict:
    """`read_cached`, failing in one line that says whether the files are missing or broken and
    what helps; a failed download leaves none of the empty folders it made."""
    root_path = Path(root).expanduser().resolve()
    raw_dir = root_path / dataset.rsplit(".", 1)[-1] / "raw"
    made = [p for p in (raw_dir, *raw_dir.parents) if not p.exists()]  # by a download, if any
    try:
        return read_cached(dataset, root_path, download, cache_dir)
    except (RuntimeError, OSError) as err:
        for folder in made:  # deepest first; a folder with a file in it stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        names = [Path(url).name.removesuffix(".gz") for url, _ in get_class(dataset).resources]
        reason = " ".join(str(err).split())[:200]
        online = "go online" if download else "go online with data.download=true"
        if all((raw_dir / name).is_file() for name in names):  # there, but truncated or corrupt
            raise UserError(
                f"data.root={root}: the {raw_dir.parent.name} files in {raw_dir} are unreadable "
                f"({reason}); replace them with intact copies, or delete them and {online}"
            ) from err
        why = f"the download failed ({reason})" if download else "data.download=false"
        raise UserError(
            f"data.root={root}: no {raw_dir.parent.name} in {raw_dir} (expected "
            f"{', '.join(names)}) and {why}. Fix: copy those files there, point data.root (or "
            f"MNISTLAB_DATA) at the folder that holds {raw_dir.parent.name}/raw/, or {online}"
        ) from err


def load_torchvision(
    dataset: str,
    root: str,
    download: bool,
    val_size: Annotated[int, at_least(0, "an integer >= 0 (0: the test split is the val split)")],
    mean: Annotated[float, MEAN],
    std: Annotated[float, STD],
    seed: int,
    loader: Loader,
    num_workers: Annotated[int, at_least(0, "an integer >= 0 (0 loads in the main process)")],
    cache_dir: str | None,
    augment: Augment = Augment.none,  # for runs recorded before the option existed
) -> Dataset:
    """Read a torchvision MNIST-style dataset (downloading it if allowed) into uint8 tensors."""
    t = read_or_explain(dataset, root, download, cache_dir)
    n = len(t["train_labels"])  # val_size=0: train on all, evaluate on test (as the tutorial)
    train_idx, val_idx = hold_out(n, val_size, seed) if val_size else (torch.arange(n), None)
    train_samples = test_samples = None
    if Loader(loader) is Loader.torch:  # per-sample PIL decode and transforms, as torchvision does
        from torchvision import transforms

        cls, folder = get_class(dataset), str(Path(root).expanduser().resolve())
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
        train_samples = cls(folder, train=True, transform=transform)
        test_samples = cls(folder, train=False, transform=transform)
    images, labels = t["train_images"], t["train_labels"]
    test = Split(t["test_images"], t["test_labels"], test_samples)
    val = test if val_idx is None else Split(images[val_idx], labels[val_idx],
                                             _subset(train_samples, val_idx))  # fmt: skip
    return Dataset(
        train=Split(images[train_idx], labels[train_idx], _subset(train_samples, train_idx)),
        val=val, test=test, classes=t["classes"], mean=mean, std=std, loader=Loader(loader),
        num_workers=num_workers, augment=Augment(augment),
    )  # fmt: skip


def _subset(samples: TorchDataset | None, indices: Tensor) -> TorchDataset | None:
    return None if samples is None else Subset(samples, indices.tolist())


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
    train_size: Annotated[int, at_least(2, "an integer >= 2, e.g. 3000")],
    test_size: Annotated[int, at_least(1, "an integer >= 1, e.g. 1000")],
    val_size: Annotated[int, VAL_SIZE],
    noise: Annotated[
        float, Check(lambda v: finite(v) and v >= 0, "a grey-level std >= 0, e.g. 60")
    ],
    mean: Annotated[float, MEAN],
    std: Annotated[float, STD],
    seed: int,
    augment: Augment = Augment.none,  # for runs recorded before the option existed
    num_classes: int = 10,
    size: int = 28,
) -> Dataset:
    """Generate learnable 10-class 28x28 images: a template per class, shifted <= 2 px, plus
    noise. The templates are the same for every seed (the task is fixed); `seed` draws samples."""
    templates = _templates(num_classes, size, torch.Generator().manual_seed(20261129))
    generator = torch.Generator().manual_seed(seed)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(num_classes, (n,), generator=generator)
        shifts = torch.randint(-2, 3, (n, 2), generator=generator).tolist()
        pairs = zip(labels.tolist(), shifts, strict=True)
        images = torch.stack([templates[c].roll(s, dims=(0, 1)) for c, s in pairs])
        images += noise * torch.randn(images.shape, generator=generator)
        return images.clamp_(0, 255).round_().to(torch.uint8), labels

    images, labels = sample(train_size)
    train_idx, val_idx = hold_out(train_size, val_size, seed)
    return Dataset(
        train=Split(images[train_idx], labels[train_idx]),
        val=Split(images[val_idx], labels[val_idx]),
        test=Split(*sample(test_size)), classes=[f"class {i}" for i in range(num_classes)],
        mean=mean, std=std, augment=Augment(augment),
    )  # fmt: skip
