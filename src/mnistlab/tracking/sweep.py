"""Sweeps as MLflow citizens: one parent run per multirun, one child run per job, a summary.

`SweepCallback`, in the launching process, opens the parent run before any job and tells the
jobs of it through environment variables (inherited, or set by `hydra.job.env_set` in joblib's
workers, started before); at the end it summarises the children on the parent and closes it.
A failed job is recorded (`job_failed`) and the sweep goes on (Hydra 1.3 would skip
`on_multirun_end` if a job raised); `python -m train` then exits non-zero.
"""

import contextlib
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from mnistlab.errors import UserError, exit_code, one_line
from mnistlab.files import advising, write_csv, write_text
from mnistlab.tracking.store import connect, redact, tracking_uri
from mnistlab.tracking.tracker import origin_tags
from mnistlab.tracking.watchdog import Claim

log = logging.getLogger(__name__)

PARENT_ENV = "MNISTLAB_SWEEP_PARENT_RUN_ID"  # the parent run id, for the jobs
SWEPT_ENV = "MNISTLAB_SWEEP_KEYS"  # comma-separated swept keys, which name the child runs
FAILED_MARK = "FAILED"  # written into a failed job's output dir, with the reason
PARENT_FILE = "mlflow_parent_run_id"  # in the sweep dir: a rerun reuses that parent run


class _State:
    """What the launching process knows of the sweep in progress."""

    client: Any = None
    parent_run_id: str | None = None
    failed_jobs: int = 0
    claim: Claim | None = None  # the sweep dir's lock, and the parent run's watchdog
    command: list[str] | None = None  # the arguments as the user gave them (none of our marks)


STATE = _State()


def in_multirun() -> bool:
    """Whether this process is running a job of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def basic_sweep() -> bool:
    """Whether this multirun's jobs come from Hydra's basic sweeper, which `python -m train`
    expands and checks before Hydra starts (Optuna's values are only known in the job)."""
    from mnistlab.jobs import BASIC_SWEEPER

    return HydraConfig.get().sweeper.get("_target_") == BASIC_SWEEPER


def swept_keys(config: DictConfig) -> list[str]:
    """Keys the sweep varies: sweep overrides on the command line, plus the sweeper's params."""
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    return sorted(set(keys) | set(params))


def child_context() -> dict[str, str] | None:
    """Run name and tags for this job's child run, or None outside a sweep."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not in_multirun():
        return None
    hc = HydraConfig.get()
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    overrides = sorted(hc.overrides.task)
    named = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept] or overrides
    return {
        "run_name": ",".join(map(short, named)) or f"job{hc.job.num}",
        "mlflow.parentRunId": parent,
        "sweep.job_num": str(hc.job.num),
        "sweep.overrides": redact(" ".join(overrides)),
    }


def short(override: str) -> str:
    """`key=value`, a long float value cut to 4 significant digits (an Optuna trial's lr)."""
    key, _, value = override.partition("=")
    with contextlib.suppress(ValueError):
        value = f"{float(value):.4g}" if len(value.partition(".")[2]) > 6 else value
    return f"{key}={value}"


def threads_per_job() -> int | None:
    """Torch threads for one of N parallel joblib jobs (`share_of_cores`), else None; N is the
    launcher's `n_jobs` as joblib reads it (-1: one per core), or the sweep's job count if fewer."""
    if not in_multirun():
        return None
    launcher = HydraConfig.get().launcher
    if "Joblib" not in str(launcher.get("_target_", "")):
        return None
    from joblib import effective_n_jobs

    from mnistlab.jobs import SIZE_ENV

    n_jobs = effective_n_jobs(launcher.get("n_jobs"))
    size = int(os.environ.get(SIZE_ENV) or n_jobs)  # known for a sweep checked as a whole
    return share_of_cores(min(n_jobs, size))


def share_of_cores(n: int) -> int:
    """Torch threads for one of `n` jobs at once: its share of the cores this process may use,
    as joblib counts them (its CPU affinity: taskset, SLURM's cpuset; a container's quota)."""
    from joblib import cpu_count

    return max(1, cpu_count() // max(1, n))


def job_failed(err: Exception) -> float:
    """Record in the job's output dir that it failed (for the summary and exit code); return NaN."""
    if exit_code(err) is None:  # a bug: its traceback goes to the job's log
        log.exception(f"sweep job failed: {type(err).__name__}: {err}")
        reason = f"{type(err).__name__}: {err}"
    else:
        reason = one_line(err)
        if isinstance(err, UserError):
            log.error(f"Error: {reason}")
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:  # the summary counts a FAILED run without it; a full disk may refuse it too
        write_text(output_dir / FAILED_MARK, reason + "\n")  # makes the dir if the job did not
    except OSError as mark_err:
        log.error(f"the job's {FAILED_MARK} mark was not written: {mark_err}")
    return float("nan")


def reopen_parent(client: Any, sweep_dir: Path) -> str | None:
    """The parent run of an earlier sweep in `sweep_dir`, set RUNNING again; None if none."""
    from mlflow.exceptions import MlflowException

    try:
        parent_id = (sweep_dir / PARENT_FILE).read_text().strip()
        client.get_run(parent_id)
    except (OSError, MlflowException):
        return None
    client.update_run(parent_id, status="RUNNING")
    for stale in sweep_dir.rglob(FAILED_MARK):  # this attempt records its own failures
        stale.unlink()
    experiment_id = client.get_run(parent_id).info.experiment_id
    running = f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'"
    for child in client.search_runs([experiment_id], filter_string=running):
        # left RUNNING by a killed attempt; a resumed job reopens its own
        client.set_terminated(child.info.run_id, "KILLED")
    return parent_id


def parent_tags(config: DictConfig, sweep_dir: Path, swept: list[str]) -> dict[str, str]:
    """The parent run's tags: how the sweep was started, and what it varies."""
    given = STATE.command if STATE.command is not None else sys.argv[1:]
    return {
        **origin_tags(),
        "sweep.dir": str(sweep_dir),
        "sweep.command": redact(shlex.join(["python", "-m", "train", *given])),
        "sweep.swept_keys": ",".join(swept),
        "sweep.sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_")),
        "sweep.launcher": str(OmegaConf.select(config, "hydra.launcher._target_")),
    }


class SweepCallback(Callback):
    """Opens the parent run before the jobs start and closes it, summarised, when they end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open (or reopen) the parent run before any job, claim the sweep dir, tell the jobs. Hydra
        runs the jobs after a callback's exception: a store it cannot open ends the command here."""
        job_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        try:
            client, experiment_id = connect(job_cfg)  # runs any migration, once
            # waits for a watchdog still closing this dir's earlier parent run
            STATE.claim = Claim(sweep_dir, f"hydra.sweep.dir={sweep_dir}", then="rerun")
        except UserError as err:
            print(f"Error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        swept = swept_keys(config)
        name = config.get("sweep_name") or f"{sweep_dir.parent.name}_{sweep_dir.name}"
        parent_id = reopen_parent(client, sweep_dir)  # a rerun of the same sweep dir
        if parent_id is None:
            tags = parent_tags(config, sweep_dir, swept)
            parent_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
            with advising("hydra.sweep.dir"):
                write_text(sweep_dir / PARENT_FILE, parent_id + "\n")
        STATE.client, STATE.parent_run_id, STATE.failed_jobs = client, parent_id, 0
        hint = f"finish the sweep with the same command and hydra.sweep.dir={sweep_dir}"
        STATE.claim.watch(tracking_uri(job_cfg), parent_id, hint)
        for key, value in ((PARENT_ENV, parent_id), (SWEPT_ENV, ",".join(swept))):
            os.environ[key] = value
            # and through Hydra's env_set, for workers started before (joblib's, reused)
            with open_dict(config):
                config.hydra.overrides.hydra.append(f"++hydra.job.env_set.{key}='{value}'")
        log.info(f"MLflow sweep parent run {parent_id} ({name}), sweeping {swept}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarise the children on the parent run and close it FINISHED or FAILED."""
        if STATE.parent_run_id is None:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        try:
            with advising("hydra.sweep.dir"):
                STATE.failed_jobs = summarise(STATE.client, STATE.parent_run_id, sweep_dir)
        except Exception as err:  # Hydra would only warn: the exit code must say it
            log.error(f"the sweep summary failed: {type(err).__name__}: {err}")
            STATE.failed_jobs = max(STATE.failed_jobs, 1)
            raise
        finally:
            close_parent("FAILED" if STATE.failed_jobs else "FINISHED")


def close_parent(status: str) -> None:
    """End the parent run, if one is open (also at exit, after an interrupted sweep)."""
    if STATE.parent_run_id is not None:
        try:
            STATE.client.set_terminated(STATE.parent_run_id, status)
        finally:
            STATE.claim.release()
            STATE.parent_run_id = None
            os.environ.pop(PARENT_ENV, None)


def summarise(client: Any, parent_run_id: str, sweep_dir: Path) -> int:
    """Log best metrics, summary.csv, summary_by_config.csv, summary.png and the compare page's
    link on the parent; return the failed job count."""
    from mnistlab.summary import by_config
    from mnistlab.tracking.lookup import child_rows

    rows = child_rows(client, parent_run_id)
    failed_marks = list(sweep_dir.rglob(FAILED_MARK))
    failed = max(len(failed_marks), sum(r["status"] != "FINISHED" for r in rows))
    runless = len(failed_marks) - sum(r["status"] == "FAILED" for r in rows)  # failed before a run
    n_jobs = len(rows) + max(0, runless)
    client.set_tag(parent_run_id, "sweep.n_jobs", str(n_jobs))
    client.set_tag(parent_run_id, "sweep.n_failed", str(failed))
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    groups = by_config(rows, swept)
    log_best(client, parent_run_id, groups)
    summary_dir = sweep_dir / "summary"
    summary_dir.mkdir(parents=True, exist_ok=True)
    write_summaries(rows, groups, swept, summary_dir)
    for name in ("summary.csv", "summary_by_config.csv", "summary.png"):
        client.log_artifact(parent_run_id, str(summary_dir / name))
    link_compare_page(client, parent_run_id, rows, swept)
    if failed:
        log.error(f"{failed} of {n_jobs} sweep jobs failed; see {summary_dir / 'summary.csv'}")
    return failed


def log_best(client: Any, parent_run_id: str, groups: list[dict[str, Any]]) -> None:
    """best/* and best_run_id on the parent: the config with the best mean val acc, and its best
    seed (with one seed per config, simply the best job)."""
    from mnistlab.summary import best_config

    best = best_config(groups)
    if best is None:
        return
    run = next(r for r in best["runs"] if r["run_id"] == best["best_run_id"])
    client.log_metric(parent_run_id, "best/val_acc", run["best_val_acc"])
    client.log_metric(parent_run_id, "best/test_acc", run["final_test_acc"])
    client.log_metric(parent_run_id, "best/val_acc_mean", best["val_acc_mean"])
    client.log_metric(parent_run_id, "best/test_acc_mean", best["test_acc_mean"])
    client.set_tag(parent_run_id, "best_run_id", run["run_id"])
    client.set_tag(parent_run_id, "best_config_digest", best["config_digest"])
    log.info(
        f"Best config: {run['overrides']} mean val acc {best['val_acc_mean']:.4f} over "
        f"{best['n']} seed(s); its best seed: val acc {run['best_val_acc']:.4f}"
    )


def write_summaries(rows: list, groups: list, swept: list[str], summary_dir: Path) -> None:
    """summary.csv, summary_by_config.csv and summary.png (error bars if a config ran seeds)."""
    from mnistlab.plots import sweep_summary
    from mnistlab.summary import config_figure, readable, write_by_config

    columns = ["run_id", "job_num", "overrides", "status", "best_val_acc", "final_test_acc",
               "final_test_loss", "duration_s", "config_digest"]  # fmt: skip
    write_csv(summary_dir / "summary.csv", columns, readable(rows))
    write_by_config(groups, swept, summary_dir / "summary_by_config.csv")
    if any(g["n"] > 1 for g in groups):
        config_figure(groups, swept, summary_dir / "summary.png")
    else:
        sweep_summary(rows, swept, summary_dir / "summary.png")


def link_compare_page(client: Any, parent_run_id: str, rows: list[dict], swept: list[str]) -> None:
    """Tag the parent with (and print) links to the compare page and ranked table of its jobs."""
    from mnistlab.tracking.lookup import compare_page, share_sweep_view

    if not rows:
        return
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    url, how = compare_page(client.tracking_uri, experiment_id, [r["run_id"] for r in rows])
    table = share_sweep_view(client, experiment_id, parent_run_id, swept)
    client.set_tag(parent_run_id, "sweep.compare_url", url)
    client.set_tag(parent_run_id, "sweep.runs_url", table)
    log.info(f"Compare the sweep's runs: {how}; its jobs ranked: {table}")
