"""Image classifiers. Each takes the input shape and class count from the data at build time;
its other parameters are its options, set in its YAML under conf/model/, with their range rules
in the signature."""

from collections.abc import Sequence
from math import prod
from typing import Annotated

from torch import Tensor, nn

from mnistlab.data import normalize
from mnistlab.options import PROBABILITY, Check, at_least

WIDTHS = at_least(1, "a list of layer widths >= 1, e.g. [512,512]")


class MLP(nn.Module):
    """The tutorial's network: Flatten, then Linear+ReLU per hidden size, then Linear to logits."""

    def __init__(
        self, in_shape: Sequence[int], num_classes: int,
        hidden_sizes: Annotated[list[int], WIDTHS], dropout: Annotated[float, PROBABILITY],
    ):  # fmt: skip
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


class FeaturesClassifier(nn.Module):
    """A net of two parts: `features` (convolutions), then `classifier` (to logits)."""

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch of images to class logits."""
        return self.classifier(self.features(x))


class CNN(FeaturesClassifier):
    """Conv3x3(+BatchNorm)+ReLU+MaxPool2 blocks, then one hidden Linear layer and the classifier."""

    def __init__(
        self, in_shape: Sequence[int], num_classes: int,
        channels: Annotated[list[int], at_least(1, "a list of channel counts >= 1, e.g. [32,64]")],
        hidden_size: Annotated[int, at_least(1, "an integer >= 1, e.g. 256")],
        dropout: Annotated[float, PROBABILITY],
        batch_norm: bool = False,  # for runs recorded before the option existed
    ):  # fmt: skip
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
            norm = [nn.BatchNorm2d(out_channels)] if batch_norm else []
            conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not norm)
            blocks += [conv, *norm, nn.ReLU(), nn.MaxPool2d(2)]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * height * width, hidden_size), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden_size, num_classes),
        )  # fmt: skip


class LeNet5(FeaturesClassifier):
    """LeCun's LeNet-5: conv5 (6) + pool, conv5 (16) + pool, then 120, 84 and the classes;
    the first conv pads by 2, so a 28x28 image is seen as the original 32x32."""

    def __init__(
        self, in_shape: Sequence[int], num_classes: int,
        activation: Annotated[str, Check(lambda v: v in ("relu", "tanh"), "relu or tanh")],
    ):  # fmt: skip
        super().__init__()
        in_channels, height, width = in_shape
        if min(height, width) < 12:
            raise ValueError(f"in_shape={list(in_shape)}: LeNet-5 needs images of 12x12 or more")
        act = nn.ReLU if activation == "relu" else nn.Tanh
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2),
        )  # fmt: skip
        size = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(size, 120), act(), nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )  # fmt: skip


class ResidualBlock(nn.Module):
    """Two conv3x3+BatchNorm layers with a shortcut (a 1x1 conv where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )  # fmt: skip
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """The block's output: ReLU(body(x) + shortcut(x))."""
        return (self.body(x) + self.shortcut(x)).relu_()


class ResNet(FeaturesClassifier):
    """A small residual net: a conv3x3 stem of `width` channels, `stages` of `blocks_per_stage`
    residual blocks (each after the first halves the resolution, doubles the channels), a head."""

    def __init__(
        self, in_shape: Sequence[int], num_classes: int,
        width: Annotated[int, at_least(1, "an integer >= 1 (channels), e.g. 16")],
        stages: Annotated[int, at_least(1, "an integer >= 1, e.g. 3")],
        blocks_per_stage: Annotated[int, at_least(1, "an integer >= 1, e.g. 2")],
    ):  # fmt: skip
        super().__init__()
        in_channels, height, width_px = in_shape
        most = min(height, width_px).bit_length()  # each later stage halves the resolution
        if stages > most:
            raise ValueError(
                f"stages={stages}: {stages - 1} halvings shrink a {height}x{width_px} input to "
                f"nothing; use at most {most}"
            )
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        ]  # fmt: skip
        channels = width
        for stage in range(stages):
            out = width * 2**stage
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(ResidualBlock(channels, out, stride))
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
        )


class RawImageModel(nn.Module):
    """The run's MLflow model: its net with the data's normalisation inside, for 0-1 float or
    uint8 pixels (N x C x H x W, N x H x W or N x C*H*W); its state_dict is the net's."""

    def __init__(self, net: nn.Module, in_shape: Sequence[int], mean: float, std: float):
        super().__init__()
        self.net, self.in_shape, self.mean, self.std = net, tuple(in_shape), mean, std

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for a batch of raw pixels (uint8: bit for bit the run's own)."""
        x = x.reshape(len(x), *self.in_shape)
        if x.is_floating_point():
            return self.net((x.float() - self.mean) / self.std)
        return self.net(normalize(x, self.mean, self.std))

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.net.load_state_dict(*args, **kwargs)
