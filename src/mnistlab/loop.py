"""The epoch loop and evaluation, in plain torch: they take parts and return numbers.

Nothing here knows of tracking, MLflow or Hydra. The training state is one `TrainState`, which
the recipe checkpoints and restores; a signal stops an epoch between two steps, with the state
holding the steps so far, so a resume finishes that epoch bit for bit.
"""

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnistlab import distributed
from mnistlab.device import autocast
from mnistlab.errors import NonFiniteLossError
from mnistlab.options import Amp, OnNan

LOG = logging.getLogger(__name__)
EPOCH_KEYS = [f"{split}/{m}" for split in ("train", "val", "test") for m in ("loss", "acc")]


@dataclass
class TrainState:
    """Where training stands: what a checkpoint holds besides the weights and the optimizer."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps done of epoch + 1 (0: at an epoch boundary)
    best_val_acc: float = -1.0
    loss_sum: float = 0.0  # over the steps done of epoch + 1
    correct: int = 0  # training samples classified right in those steps
    elapsed_s: float = 0.0  # training time of those steps
    step_losses: list[tuple[int, float]] = field(default_factory=list)  # (global step, loss)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # per epoch

    def end_epoch(self, metrics: dict[str, float]) -> bool:
        """Record a finished epoch's metrics; whether its val accuracy is a new best."""
        self.epoch += 1
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((self.epoch, value))
        improved = metrics["val/acc"] > self.best_val_acc
        self.best_val_acc = max(self.best_val_acc, metrics["val/acc"])
        self.step, self.loss_sum, self.correct, self.elapsed_s = 0, 0.0, 0, 0.0
        self.step_losses = []
        return improved

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainState":
        """The state as a checkpoint stores it (tuples come back as lists)."""
        state = cls(**values)
        state.step_losses = [tuple(p) for p in state.step_losses]
        state.history = {k: [tuple(p) for p in v] for k, v in state.history.items()}
        return state


@dataclass(frozen=True)
class LoopSettings:
    """The options the epoch loop reads."""

    epochs: int
    batch_size: int
    seed: int
    log_every: int = 100
    amp: Amp = Amp.none
    on_nan: OnNan = OnNan.stop


class EpochInterrupted(Exception):
    """A signal stopped the epoch between two steps; the state holds the steps so far."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling RNG of one epoch: a function of (seed, epoch) alone, so it can be replayed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def check_finite(loss: float, where: str, on_nan: OnNan) -> None:
    """Raise NonFiniteLossError for a NaN or inf loss unless train.on_nan=ignore."""
    if OnNan(on_nan) is OnNan.stop and not math.isfinite(loss):
        raise NonFiniteLossError(
            f"train loss is {loss} at {where}: lower lr, or set train.on_nan=ignore to keep going"
        )


@torch.inference_mode()
def evaluate(model: nn.Module, data, split, batch_size: int, amp: Amp = Amp.none) -> dict:
    """Mean cross-entropy loss and accuracy of `model` over `split` of `data`."""
    model.eval()
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    for inputs, labels in data.batches(split, batch_size):
        with autocast(data.device, amp):
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    return {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}


def train_epoch(model, data, optimizer, state: TrainState, opts: LoopSettings, stop=None) -> dict:
    """Train epoch `state.epoch + 1` over the shuffled train split, from step `state.step` on.

    Appends (global step, loss) to `state.step_losses` every `log_every` steps. If `stop` turns
    true, raise EpochInterrupted between two steps with the state's sums up to date. Returns the
    epoch's train loss and accuracy.
    """
    model.train()
    split, epoch, done = data.train, state.epoch + 1, state.step
    ranks = distributed.world_size()  # under torchrun each rank trains on 1/ranks of the split
    trained = len(split) - len(split) % ranks
    steps = math.ceil(trained // ranks / opts.batch_size)
    main = distributed.is_main()  # rank 0 holds the sums of the steps done before a resume
    loss_sum = torch.tensor(state.loss_sum if main else 0.0, device=data.device)
    correct = torch.tensor(state.correct if main else 0, device=data.device)
    bar = tqdm(  # samples/s and the loss; off when stderr is not a terminal (CI logs)
        total=len(split), desc=f"epoch {epoch}", unit="img", unit_scale=True, disable=None,
        leave=False, position=1, initial=min(done * opts.batch_size, len(split)),
    )  # fmt: skip
    shuffled = data.batches(split, opts.batch_size, epoch_generator(opts.seed, epoch), skip=done)
    for i, (inputs, labels) in enumerate(shuffled, start=done + 1):
        with autocast(data.device, opts.amp):
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        bar.update(len(labels))
        stopping = bool(stop) and ranks == 1  # several ranks stop together, at a log step
        if i % opts.log_every == 0:  # the only host sync inside the epoch: all ranks agree here
            value, stopping = log_step(loss, stop, ranks, opts, epoch, i, steps, state)
            bar.set_postfix(loss=f"{value:.4f}")
        if stopping and i < steps:  # Ctrl-C or SIGTERM: the caller checkpoints the epoch so far
            bar.close()
            total_loss, total_correct = distributed.sum_all(loss_sum, correct)
            state.step, state.loss_sum, state.correct = i, total_loss.item(), total_correct.item()
            raise EpochInterrupted(f"stopped at step {i}")
    bar.close()
    loss_sum, correct = distributed.sum_all(loss_sum, correct)
    metrics = {"loss": loss_sum.item() / trained, "acc": correct.item() / trained}
    check_finite(metrics["loss"], f"the end of epoch {epoch}", opts.on_nan)
    return metrics


def log_step(loss, stop, ranks: int, opts: LoopSettings, epoch: int, i: int, steps: int, state):
    """At a log step: the loss averaged over ranks, and whether any rank was asked to stop; the
    point goes to `state.step_losses` and the tutorial's progress line is printed."""
    flag = torch.tensor(float(bool(stop)), device=loss.device)
    total, stops = distributed.sum_all(loss, flag)
    value = total.item() / ranks
    check_finite(value, f"epoch {epoch} step {i}", opts.on_nan)
    state.step_losses.append(((epoch - 1) * steps + i, value))
    LOG.info(
        f"Epoch [{epoch:>3d} / {opts.epochs:>3d}] Step [{i:>6d} / {steps:>6d}] Loss: {value:>7f}"
    )
    return value, stops.item() > 0
