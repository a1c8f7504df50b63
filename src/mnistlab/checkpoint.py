"""Training checkpoints: the weights, the optimizer, the `TrainState` and the RNGs, written
atomically, and read back into a fresh run."""

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.errors import UserError
from mnistlab.files import atomic_write
from mnistlab.loop import TrainState

FORMAT = 2  # bump when the layout of a training checkpoint changes (1: the state as loose keys)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict on the CPU."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: Path) -> None:
    """Save the weights as a CPU state_dict: `model.load_state_dict(torch.load(path))` reads it."""
    atomic_write(path, lambda f: torch.save(weights(model), f))


def save_checkpoint(path: Path, parts: Any, state: TrainState, **about: Any) -> None:
    """Write everything needed to continue training from `state`, atomically: the weights, the
    optimizer, the lr schedule and the moving average of `parts`, and the RNGs; `about` adds
    what the run is (run_id, config, data), for resume, evaluate and predict."""
    checkpoint = {
        "format": FORMAT,
        "state": asdict(state),
        **about,
        "model": weights(parts.model),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.schedule.state_dict(),
        "ema": parts.ema.state_dict() if parts.ema is not None else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
    }
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def read_torch_file(path: Path, key: str) -> Any:
    """`torch.load` with `weights_only=True` (no code runs), failing in one line naming `key`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise UserError(
            f"{key}={path}: not a readable checkpoint (truncated or corrupt? {reason}); "
            "use the run's last.pth, best.pth or model.pth"
        ) from err


def is_training_checkpoint(checkpoint: Any) -> bool:
    """Whether `checkpoint` is what `save_checkpoint` writes (not a bare state_dict)."""
    return isinstance(checkpoint, dict) and checkpoint.get("format") in (1, FORMAT)


def load_checkpoint(path: Path, key: str = "resume") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; its "state" is a TrainState."""
    checkpoint = read_torch_file(path, key)
    if not is_training_checkpoint(checkpoint):
        raise UserError(
            f"{key}={path}: not an mnistlab training checkpoint (format {FORMAT}); "
            "model.pth holds weights only, resume from last.pth"
        )
    if checkpoint["format"] == 1:  # the state as loose keys, the epoch in progress as "partial"
        partial = checkpoint.get("partial") or {}
        checkpoint["state"] = {
            "epoch": checkpoint["epoch"], "best_val_acc": checkpoint["best_val_acc"],
            **{k: partial[k] for k in ("step", "loss_sum", "correct", "elapsed_s") if k in partial},
            "step_losses": partial.get("step_losses", []),
        }  # fmt: skip
    checkpoint["state"] = TrainState.from_dict(checkpoint["state"])
    return checkpoint


def evaluated_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's run evaluated: its moving average's where it kept one."""
    ema = checkpoint.get("ema")
    if not ema:
        return checkpoint["model"]
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def restore(checkpoint: dict[str, Any], parts: Any) -> None:
    """Load the weights, the optimizer, the lr schedule, the moving average and the RNG states
    from a checkpoint into a fresh run's `parts`."""
    try:
        parts.model.load_state_dict(checkpoint["model"])
        parts.optimizer.load_state_dict(checkpoint["optimizer"])
        parts.schedule.load_state_dict(checkpoint.get("scheduler") or {})
        if parts.ema is not None and checkpoint.get("ema") is not None:
            parts.ema.load_state_dict(checkpoint["ema"])
    except (RuntimeError, ValueError, KeyError) as err:
        reason = " ".join(str(err).split())[:300]
        raise UserError(
            f"resume: the checkpoint does not fit the configured model or optimizer ({reason}); "
            "resume with the run's own config"
        ) from err
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
