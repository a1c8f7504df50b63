"""Image classifiers. Each takes the input shape and class count from the data at build time;
its other parameters are its options, set in its YAML under conf/model/, with their range rules
in the signature."""

from collections.abc import Sequence
from math import prod
from typing import Annotated

from torch import Tensor, nn

from mnistlab.options import PROBABILITY, at_least


class MLP(nn.Module):
    """The tutorial's network: Flatten, then Linear+ReLU per hidden size, then Linear to logits."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Annotated[
            list[int], at_least(1, "a list of layer widths >= 1, e.g. [512,512]")
        ],
        dropout: Annotated[float, PROBABILITY],
    ):
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = prod(in_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.linear_relu_stack = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch of images to class logits."""
        return self.linear_relu_stack(self.flatten(x))


class CNN(nn.Module):
    """Conv3x3+ReLU+MaxPool2 blocks, then one hidden Linear layer and the classifier."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Annotated[list[int], at_least(1, "a list of channel counts >= 1, e.g. [32,64]")],
        hidden_size: Annotated[int, at_least(1, "an integer >= 1, e.g. 256")],
        dropout: Annotated[float, PROBABILITY],
    ):
        super().__init__()
        in_channels, height, width = in_shape
        most = min(height, width).bit_length() - 1  # each block halves height and width
        if len(channels) > most:
            raise ValueError(
                f"channels={str(list(channels)).replace(' ', '')}: {len(channels)} pooling "
                f"blocks halve a {height}x{width} input to nothing; use at most {most} entries, "
                "or larger images"
            )
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch of images to class logits."""
        return self.classifier(self.features(x))
