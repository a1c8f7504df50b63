"""Tracking: where runs are recorded, and the safety machinery that keeps every record.

The one way in: the rest of mnistlab imports `mnistlab.tracking` and uses these names only.

- `open_run` opens (or reopens) a run's MLflow record and yields a `Tracker` (log an epoch, an
  artifact, the model); it closes the run with its status. `NoTracker` logs nothing.
- `Claim` holds a run's output dir (a lock file) and starts the watchdog that closes the run if
  the process dies; the journal and the background sender live in the tracker.
- Store: `tracking_uri`, `check_store`, `how_to_open`, `redact`.
- Sweeps: `SweepCallback` (in conf/config.yaml), `in_multirun`, `threads_per_job`,
  `job_failed`, `finish`.
- Reading runs back: `run_status`, `run_checkpoint`, `download_model_files`, `log_results`,
  `existing_store`, and for comparisons `run_row`, `child_rows`, and seeds folded into configs
  (`by_config`, `table_by_config`, `write_by_config`).
- Optuna trials: `trial_reporter` (a job's per-epoch reports, and whether to prune), and for
  mnistlab's Optuna sweeper `study_storage`, `open_storage`, `make_pruner`.
- The registry: `promote` (the best run of a sweep, or a run, as a registered model version
  with an alias), `resolve_model_uri` (models:/<name>@<alias> to its run).
"""

from pathlib import Path
from typing import Any, Protocol

from mnistlab.tracking.compare import by_config, table_by_config, write_by_config
from mnistlab.tracking.guard import Claim
from mnistlab.tracking.lookup import (
    download_model_files,
    existing_store,
    log_results,
    run_checkpoint,
    run_status,
)
from mnistlab.tracking.records import child_rows, run_row
from mnistlab.tracking.registry import Promotion, promote, resolve_model_uri
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
    finish,
    in_multirun,
    job_failed,
    threads_per_job,
)
from mnistlab.tracking.trials import (
    PRUNED_ATTR,
    RUN_ATTR,
    TrialReporter,
    make_pruner,
    open_storage,
    study_storage,
    trial_reporter,
)


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


class NoTracker:
    """The tracker of a torchrun rank other than 0: it logs nothing (rank 0 logs for all)."""

    run_id = None

    def log_epoch(self, epoch: int, metrics: dict[str, float], steps: dict[str, list]) -> None:
        """Log nothing."""

    def log_tags(self, tags: dict[str, str]) -> None:
        """Log nothing."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log nothing."""

    def log_model(self, model: Any, example: Any) -> None:
        """Log nothing."""

    def log_dataset(self, data: Any, cfg: Any) -> None:
        """Log nothing."""


__all__ = [
    "PRUNED_ATTR",
    "RUN_ATTR",
    "Claim",
    "NoTracker",
    "TrialReporter",
    "make_pruner",
    "open_storage",
    "study_storage",
    "trial_reporter",
    "Promotion",
    "STATE",
    "SweepCallback",
    "Tracker",
    "basic_sweep",
    "by_config",
    "check_scheme",
    "check_store",
    "child_rows",
    "connect",
    "download_model_files",
    "existing_store",
    "finish",
    "flatten",
    "how_to_open",
    "in_multirun",
    "job_failed",
    "log_results",
    "open_run",
    "promote",
    "redact",
    "resolve_model_uri",
    "run_checkpoint",
    "run_row",
    "run_status",
    "sqlite_path",
    "table_by_config",
    "threads_per_job",
    "tracking_uri",
    "write_by_config",
]
