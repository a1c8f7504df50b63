"""The epoch loop and evaluation, in plain torch: they take parts and return numbers.

No tracking, MLflow or Hydra here. The recipe checkpoints and restores one `TrainState`; a signal
stops an epoch between two steps, the state holding them: a resume finishes it bit for bit.
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


@dataclass
class TrainState:
    """Where training stands: what a checkpoint holds besides the weights and the optimizer."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps done of epoch + 1 (0: at an epoch boundary)
    best_val_acc: float = -1.0
    best_epoch: int = 0  # the epoch that reached best_val_acc
    loss_sum: float = 0.0  # over the steps done of epoch + 1
    correct: int = 0  # training samples classified right in those steps
    elapsed_s: float = 0.0  # training time of those steps
    step_losses: list[tuple[int, float]] = field(default_factory=list)  # (global step, loss)
    step_lrs: list[tuple[int, float]] = field(default_factory=list)  # (global step, lr)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # per epoch

    def end_epoch(self, metrics: dict[str, float]) -> bool:
        """Record a finished epoch's metrics; whether its val accuracy is a new best."""
        self.epoch += 1
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((self.epoch, value))
        improved = metrics["val/acc"] > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch = metrics["val/acc"], self.epoch
        self.step, self.loss_sum, self.correct, self.elapsed_s = 0, 0.0, 0, 0.0
        self.step_losses, self.step_lrs = [], []
        return improved

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainState":
        """The state as a checkpoint stores it (tuples come back as lists)."""
        state = cls(**values)
        state.step_losses = [tuple(p) for p in state.step_losses]
        state.step_lrs = [tuple(p) for p in state.step_lrs]
        state.history = {k: [tuple(p) for p in v] for k, v in state.history.items()}
        return state


@dataclass(frozen=True)
class Predictions:
    """A model's answers over a split, sample by sample in the split's order."""

    labels: torch.Tensor  # the true classes
    confidence: torch.Tensor  # the softmax probability of the predicted class
    predicted: torch.Tensor  # the predicted classes


@dataclass(frozen=True)
class LoopSettings:
    """The options the epoch loop reads."""

    epochs: int
    batch_size: int
    seed: int
    log_every: int = 100
    amp: Amp = Amp.none
    on_nan: OnNan = OnNan.stop
    label_smoothing: float = 0.0
    grad_clip_norm: float | None = None
    max_steps: int | None = None  # steps per epoch at most (debug=fast)


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
def evaluate(
    model: nn.Module, data, split, batch_size: int, amp: Amp = Amp.none, predict: bool = False
) -> dict:
    """Mean cross-entropy loss and accuracy of `model` over `split` of `data`; with `predict`,
    also its "predictions" (`Predictions`, for the plots: no second pass over the split)."""
    model.eval()
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    kept: list[tuple[torch.Tensor, ...]] = []
    for inputs, labels in data.batches(split, batch_size):
        with autocast(data.device, amp):
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
        if predict:
            kept.append((labels, *logits.float().softmax(dim=1).max(dim=1)))
    metrics = {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}
    if predict:
        metrics["predictions"] = Predictions(*map(torch.cat, zip(*kept, strict=True)))
    return metrics


def steps_per_epoch(samples: int, batch_size: int, max_steps: int | None = None) -> int:
    """Optimisation steps in one epoch of this process (its share under torchrun)."""
    ranks = distributed.world_size()
    steps = math.ceil((samples - samples % ranks) // ranks / batch_size)
    return min(steps, max_steps or steps)


def train_epoch(parts, state: TrainState, opts: LoopSettings, stop=None) -> dict:
    """Train epoch `state.epoch + 1` on the shuffled (augmented) train split from `state.step`,
    adding to `state.step_losses` and `step_lrs` every `log_every` steps; raise EpochInterrupted
    between two steps once `stop` is true. Returns loss, accuracy, last lr, samples (all ranks)."""
    data, epoch, done = parts.data, state.epoch + 1, state.step
    parts.net.train()
    ranks = distributed.world_size()  # under torchrun each rank trains on 1/ranks of the split
    steps = steps_per_epoch(len(data.train), opts.batch_size)
    limit = steps_per_epoch(len(data.train), opts.batch_size, opts.max_steps)
    trained = min(len(data.train) - len(data.train) % ranks, limit * opts.batch_size * ranks)
    main = distributed.is_main()  # rank 0 holds the sums of the steps done before a resume
    loss_sum = torch.tensor(state.loss_sum if main else 0.0, device=data.device)
    correct = torch.tensor(state.correct if main else 0, device=data.device)
    bar = tqdm(  # samples/s and the loss; off when stderr is not a terminal (CI logs)
        total=trained // ranks, desc=f"epoch {epoch}", unit="img", unit_scale=True, disable=None,
        leave=False, position=1, initial=min(done * opts.batch_size, trained // ranks),
    )  # fmt: skip
    lr = parts.optimizer.param_groups[0]["lr"]
    generator = epoch_generator(opts.seed, epoch)
    batches = data.batches(data.train, opts.batch_size, generator, skip=done, augment=True)
    for i, (inputs, labels) in enumerate(batches, start=done + 1):
        lr = parts.optimizer.param_groups[0]["lr"]  # the lr this step uses
        loss, logits = train_step(parts, inputs, labels, opts)
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        bar.update(len(labels))
        stopping = bool(stop) and ranks == 1  # several ranks stop together, at a log step
        if i % opts.log_every == 0:  # the only host sync inside the epoch: all ranks agree here
            value, stopping = log_step(loss, stop, ranks, opts, (epoch, i, steps), state)
            state.step_lrs.append(((epoch - 1) * steps + i, lr))
            bar.set_postfix(loss=f"{value:.4f}")
        if stopping and i < limit:  # Ctrl-C or SIGTERM: the caller checkpoints the epoch so far
            bar.close()
            total_loss, total_correct = distributed.sum_all(loss_sum, correct)
            state.step, state.loss_sum, state.correct = i, total_loss.item(), total_correct.item()
            raise EpochInterrupted(f"stopped at step {i}")
        if i == limit:
            break
    bar.close()
    loss_sum, correct = distributed.sum_all(loss_sum, correct)
    metrics = {"loss": loss_sum.item() / trained, "acc": correct.item() / trained, "lr": lr}
    check_finite(metrics["loss"], f"the end of epoch {epoch}", opts.on_nan)
    return {**metrics, "samples": trained}


def train_step(parts, inputs, labels, opts: LoopSettings):
    """One step (forward, loss, backward, clip, step, per-batch schedule, EMA): (loss, logits)."""
    with autocast(parts.data.device, opts.amp):
        logits = parts.net(inputs)
        loss = F.cross_entropy(logits, labels, label_smoothing=opts.label_smoothing)
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if opts.grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), opts.grad_clip_norm)
    parts.optimizer.step()
    if parts.schedule is not None and parts.schedule.per_batch:
        parts.schedule.step()
    if parts.ema is not None:
        parts.ema.update_parameters(parts.model)
    return loss, logits


def log_step(loss, stop, ranks: int, opts: LoopSettings, where: tuple, state: TrainState):
    """At a log step: the loss averaged over ranks, and whether any rank was asked to stop; the
    point goes to `state.step_losses` and the tutorial's progress line is printed."""
    epoch, i, steps = where
    flag = torch.tensor(float(bool(stop)), device=loss.device)
    total, stops = distributed.sum_all(loss, flag)
    value = total.item() / ranks
    check_finite(value, f"epoch {epoch} step {i}", opts.on_nan)
    state.step_losses.append(((epoch - 1) * steps + i, value))
    LOG.info(
        f"Epoch [{epoch:>3d} / {opts.epochs:>3d}] Step [{i:>6d} / {steps:>6d}] Loss: {value:>7f}"
    )
    return value, stops.item() > 0
