"""Reading runs back: a run's status and checkpoint (resume), its files (evaluate, predict),
the store that `report` reads, with one-line errors for what is not there; and for comparisons,
one row per run, a sweep's children, and the link that opens MLflow's compare page."""

import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from omegaconf import DictConfig, OmegaConf

from mnistlab.errors import UserError
from mnistlab.tracking.store import (
    TRAINING_VIEW,
    connect,
    how_to_open,
    redact,
    sqlite_path,
    tracking_uri,
)

RANKED = ("val/acc", "test/acc")  # the metrics a sweep's jobs are compared on, the first ranks


def store_of(uri: str | None) -> str:
    """The store a CLI's --tracking-uri names, as `python -m train` would pick it."""
    return tracking_uri(OmegaConf.create({"mlflow": {"tracking_uri": uri}}))


def existing_store(uri: str | None) -> str:
    """The store to read: it must exist (reading creates none)."""
    store = store_of(uri)
    db = sqlite_path(store)
    if db is not None and not db.exists():
        raise UserError(
            f"--tracking-uri={redact(store)}: no MLflow store there; "
            "run from the folder that holds mlflow.db or pass --tracking-uri"
        )
    return store


def run_status(cfg: DictConfig, run_id: str) -> str:
    """The status of run `run_id` in cfg's store (FINISHED, FAILED, ...)."""
    client, _ = connect(cfg)
    return client.get_run(run_id).info.status


def run_checkpoint(cfg: DictConfig, resume: str) -> Path:
    """The last.pth of the MLflow run whose id is `resume`: in its output dir, else in its
    artifacts (checkpoint.log_to_mlflow=true)."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    no_such = UserError(
        f"resume={resume}: no such checkpoint file, run output dir or MLflow run in "
        f"{redact(uri)}; name one of those"
    )
    db = sqlite_path(uri)
    if not re.fullmatch(r"[0-9a-f]{32}", resume) or (db is not None and not db.exists()):
        raise no_such  # not a run id, or no store to hold it: none is created to find out
    client, _ = connect(cfg)
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
        raise UserError(
            f"resume={resume}: the run has no last.pth in {local.parent} nor in its artifacts "
            "(checkpoint.log_to_mlflow=true uploads them)"
        ) from err


def download_model_files(source: str, uri: str | None) -> tuple[Path, str]:
    """Download a run's model.pth (or the artifact `runs:/<id>/<path>` names), config.yaml and
    data.json; (the model file's path, run id)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    run_id, _, artifact = source.removeprefix("runs:/").partition("/")
    store = store_of(uri)
    client = MlflowClient(store)
    dst = Path(tempfile.mkdtemp(prefix="mnistlab-"))
    try:
        client.get_run(run_id)
        path = Path(client.download_artifacts(run_id, artifact or "model.pth", str(dst)))
        for name in ("config.yaml", "data.json"):
            client.download_artifacts(run_id, name, str(path.parent))
    except (MlflowException, OSError) as err:
        raise UserError(
            f"{source}: no such MLflow run or artifact in {redact(store)}; "
            "name a run output dir, a .pth file, runs:/<run_id>/model.pth or a run id "
            "(and --tracking-uri)"
        ) from err
    return path, run_id


def log_results(run_id: str, uri: str | None, metrics: dict[str, float], files: Any) -> None:
    """Add metrics and files (an evaluation's) to an existing run."""
    from mlflow import MlflowClient

    client = MlflowClient(store_of(uri))
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for path, artifact_path in files:
        client.log_artifact(run_id, str(path), artifact_path)


def run_row(client: Any, run: Any) -> dict[str, Any]:
    """What comparisons show of a finished (or failed) run: name, status, val-acc curve, best
    val acc, final test metrics, duration, params; missing values are NaN."""
    tags = run.data.tags
    val = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/acc"))
    end = run.info.end_time or int(time.time() * 1000)
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "job_num": int(tags.get("sweep.job_num", -1)),
        "overrides": tags.get("sweep.overrides") or tags.get("hydra.overrides", ""),
        "status": run.info.status,
        "config_digest": tags.get("config_digest", ""),
        "best_val_acc": max((v for _, v in val), default=float("nan")),
        "final_test_acc": run.data.metrics.get("test/acc", float("nan")),
        "final_test_loss": run.data.metrics.get("test/loss", float("nan")),
        "start_time": run.info.start_time,
        "duration_s": round((end - run.info.start_time) / 1000, 3),
        "val_curve": val,
        "metrics": run.data.metrics,
        "params": run.data.params,
    }


def child_rows(client: Any, parent_run_id: str) -> list[dict[str, Any]]:
    """One row per child run of a sweep's parent, in job order (a job redone: its latest run)."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=10_000,
    )
    rows_by_job: dict[int, dict[str, Any]] = {}
    for run in children:
        row = run_row(client, run)
        earlier = rows_by_job.get(row["job_num"])
        if earlier is None or earlier["start_time"] < row["start_time"]:
            rows_by_job[row["job_num"]] = row
    return sorted(rows_by_job.values(), key=lambda r: r["job_num"])


def compare_page(uri: str, experiment_id: str, run_ids: list[str]) -> tuple[str, str]:
    """(the address of MLflow's compare page for `run_ids`, how to open it: the `mlflow ui`
    command first for a local store)."""
    runs, experiments = json.dumps(sorted(run_ids)), json.dumps([experiment_id])
    page = f"#/compare-runs?runs={quote(runs, safe='')}&experiments={quote(experiments, safe='')}"
    placeholder = "0" * 32
    how = how_to_open(uri, experiment_id, placeholder)
    how = how.replace(f"#/experiments/{experiment_id}/runs/{placeholder}?", f"{page}&")
    return how.rsplit(" ", 1)[-1], how


def share_sweep_view(client: Any, experiment_id: str, parent: str, swept: list[str]) -> str:
    """The runs table of the sweep's jobs by last val acc, swept params and metrics as columns: a
    view MLflow's UI shares by an experiment tag `mlflow.sharedViewState.<key>`; its address."""
    from mlflow.exceptions import MlflowException

    columns = [f"params.`{k}`" for k in swept] + [f"metrics.`{m}`" for m in RANKED]
    state = {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent}'", "orderByAsc": False,
             "orderByKey": f"metrics.`{RANKED[0]}`", "selectedColumns": columns}  # fmt: skip
    with contextlib.suppress(MlflowException):  # no EDIT on a server's experiment: no view
        client.set_experiment_tag(
            experiment_id, f"mlflow.sharedViewState.{parent}", json.dumps(state)
        )
    url = compare_page(client.tracking_uri, experiment_id, [])[0].split("#")[0]
    return f"{url}#/experiments/{experiment_id}/runs?viewStateShareKey={parent}&{TRAINING_VIEW}"
