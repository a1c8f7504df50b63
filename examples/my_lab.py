"""A user's own model and dataset, outside mnistlab: picked with model=wide_mlp and
data=stripes once `--config-dir examples/conf` is given and this folder is on PYTHONPATH.

    PYTHONPATH=examples python -m train --config-dir examples/conf model=wide_mlp data=stripes
"""

from typing import Annotated

import torch
from torch import nn

from mnistlab.data import Dataset, Split, hold_out
from mnistlab.options import PROBABILITY, Check


class WideMLP(nn.Module):
    """One wide hidden layer. `in_shape` and `num_classes` come from the data; `width` and
    `dropout` are this model's options, typed and range-checked by its signature."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        width: Annotated[int, Check(lambda v: v >= 1, "a width >= 1, e.g. 1024")],
        dropout: Annotated[float, PROBABILITY],
    ):
        super().__init__()
        channels, height, w = in_shape
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * height * w, width), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(width, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.net(x)


def stripes(
    train_size: Annotated[int, Check(lambda v: v >= 2, "an integer >= 2")],
    test_size: Annotated[int, Check(lambda v: v >= 1, "an integer >= 1")],
    val_size: Annotated[int, Check(lambda v: v >= 1, "an integer >= 1")],
    seed: int,
) -> Dataset:
    """16x16 images of 4 classes: a stripe at one of 4 angles, in noise. The seed draws them."""
    g = torch.Generator().manual_seed(seed)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(4, (n,), generator=g)
        images = torch.rand(n, 16, 16, generator=g) * 80
        rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
        masks = torch.stack([rows == 8, cols == 8, rows == cols, rows + cols == 15])
        images[masks[labels]] += 170
        return images.clamp(0, 255).to(torch.uint8), labels

    images, labels = sample(train_size)
    train, val = hold_out(train_size, val_size, seed)
    return Dataset(
        train=Split(images[train], labels[train]),
        val=Split(images[val], labels[val]),
        test=Split(*sample(test_size)),
        classes=["horizontal", "vertical", "diagonal", "anti-diagonal"],
        mean=0.25,
        std=0.3,
    )
