"""Tracking: where runs are recorded, and the safety machinery that keeps every record.

The one way in: the rest of mnistlab imports `mnistlab.tracking` and uses these names only.

- `open_run` opens (or reopens) a run's MLflow record and yields a `Tracker` (log an epoch, an
  artifact, the model); it closes the run with its status. `NoTracker` logs nothing.
- `Claim` holds a run's output dir (a lock file) and starts the watchdog that closes the run if
  the process dies; the journal and the background sender live in the tracker.
- Store: `tracking_uri`, `check_store`, `connect_in_background`, `how_to_open`, `redact`.
- Sweeps: `SweepCallback` (in conf/config.yaml), `in_multirun`, `threads_per_job`,
  `job_failed`, `finish`.
- Reading runs back: `run_status`, `run_checkpoint`, `download_model_files`, `log_results`,
  `existing_store`, and for comparisons `run_row`, `child_rows`.
"""

from pathlib import Path
from typing import Any, Protocol

from mnistlab.tracking.guard import Claim
from mnistlab.tracking.lookup import (
    download_model_files,
    existing_store,
    log_results,
    run_checkpoint,
    run_status,
)
from mnistlab.tracking.records import child_rows, run_row
from mnistlab.tracking.run import flatten, open_run
from mnistlab.tracking.store import (
    check_scheme,
    check_store,
    connect,
    connect_in_background,
    how_to_open,
    redact,
    sqlite_path,
    tracking_uri,
)
from mnistlab.tracking.sweep import (
    STATE,
    SweepCallback,
    basic_sweep,
    finish,
    in_multirun,
    job_failed,
    threads_per_job,
)


class Tracker(Protocol):
    """What the training loop records a run through."""

    run_id: str | None

    def log_epoch(self, epoch: int, metrics: dict[str, float], step_losses: list) -> None:
        """Record an epoch's metrics (step = epoch) and its `train/step_loss` points."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Add a file, or a folder's contents, to the run's artifacts."""

    def log_model(self, model: Any, example: Any) -> None:
        """Add the trained model, as an MLflow model ready for the registry."""


class NoTracker:
    """The tracker of a torchrun rank other than 0: it logs nothing (rank 0 logs for all)."""

    run_id = None

    def log_epoch(self, epoch: int, metrics: dict[str, float], step_losses: list) -> None:
        """Log nothing."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log nothing."""

    def log_model(self, model: Any, example: Any) -> None:
        """Log nothing."""


__all__ = [
    "Claim",
    "NoTracker",
    "STATE",
    "SweepCallback",
    "Tracker",
    "basic_sweep",
    "check_scheme",
    "check_store",
    "child_rows",
    "connect",
    "connect_in_background",
    "download_model_files",
    "existing_store",
    "finish",
    "flatten",
    "how_to_open",
    "in_multirun",
    "job_failed",
    "log_results",
    "open_run",
    "redact",
    "run_checkpoint",
    "run_row",
    "run_status",
    "sqlite_path",
    "threads_per_job",
    "tracking_uri",
]
