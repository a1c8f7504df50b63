"""Learning-rate schedules, one function per option of the `scheduler` config group.

Each is built with the run's optimizer, epochs and steps per epoch, and returns a `Schedule`:
torch's scheduler, stepped by the loop after every batch (`per_batch`) or else by the recipe
after every epoch (with the val loss, for `plateau`).
"""

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch.optim import lr_scheduler

from mnistlab.options import Check, at_least

FRACTION = Check(lambda v: 0 < v <= 1, "a fraction in (0, 1], e.g. 0.7")
POSITIVE = Check(lambda v: v > 0, "a positive number")


@dataclass
class Schedule:
    """A torch lr scheduler and when it is stepped."""

    scheduler: Any = None  # None: the optimizer's lr stays as it is
    per_batch: bool = False
    on_val_loss: bool = False  # ReduceLROnPlateau reads the epoch's val loss

    def step(self) -> None:
        """After a batch (per-batch schedules)."""
        self.scheduler.step()

    def end_epoch(self, val_loss: float) -> None:
        """After an epoch (per-epoch schedules)."""
        if self.scheduler is None or self.per_batch:
            return
        self.scheduler.step(val_loss) if self.on_val_loss else self.scheduler.step()

    def state_dict(self) -> dict:
        """What a checkpoint keeps of it."""
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore it from a checkpoint."""
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


def constant(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    """`scheduler=none`: the lr stays at `lr` (the tutorial's)."""
    return Schedule()


def step(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    step_size: Annotated[int, at_least(1, "an integer >= 1 (epochs), e.g. 1")],
    gamma: Annotated[float, FRACTION],
) -> Schedule:
    """StepLR: the lr times `gamma` every `step_size` epochs."""
    return Schedule(lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma))


def cosine(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: Annotated[float, Check(lambda v: v >= 0, "epochs >= 0, e.g. 0 or 0.5")],
) -> Schedule:
    """Linear warmup from 0 over `warmup_epochs`, then a cosine from `lr` to 0, per batch."""
    total, warmup = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)

    def factor(done: int) -> float:  # steps done before this one
        if done < warmup:
            return (done + 1) / warmup
        progress = (done - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return Schedule(lr_scheduler.LambdaLR(optimizer, factor), per_batch=True)


def onecycle(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    max_lr: Annotated[float, POSITIVE],
    pct_start: Annotated[float, FRACTION],
    div_factor: Annotated[float, POSITIVE],
    final_div_factor: Annotated[float, POSITIVE],
) -> Schedule:
    """OneCycleLR, stepped per batch: up to `max_lr` over `pct_start` of the run, then down."""
    scheduler = lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
        pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor,
    )  # fmt: skip
    return Schedule(scheduler, per_batch=True)


def plateau(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    factor: Annotated[float, Check(lambda v: 0 < v < 1, "a fraction in (0, 1), e.g. 0.5")],
    patience: Annotated[int, at_least(0, "an integer >= 0 (epochs), e.g. 1")],
) -> Schedule:
    """ReduceLROnPlateau: lr times `factor` after `patience` epochs without a better val loss."""
    scheduler = lr_scheduler.ReduceLROnPlateau(optimizer, factor=factor, patience=patience)
    return Schedule(scheduler, on_val_loss=True)
