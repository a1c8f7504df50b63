"""Atomic, durable file writes: a reader or a crash never sees half a file."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
from torch import nn


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Save the weights as a CPU state_dict: `model.load_state_dict(torch.load(path))` reads it."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save(state, f))
