"""What options may hold, with no torch and no Hydra: the enums of fixed choices, and `Check`, a
range rule written beside the option it checks (a schema field, or a constructor parameter as
`Annotated[float, Check(...)]`)."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class Check:
    """A value is valid when `test(value)` holds; `allowed` tells the user what is."""

    test: Callable[[Any], bool]
    allowed: str

    def passes(self, value: Any) -> bool:
        """Whether `value` is allowed (a test that raises on it does not allow it)."""
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def finite(v: Any) -> bool:
    """A real number, not NaN or infinite."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def each(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A test that holds for a number, or for every number of a list."""
    return lambda v: all(test(x) for x in v) if isinstance(v, list | tuple) else test(v)


def at_least(low: int, allowed: str) -> Check:
    """An integer >= `low` (or a list of them)."""
    return Check(each(lambda v: v >= low), allowed)


PROBABILITY = Check(lambda v: 0 <= v < 1, "a probability in [0, 1), e.g. 0.5")


class DeviceType(str, Enum):
    """Where to train: `auto` picks cuda, then mps, then cpu."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Amp(str, Enum):
    """Mixed precision for the forward pass: none (fp32) or bfloat16 autocast."""

    none = "none"
    bf16 = "bf16"


class Compile(str, Enum):
    """torch.compile mode; reduce_overhead also captures CUDA graphs on a GPU."""

    off = "off"
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"


class Loader(str, Enum):
    """How batches are made: sliced from device-resident tensors, or by torch's DataLoader."""

    tensor = "tensor"
    torch = "torch"


class Augment(str, Enum):
    """Random changes to each training batch: none, shift (up to 2 px) or affine (rotate, scale)."""

    none = "none"
    shift = "shift"
    affine = "affine"


class OnNan(str, Enum):
    """What to do when the training loss becomes NaN or inf."""

    stop = "stop"
    ignore = "ignore"
