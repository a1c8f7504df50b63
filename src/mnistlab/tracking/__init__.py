"""Tracking: where runs are recorded, and the safety machinery that keeps every record.

The one way in: the rest of mnistlab imports `mnistlab.tracking` and uses these names only.
`open_run` opens (or reopens) a run's MLflow record, yields a `Tracker` and closes the run with
its status (`NoTracker` logs nothing); `Claim` holds its output dir and starts the watchdog that
closes the run if the process dies. The store: `tracking_uri`, `check_store`, `how_to_open`,
`redact`; sweeps: `SweepCallback`, `in_multirun`, `threads_per_job`, `job_failed`,
`close_parent`. Imported on first use (`LATER`), as a run needs none: reading runs back (`lookup`)
and the registry (`promote`, `resolve_model_uri`).
"""

from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

from mnistlab.tracking.run import flatten, open_run
from mnistlab.tracking.store import (
    check_scheme,
    check_store,
    connect,
    how_to_open,
    redact,
    sqlite_path,
    tracking_uri,
)
from mnistlab.tracking.sweep import (
    STATE,
    SweepCallback,
    basic_sweep,
    close_parent,
    in_multirun,
    job_failed,
    threads_per_job,
)
from mnistlab.tracking.watchdog import Claim

LATER = {  # module: the names it gives, imported on first use
    "lookup": ("download_model_files", "existing_store", "log_results", "run_checkpoint",
               "run_status", "child_rows", "run_row"),
    "registry": ("Promotion", "promote", "resolve_model_uri"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in LATER.items() for name in names}


def __getattr__(name: str) -> Any:
    """A name of a module in `LATER`, imported now (PEP 562)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


class Tracker(Protocol):
    """What the training loop records a run through."""

    run_id: str | None

    def log_epoch(self, epoch: int, metrics: dict[str, float], steps: dict[str, list]) -> None:
        """Record an epoch's metrics (step = epoch) and its per-step points, such as
        `train/step_loss`: {key: [(global step, value), ...]}."""

    def log_tags(self, tags: dict[str, str]) -> None:
        """Set tags on the run."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Add a file, or a folder's contents, to the run's artifacts."""

    def log_model(self, model: Any, example: Any) -> None:
        """Add the trained model, as an MLflow model ready for the registry."""

    def log_dataset(self, data: Any, cfg: Any) -> None:
        """Record the run's train, val and test splits (a mnistlab.data.Dataset) as its inputs."""


class NoTracker(Tracker):
    """The tracker of a torchrun rank other than 0 (rank 0 logs for all): the Protocol's no-ops."""

    run_id = None


__all__ = [
    "Claim", "NoTracker", "STATE", "SweepCallback", "Tracker", "basic_sweep", "check_scheme",
    "check_store", "close_parent", "connect", "flatten", "how_to_open", "in_multirun", "job_failed",
    "open_run", "redact", "sqlite_path", "threads_per_job", "tracking_uri", *_MODULE_OF,
]  # fmt: skip
