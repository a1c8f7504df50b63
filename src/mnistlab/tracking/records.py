"""What comparisons read back of finished runs: one row per run, a sweep's children, and the
link that opens MLflow's compare page for a set of runs."""

import json
import time
from typing import Any
from urllib.parse import quote

from mnistlab.tracking.store import how_to_open


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
    how = how.replace(f"#/experiments/{experiment_id}/runs/{placeholder}", page)
    return how.rsplit(" ", 1)[-1], how
