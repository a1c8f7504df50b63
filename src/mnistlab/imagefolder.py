"""Your own images, in torchvision's ImageFolder layout: `root/train/<class>/*.png|jpg` and
`root/test/<class>/*.png|jpg`, classes named by their folders; decoded once (resized to
`image_size`, `channels` channels), cached like MNIST, then served as uint8 tensors."""

import os
from pathlib import Path
from typing import Annotated

import torch
from torch import Tensor

from mnistlab.data import MEAN, STD, VAL_SIZE, Dataset, Split, cached, hold_out
from mnistlab.errors import UserError
from mnistlab.options import Augment, Check, at_least

SUFFIXES = {".png", ".jpg", ".jpeg"}


def scan(root: Path, split: str) -> dict[str, list[Path]]:
    """{class name: its image files} of `root/split`; one line for a missing split or class."""
    folder = root / split
    if not folder.is_dir():
        raise UserError(
            f"data.root={root}: no {split}/ folder in it; put the images in "
            f"{folder}/<class>/*.png or *.jpg (torchvision's ImageFolder layout)"
        )
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"data.root={root}: {folder} has no class folders; add {folder}/<class>/")
    files = {c: sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in SUFFIXES)
             for c in classes}  # fmt: skip
    for name, paths in files.items():
        if not paths:
            raise UserError(
                f"data.root={root}: the class folder {folder / name} holds no .png or .jpg "
                "image; add images to it or remove it"
            )
    return files


def decode(paths: list[Path], image_size: int, channels: int) -> Tensor:
    """The images as uint8 (N x H x W for 1 channel, N x 3 x H x W), resized and converted."""
    from PIL import Image, UnidentifiedImageError

    out = torch.empty(len(paths), image_size, image_size, channels, dtype=torch.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
                pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise UserError(
                f"data.root: cannot read the image {path} ({type(err).__name__}: {err}); "
                "replace it with a PNG or JPEG, or remove it"
            ) from None
        out[i] = pixels.view(image_size, image_size, channels)
    return out[..., 0] if channels == 1 else out.permute(0, 3, 1, 2).contiguous()


def read(root: Path, image_size: int, channels: int, cache_dir: str | None) -> dict:
    """Both splits decoded with labels and class names, cached by their files and the settings."""
    train, test = scan(root, "train"), scan(root, "test")
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise UserError(
            f"data.root={root}: test classes {unknown} are not in train/; a model can only "
            "predict the classes it was trained on: add them to train/ or remove them from test/"
        )
    classes = sorted(train)
    files = [(c, p) for split in (train, test) for c in classes for p in split.get(c, [])]
    stamp = "".join(f"{p}:{os.stat(p).st_size}:{os.stat(p).st_mtime_ns};" for _, p in files)

    def decode_all() -> dict:
        tensors = {"classes": classes}
        for name, split in (("train", train), ("test", test)):
            paths = [p for c in classes for p in split.get(c, [])]
            tensors[f"{name}_images"] = decode(paths, image_size, channels)
            labels = [i for i, c in enumerate(classes) for _ in split.get(c, [])]
            tensors[f"{name}_labels"] = torch.tensor(labels, dtype=torch.long)
        return tensors

    about = f"{image_size}|{channels}|{stamp}"
    return cached(cache_dir, f"imagefolder-{root.name}", about, decode_all)


def load_imagefolder(
    root: str,
    image_size: Annotated[int, at_least(4, "an integer >= 4 (pixels), e.g. 28")],
    channels: Annotated[int, Check(lambda v: v in (1, 3), "1 (grayscale) or 3 (RGB)")],
    val_size: Annotated[int, VAL_SIZE],
    mean: Annotated[float | None, Check(lambda v: v is None or MEAN.passes(v), MEAN.allowed)],
    std: Annotated[float | None, Check(lambda v: v is None or STD.passes(v), STD.allowed)],
    seed: int,
    cache_dir: str | None,
    augment: Augment,
) -> Dataset:
    """Your own image classes from `root` (train/ and test/, a folder per class); `mean` and
    `std` (of pixels in [0, 1]) are measured on the train split (val held out) when null."""
    t = read(Path(root).expanduser().resolve(), image_size, channels, cache_dir)
    train_idx, val_idx = hold_out(len(t["train_labels"]), val_size, seed)
    images, labels = t["train_images"], t["train_labels"]
    pixels = images[train_idx].float() / 255
    return Dataset(
        train=Split(images[train_idx], labels[train_idx]),
        val=Split(images[val_idx], labels[val_idx]),
        test=Split(t["test_images"], t["test_labels"]), classes=t["classes"],
        mean=float(pixels.mean()) if mean is None else mean,
        std=float(pixels.std()) if std is None else std, augment=Augment(augment),
    )  # fmt: skip
