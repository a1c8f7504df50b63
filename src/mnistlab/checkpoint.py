"""Atomic, durable writes of weights and training checkpoints, and resuming from them."""

import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnistlab.config import ConfigError


class WriteError(OSError):
    """A file could not be written (a full disk, say); the earlier version of it is intact."""


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temp file beside `path`, fsync it, rename it over `path`, and fsync the
    folder, so `path` is the old file or the new one, whole, even after a crash or power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except (OSError, RuntimeError) as err:  # torch.save reports a short write as RuntimeError
        reason = err.strerror if isinstance(err, OSError) else None
        raise WriteError(
            f"cannot write {path} ({reason or 'the write stopped short'}): free space on that "
            f"disk or point hydra.run.dir elsewhere; the earlier {path.name}, if any, is intact"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Save the weights as a CPU state_dict: `model.load_state_dict(torch.load(path))` reads it."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save(state, f))


FORMAT = 1  # bump when the layout of a training checkpoint changes


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    best_val_acc: float,
    run_id: str,
    cfg: DictConfig,
    data_info: dict[str, Any],
    partial: dict[str, Any] | None = None,
) -> None:
    """Write everything needed to continue training after `epoch` (and `partial`, the steps of
    the next epoch done before a signal stopped it), atomically."""
    state = {
        "format": FORMAT,
        "data": data_info,
        "epoch": epoch,
        "partial": partial,
        "best_val_acc": best_val_acc,
        "run_id": run_id,
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
    }
    atomic_write(path, lambda f: torch.save(state, f))


def read_torch_file(path: Path, key: str) -> Any:
    """`torch.load` with `weights_only=True` (no code runs), failing in one line naming `key`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(
            f"{key}={path}: not a readable checkpoint (truncated or corrupt? {reason}); "
            "use the run's last.pth, best.pth or model.pth"
        ) from err


def is_training_checkpoint(state: Any) -> bool:
    """Whether `state` is what `save_checkpoint` writes (not a bare state_dict)."""
    return isinstance(state, dict) and state.get("format") == FORMAT


def load_checkpoint(path: Path, key: str = "resume") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`."""
    state = read_torch_file(path, key)
    if not is_training_checkpoint(state):
        raise ConfigError(
            f"{key}={path}: not an mnistlab training checkpoint (format {FORMAT}); "
            "model.pth holds weights only, resume from last.pth"
        )
    return state


def restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load weights, optimizer state and RNG states from a checkpoint into a fresh run."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"resume: the checkpoint does not fit the configured model or optimizer ({reason}); "
            "resume with the run's own config"
        ) from err
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    version, internal, gauss = state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))


def find_checkpoint(resume: str, cfg: DictConfig) -> Path:
    """The checkpoint `resume=` names: a file, a run output dir (last.pth) or an MLflow run id."""
    path = Path(resume).expanduser()
    if path.is_dir():
        if not (path / "last.pth").is_file():
            raise ConfigError(f"resume={resume}: no last.pth in that folder; name a run output dir")
        return path / "last.pth"
    if path.is_file():
        return path
    from mnistlab import tracking

    uri = tracking.tracking_uri(cfg)
    no_such = ConfigError(
        f"resume={resume}: no such checkpoint file, run output dir or MLflow run in "
        f"{tracking.shown(uri)}; name one of those"
    )
    db = tracking.sqlite_path(uri)
    if not re.fullmatch(r"[0-9a-f]{32}", resume) or (db is not None and not db.exists()):
        raise no_such  # not a run id, or no store to hold it: none is created to find out
    from mlflow.exceptions import MlflowException

    client, _ = tracking.connect(cfg)
    try:
        run = client.get_run(resume)
    except MlflowException as err:
        raise no_such from err
    local = Path(run.data.tags.get("hydra.output_dir", "")) / "last.pth"
    if local.is_file():
        return local
    try:
        return Path(client.download_artifacts(resume, "checkpoints/last.pth"))
    except (MlflowException, OSError) as err:
        raise ConfigError(
            f"resume={resume}: the run has no last.pth in {local.parent} nor in its artifacts "
            "(checkpoint.log_to_mlflow=true uploads them)"
        ) from err
