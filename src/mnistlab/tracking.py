"""One MLflow run per training run: store, params, batched metrics, artifacts, final status."""

import contextlib
import json
import logging
import os
import queue
import re
import socket
import sqlite3
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

SQLITE_PREFIX = "sqlite:///"
log = logging.getLogger(__name__)


def tracking_uri(cfg: DictConfig) -> str:
    """The store: `mlflow.tracking_uri` (or MLFLOW_TRACKING_URI), else sqlite in <cwd>/mlruns."""
    return cfg.mlflow.tracking_uri or f"{SQLITE_PREFIX}{Path.cwd() / 'mlruns' / 'mlflow.db'}"


def shown(text: str) -> str:
    """`text` with the password of any URI in it replaced, fit to print or log."""
    return re.sub(r"//([^/@:\s]+):[^/@\s]*@", r"//\1:***@", text)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store URI, None for any other store."""
    return Path(uri[len(SQLITE_PREFIX) :]) if uri.startswith(SQLITE_PREFIX) else None


def check_sqlite(uri: str) -> None:
    """Raise ConfigError if the SQLite file of a `sqlite:///` store exists but is no database."""
    from mnistlab.config import ConfigError

    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            con.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as err:
        raise ConfigError(
            f"mlflow.tracking_uri={uri}: {db} is not a readable SQLite database ({err}); move it "
            f"aside (mv {db} {db}.bad) to start a new store, or point mlflow.tracking_uri elsewhere"
        ) from None


def how_to_open(uri: str, run: "Run") -> str:
    """The exact command (or address) that shows this run in the MLflow UI."""
    page = f"#/experiments/{run.experiment_id}/runs/{run.run_id}"
    db = sqlite_path(uri)
    if db is not None:
        store = f"sqlite:///{db.relative_to(Path.cwd())}" if db.is_relative_to(Path.cwd()) else uri
        return f"mlflow ui --backend-store-uri {store} --host 127.0.0.1, then open http://127.0.0.1:5000/{page}"
    return f"open {shown(uri).rstrip('/')}/{page}"


STORE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks"}


def check_scheme(uri: str) -> None:
    """Raise ConfigError for a store URI MLflow 3 will not open: an unknown scheme, or a folder
    (the file store, which MLflow now refuses unless MLFLOW_ALLOW_FILE_STORE=true)."""
    from urllib.parse import urlparse

    from mnistlab.config import ConfigError

    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() == "true":
            return
        folder = uri.removeprefix("file://")
        raise ConfigError(
            f"mlflow.tracking_uri={shown(uri)}: MLflow 3 refuses a folder (file store) by default; "
            f"use a SQLite store in it, mlflow.tracking_uri=sqlite:///{Path(folder).absolute()}"
            "/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)"
        )
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            f"mlflow.tracking_uri={shown(uri)}: unknown store scheme {scheme!r}; use one of "
            "sqlite:///path/mlflow.db, postgresql://..., mysql://..., http://host:port"
        )


def server_problem(uri: str, timeout: float = 3.0) -> str | None:
    """Why the MLflow server of an http(s) store does not answer /health (MLflow's own client
    would retry one request for about 4 minutes); None if it does, or the store is no server."""
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        reply = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as err:
        return type(err).__name__
    return None if reply.ok else f"HTTP {reply.status_code} from /health"


def check_server(uri: str, wait_s: float = 10.0) -> None:
    """Raise ConfigError unless the store's server (if it has one) answers within `wait_s`."""
    from mnistlab.config import ConfigError

    deadline = time.monotonic() + wait_s
    while (problem := server_problem(uri)) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    if problem is None:
        return
    raise ConfigError(
        f"mlflow.tracking_uri={shown(uri)}: no MLflow server answers there ({problem}); start one "
        "(mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlruns/mlflow.db)"
        " or record runs locally in ./mlruns with mlflow=local"
    )


def artifact_root(uri: str) -> str | None:
    """A new experiment's artifact root: `artifacts/` beside a SQLite file, else the server's."""
    db = sqlite_path(uri)
    if db is None:
        return None
    db = db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return (db.parent / "artifacts").as_uri()


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf of a resolved config as {dotted.key: str(value)}; lists stay whole."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(node)}


def hydra_context() -> dict[str, Any]:
    """Group choices, overrides and output dir of the current Hydra job, where there is one."""
    if not HydraConfig.initialized():
        return {"choices": {}, "overrides": [], "output_dir": None}
    hc = HydraConfig.get()
    runtime = hc.runtime
    return {
        "choices": {k: v for k, v in runtime.choices.items() if not k.startswith("hydra/")},
        "overrides": list(hc.overrides.task),
        "output_dir": None if OmegaConf.is_missing(runtime, "output_dir") else runtime.output_dir,
    }


def save_hydra_files(cfg: DictConfig, output_dir: Path) -> None:
    """Write Hydra's `.hydra/` files (config, hydra, overrides) where Hydra itself did not, e.g. a
    run started from Python with `mnistlab.config.compose`."""
    folder = output_dir / ".hydra"
    if folder.exists() or not HydraConfig.initialized():
        return
    folder.mkdir(parents=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")


def git_state() -> dict[str, str]:
    """The commit of the mnistlab checkout and whether it has uncommitted changes, if in git."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": sha, "git.dirty": str(dirty).lower()}


class TrackingUnavailable(ConnectionError):
    """The tracking server stayed unreachable; what it missed is kept in the run's output dir."""


class Run:
    """A live MLflow run. Each epoch's metrics go to `metrics.jsonl` in the output dir first,
    then to the store in one batch from a background thread, which waits out a tracking server
    that has gone away while training goes on."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, uri: str, output_dir: Path):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri
        self.journal = output_dir / "metrics.jsonl"
        self.failure: str | None = None  # why the last attempt failed, while batches wait
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._send_forever, name="mlflow-sender", daemon=True).start()

    def _send_forever(self) -> None:
        while True:
            send = self._queue.get()
            while not self._try_send(send):
                time.sleep(1.0)
            self._queue.task_done()

    def _try_send(self, send: Callable[[], None]) -> bool:
        problem = server_problem(self.uri, timeout=2)
        if problem is not None:
            return self._failed(f"server unreachable: {problem}")
        try:
            send()
        except Exception as err:
            return self._failed(f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
        if self.failure:
            log.info(f"MLflow store reachable again: sending buffered metrics ({self.unsent} left)")
            self.failure = None
        return True

    def _failed(self, reason: str) -> bool:
        reason = shown(reason)  # MLflow's messages carry the URI, password and all
        if self.failure is None:
            log.warning(f"MLflow: {reason}; training goes on, metrics wait in {self.journal}")
        self.failure = reason
        return False

    def log_epoch(
        self, epoch: int, metrics: dict[str, float], step_losses: list[tuple[int, float]]
    ) -> None:
        """Keep an epoch's metrics (step = epoch) and its `train/step_loss` points in the
        journal, then queue them for the store as one batch."""
        record = {"epoch": epoch, "metrics": metrics, "step_losses": step_losses}
        with open(self.journal, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.unsent and self.failure is None:  # the sender may be deep in MLflow's retries
            problem = server_problem(self.uri, timeout=2)
            if problem is not None:
                self._failed(f"server unreachable: {problem}")
        self._queue_record(record)

    def _queue_record(self, record: dict) -> None:
        from mlflow.entities import Metric

        now, epoch = int(time.time() * 1000), record["epoch"]
        batch = [Metric(k, float(v), now, epoch) for k, v in record["metrics"].items()]
        batch += [Metric("train/step_loss", v, now, step) for step, v in record["step_losses"]]
        self._queue.put(lambda: self.client.log_batch(self.run_id, metrics=batch, synchronous=True))

    def upload_later(self, path: Path, artifact_path: str | None = None) -> None:
        """Queue a file for the run's artifacts behind the metrics: a checkpoint upload waits
        for a missing server in the sender, not in the training loop."""
        self._queue.put(lambda: self.log_artifact(path, artifact_path))

    @property
    def unsent(self) -> int:
        """Epoch batches (and checkpoint uploads) not yet in the store."""
        return self._queue.unfinished_tasks

    def catch_up(self, upto: int | None = None) -> int:
        """Queue the journal's epochs (up to `upto`, else all) that the store lacks (the server
        was away, or the process was killed before they went out); return the last epoch the
        store had."""
        logged = self.logged_epochs()
        records = {}
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                with contextlib.suppress(ValueError):  # a line cut short by a kill
                    record = json.loads(line)
                    records[record["epoch"]] = record
        for epoch in sorted(records):
            if logged < epoch and (upto is None or epoch <= upto):
                self._queue_record(records[epoch])
        return logged

    def flush(self, wait_s: float) -> None:
        """Wait until the store has every queued batch; raise TrackingUnavailable after `wait_s`."""
        deadline = time.monotonic() + wait_s
        while self.unsent and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.unsent:
            raise TrackingUnavailable(
                f"MLflow store {shown(self.uri)} unreachable for {wait_s:g} s "
                f"(mlflow.offline_wait_s; {self.failure}): {self.unsent} uploads did not reach "
                f"it; every epoch's metrics are kept in {self.journal}, the run stays RUNNING "
                f"there. Once it is back, send them and finish the run with: "
                f"python -m train resume={self.journal.parent}"
            )

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, to the run's artifacts."""
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_pytorch_model(self, model: Any, example: Any) -> None:
        """Log `model` as an MLflow PyTorch model ("model"), ready for the Model Registry and
        `mlflow.pytorch.load_model`; the example's batch of 2 keeps the batch size dynamic."""
        import mlflow.pytorch
        import torch
        from mlflow.models import Model

        version = torch.__version__.split("+")[0]
        info = Model.log(  # mlflow.pytorch.log_model, for a run that is not the active run
            artifact_path=None,
            name="model",
            flavor=mlflow.pytorch,
            run_id=self.run_id,
            pytorch_model=model.cpu().eval(),
            input_example=example.cpu().numpy(),
            pip_requirements=[f"torch=={version}"],  # inferring them costs seconds
        )
        self.set_tag("model_uri", info.model_uri)  # mlflow.pytorch.load_model(this)

    def history(self) -> dict[str, list[tuple[int, float]]]:
        """The per-epoch metrics logged so far, as {key: [(epoch, value), ...]}."""
        keys = [f"{split}/{m}" for split in ("train", "val", "test") for m in ("loss", "acc")]
        return {
            key: sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, key))
            for key in keys
        }

    def logged_epochs(self) -> int:
        """The last epoch whose metrics are in the run (0 for a new run)."""
        history = self.client.get_metric_history(self.run_id, "epoch_time_s")
        return max((m.step for m in history), default=0)

    def set_tag(self, key: str, value: str) -> None:
        """Set one run tag."""
        self.client.set_tag(self.run_id, key, value)


class NoRun:
    """The run of a torchrun rank other than 0: it logs nothing (rank 0 logs for all)."""

    run_id = None

    def catch_up(self, upto: int | None = None) -> int:
        """Nothing to send: 0 epochs logged."""
        return 0

    def log_epoch(self, *args: Any) -> None:
        """Log nothing."""


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
        "best_val_acc": max((v for _, v in val), default=float("nan")),
        "final_test_acc": run.data.metrics.get("test/acc", float("nan")),
        "final_test_loss": run.data.metrics.get("test/loss", float("nan")),
        "start_time": run.info.start_time,
        "duration_s": round((end - run.info.start_time) / 1000, 3),
        "val_curve": val,
        "metrics": run.data.metrics,
        "params": run.data.params,
    }


def get_experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, creating it (with artifacts beside a SQLite store) if needed."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri))
    except MlflowException:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def store_lock(db: Path | None) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while it may be created or upgraded: MLflow's
    schema setup fails when two processes open a new store at once."""
    try:
        import fcntl
    except ImportError:  # not on Windows
        fcntl = None
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def connect(cfg: DictConfig) -> tuple[Any, str]:
    """Import MLflow and open the store and experiment (creating them if new): (client, id)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from mnistlab.config import ConfigError

    uri = tracking_uri(cfg)
    check_scheme(uri)
    check_sqlite(uri)
    check_server(uri)
    mlflow.set_tracking_uri(uri)  # for MLflow calls that take no client, like Model.log
    db = sqlite_path(uri)
    try:
        with store_lock(db):  # the first process creates the store, the others wait for it
            client = MlflowClient(tracking_uri=uri)
            experiment_id = get_experiment_id(client, cfg.mlflow.experiment, uri)
            if db is not None:  # WAL: parallel runs write while others read
                with sqlite3.connect(db, timeout=30) as con:
                    con.execute("PRAGMA journal_mode=WAL")
    except (ImportError, MlflowException, SQLAlchemyError) as err:  # no driver, a refusing DB
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ConfigError(
            f"mlflow.tracking_uri={shown(uri)}: MLflow cannot open this store ({shown(reason)}); "
            "check the address and credentials, and install the database's driver "
            "(e.g. pip install psycopg2-binary for postgresql, mysqlclient for mysql)"
        ) from err
    mlflow.set_experiment(experiment_id=experiment_id)  # where Model.log puts logged models
    return client, experiment_id


def connect_in_background(cfg: DictConfig) -> Future:
    """Run `connect` in a thread, so MLflow's import and store setup overlap loading torch and
    the data (about 2 s of a fresh run's start-up)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-connect")
    future = pool.submit(connect, cfg)
    pool.shutdown(wait=False)
    return future


@contextmanager
def start_run(
    cfg: DictConfig,
    output_dir: Path,
    tags: dict[str, str],
    connection: Future | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Run]:
    """Open an MLflow run holding cfg's params and tags; end it FINISHED, FAILED or KILLED.

    `tags` adds the run's own (the resolved device, say); `connection` is a
    `connect_in_background(cfg)` started earlier, if any; `resume_run_id` reopens that run.
    """
    # MLflow's import finishes in `connect` first: two threads importing it at once can trip
    # Python's import-lock deadlock check (_DeadlockError on mlflow.tracking.context.registry)
    client, experiment_id = connection.result() if connection else connect(cfg)
    from mlflow.entities import Param, RunStatus
    from mlflow.tracking.context.registry import resolve_tags

    from mnistlab.config import ConfigError
    from mnistlab.sweep import child_context
    from mnistlab.watchdog import HOST_TAG, Watchdog, close_abandoned, hold_lock, locker

    uri = tracking_uri(cfg)
    context = hydra_context()
    child = child_context() or {}  # parent link and sweep tags when this is a sweep's job
    # MLflow's own random names come from the seeded `random`: every run would be called alike
    picks = [context["choices"].get(group) for group in ("model", "optimizer", "data")]
    default_name = "-".join([*(p for p in picks if p), output_dir.name])
    run_name = cfg.mlflow.run_name or child.pop("run_name", None) or default_name
    all_tags = resolve_tags(
        {
            **git_state(),
            HOST_TAG: socket.gethostname(),
            "hydra.output_dir": str(output_dir),
            "hydra.overrides": shown(" ".join(context["overrides"])),
            **tags,
            **{k: v for k, v in child.items() if k != "run_name"},
        }
    )
    try:  # runs left RUNNING by a process killed with its watchdog (a container killed whole)
        close_abandoned(client, experiment_id, uri)
    except Exception as err:  # tidying up after others never stops this run
        log.warning(f"could not close abandoned runs: {type(err).__name__}: {err}")
    lock = hold_lock(output_dir, "training", wait_s=60)  # a watchdog at work is waited for
    if lock is None:
        raise ConfigError(
            f"output dir {output_dir}: another process is using it "
            f"(process {locker(output_dir)}); wait for it to end or stop it"
        )
    if resume_run_id:  # its params and tags are already there, and params cannot change
        run_id = resume_run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if "failure_reason" in client.get_run(run_id).data.tags:  # why it stopped is history
            client.delete_tag(run_id, "failure_reason")
    else:
        run_id = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
    guard = Watchdog(uri, run_id, output_dir, hint="it had saved no checkpoint: start it again")
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("resume", None)  # where a run was resumed from is not a hyperparameter
    container["mlflow"].pop("tracking_uri", None)  # nor is the store, and its URI may hold secrets
    params = {**flatten(container), **context["choices"]}
    status, run = RunStatus.FAILED, Run(client, run_id, experiment_id, uri, output_dir)
    try:
        if not resume_run_id:
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        yield run
        run.flush(cfg.mlflow.offline_wait_s)
        status = RunStatus.FINISHED
    except TrackingUnavailable:
        status = None  # the store cannot be told; the run's own files say what happened
        raise
    except (Exception, KeyboardInterrupt) as err:  # failed, or KILLED by a signal: say why
        if isinstance(err, KeyboardInterrupt):
            status = RunStatus.KILLED
        try:
            run.flush(cfg.mlflow.offline_wait_s)
        except TrackingUnavailable:
            status = None
            raise
        client.set_tag(run_id, "failure_reason", f"{type(err).__name__}: {err}"[:5000])
        if status == RunStatus.FAILED:
            client.log_text(run_id, traceback.format_exc(), "traceback.txt")
        raise
    finally:
        try:
            if status is not None:
                client.set_terminated(run_id, RunStatus.to_string(status))
        finally:
            guard.release()  # closed (or deliberately left open): the watchdog stands down
            lock.close()
