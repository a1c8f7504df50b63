"""The MLflow store: which one (`tracking_uri`), whether it can be used (checked once per
process), and opening it (`connect`). Passwords in store URIs are never shown (`redact`)."""

import contextlib
import logging
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig

from mnistlab.config import launch_dir
from mnistlab.errors import UserError

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
STORE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks"}
_checked: set[str] = set()  # store URIs this process has checked already
KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow's UI: the training view
TRAINING_VIEW = "workflowType=machine_learning"  # in a UI link: its training view, not GenAI's


def tracking_uri(cfg: DictConfig) -> str:
    """The store: `mlflow.tracking_uri` (or MLFLOW_TRACKING_URI), else MLflow's own default,
    mlflow.db in the folder the user launched from; a relative SQLite path means that folder."""
    if not cfg.mlflow.tracking_uri:
        return f"{SQLITE_PREFIX}{adopt_old_store(launch_dir())}"
    db = sqlite_path(uri := cfg.mlflow.tracking_uri)
    return f"{SQLITE_PREFIX}{launch_dir() / db}" if db and not db.is_absolute() else uri


def holds_runs(db: Path) -> bool:
    """Whether the SQLite store `db` holds a run or a registered model (or is no database)."""
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
            names = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
            return any(con.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                       for t in ("runs", "registered_models") if t in names)  # fmt: skip
    except sqlite3.DatabaseError:  # check_sqlite says what to do with it
        return True


def adopt_old_store(folder: Path) -> Path:
    """`folder`/mlflow.db, MLflow's default store, where an older mlruns/mlflow.db (and optuna.db)
    moves once no process has it open (a runless mlflow.db is kept aside); until then, the old."""
    db, old = folder / "mlflow.db", folder / "mlruns" / "mlflow.db"
    if not old.is_file() or (db.exists() and holds_runs(db)):
        return db
    try:
        with store_lock(db), contextlib.closing(sqlite3.connect(old, timeout=0)) as con:
            # leaving WAL needs the only connection: it checkpoints and removes -wal and -shm
            if con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] != "delete":
                return old
            if db.exists():
                os.replace(db, f"{db}.before-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(old, db)
            if not (folder / "optuna.db").exists() and (old.parent / "optuna.db").exists():
                os.replace(old.parent / "optuna.db", folder / "optuna.db")
    except (OSError, sqlite3.OperationalError):  # in use, or a folder this user cannot write
        return old
    log.warning(f"Moved the store {old} to {db}, MLflow's default (artifacts stay put)")
    return db


def redact(text: str) -> str:
    """`text` with the password of any URI in it replaced, fit to print or log."""
    return re.sub(r"//([^/@:\s]+):[^/@\s]*@", r"//\1:***@", text)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store URI, None for any other store."""
    return Path(uri[len(SQLITE_PREFIX) :]) if uri.startswith(SQLITE_PREFIX) else None


def check_sqlite(uri: str) -> None:
    """Raise UserError if the SQLite file of a `sqlite:///` store exists but is no database."""
    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            con.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as err:
        raise UserError(
            f"mlflow.tracking_uri={uri}: {db} is not a readable SQLite database ({err}); move it "
            f"aside (mv {db} {db}.bad) to start a new store, or point mlflow.tracking_uri elsewhere"
        ) from None


def check_scheme(uri: str) -> None:
    """Raise UserError for a store URI MLflow 3 will not open: an unknown scheme, or a folder
    (the file store, which MLflow now refuses unless MLFLOW_ALLOW_FILE_STORE=true)."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() == "true":
            return
        folder = uri.removeprefix("file://")
        raise UserError(
            f"mlflow.tracking_uri={redact(uri)}: MLflow 3 refuses a folder (file store) by "
            f"default; use a SQLite store in it, mlflow.tracking_uri=sqlite:///{Path(folder).absolute()}"
            "/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)"
        )
    if scheme not in STORE_SCHEMES:
        raise UserError(
            f"mlflow.tracking_uri={redact(uri)}: unknown store scheme {scheme!r}; use one of "
            "sqlite:///path/mlflow.db, postgresql://..., mysql://..., http://host:port"
        )


PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"  # a cheap query of the server's store
WRITERS = {"EDIT", "MANAGE"}  # MLflow auth permissions that may add runs to an experiment
LOGIN_FIX = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your MLflow account"


def login() -> Any:
    """MLflow's own credentials for a server, from its environment variables (for requests)."""
    if user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return lambda request: request.headers.update(Authorization=f"Bearer {token}") or request
    return None


def probe(uri: str, timeout: float | tuple[float, float]) -> tuple[str | None, int | None]:
    """(why the server cannot take requests, else None; the HTTP status of a query of its
    store, which needs the login and the server's database)."""
    import requests

    try:
        reply = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
        if not reply.ok:
            return f"HTTP {reply.status_code} from /health", None
        reply = requests.get(f"{uri.rstrip('/')}{PROBE}", auth=login(), timeout=timeout)
    except requests.RequestException as err:
        return type(err).__name__, None
    if reply.status_code >= 500:  # e.g. its PostgreSQL is down
        return f"HTTP {reply.status_code}: the server cannot query its store", reply.status_code
    return None, reply.status_code


def server_problem(uri: str, timeout: float = 3.0) -> str | None:
    """Why the MLflow server of an http(s) store cannot take requests (MLflow's client would retry
    a request for about 4 minutes); None if it can (a refused login is `check_login`'s)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return probe(uri, timeout)[0]


def check_login(uri: str, status: int | None) -> None:
    """Raise UserError if the server refused the query for want of a login (401) or access (403)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    where = f"mlflow.tracking_uri={redact(uri)}"
    if status == 401 and not user:
        raise UserError(f"{where}: the server asks for a login (HTTP 401); {LOGIN_FIX}")
    if status == 401:
        raise UserError(
            f"{where}: the server refuses MLFLOW_TRACKING_USERNAME={user} (HTTP 401: wrong "
            f"username or password); {LOGIN_FIX}"
        )
    if status == 403:
        raise UserError(
            f"{where}: user {user} has no permission to read experiments there (HTTP 403); ask "
            "the server's admin for access"
        )


def check_server(uri: str, wait_s: float = 10.0) -> None:
    """Raise UserError unless the store's server (if any) answers within `wait_s` and takes this
    login (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) if it asks for one."""
    if not uri.startswith(("http://", "https://")):
        return
    deadline = time.monotonic() + wait_s
    # 3 s to connect, 30 s to answer: a server busy with a team's runs is slow, not away
    while (found := probe(uri, (3.0, 30.0)))[0] is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    problem, status = found
    if problem is None:
        check_login(uri, status)
        return
    if status is not None:
        raise UserError(
            f"mlflow.tracking_uri={redact(uri)}: the MLflow server there cannot query its store "
            f"({problem.split(': ')[0]}); start its database, or see the server's log"
        )
    raise UserError(
        f"mlflow.tracking_uri={redact(uri)}: no MLflow server answers there ({problem}); start one "
        "(mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db)"
        " or record runs locally in ./mlflow.db with mlflow=local"
    )


def check_permission(uri: str, experiment_id: str, name: str) -> None:
    """Raise UserError if the server's basic auth lets this user only read the experiment (a
    run would fail on its first write); nothing to check on a server without auth."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not user or not uri.startswith(("http://", "https://")):
        return
    import requests

    try:  # a server without basic auth has no such endpoint (404): nothing to check
        url = f"{uri.rstrip('/')}/api/3.0/mlflow/users/permissions/get"
        params = {"username": user, "resource_type": "experiment", "resource_id": experiment_id}
        reply = requests.get(url, params=params, auth=login(), timeout=30)
        permission = reply.json().get("permission") if reply.ok else None
    except (requests.RequestException, ValueError):  # the run's first write will tell
        return
    if permission is not None and permission not in WRITERS:
        raise UserError(
            f"mlflow.experiment={name}: user {user} has no permission to add runs to it on "
            f"{redact(uri)} ({permission}); ask its owner or the server's admin for EDIT, or use "
            "an experiment of your own (mlflow.experiment=<new name>)"
        )


def check_database(uri: str) -> None:
    """Raise UserError unless the database of a postgresql/mysql/mssql store takes a connection
    within 5 s (MLflow would retry for about 2 minutes), or if its driver is not installed."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in ("postgresql", "mysql", "mssql"):
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    timeout = {"connect_timeout": 5} if scheme != "mssql" else {"timeout": 5}
    try:
        sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=timeout).connect().close()
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise store_error(uri, err) from err


def check_store(uri: str) -> None:
    """Check once per process that MLflow can use the store; raise UserError naming the fix."""
    if uri in _checked:
        return
    check_scheme(uri)
    check_sqlite(uri)
    check_database(uri)
    check_server(uri)
    _checked.add(uri)


def artifact_root(uri: str) -> str | None:
    """A new experiment's artifact root: `mlruns/` beside a SQLite file (MLflow's layout)."""
    db = sqlite_path(uri)
    if db is None:  # the server's
        return None
    db.resolve().parent.mkdir(parents=True, exist_ok=True)
    return (db.resolve().parent / "mlruns").as_uri()


def how_to_open(uri: str, experiment_id: str, run_id: str) -> str:
    """The exact command (or address) that shows a run in the MLflow UI."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"
    db = sqlite_path(uri)
    if db is not None:  # the port MLflow's UI takes from MLFLOW_PORT, as `mlflow ui` does
        port, here = os.environ.get("MLFLOW_PORT", "5000"), launch_dir()
        store = "" if db == here / "mlflow.db" else f" --backend-store-uri {uri}"
        return f"mlflow ui{store} --port {port}, then open http://127.0.0.1:{port}/{page}"
    return f"open {redact(uri).rstrip('/')}/{page}"


def get_experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, creating it (with artifacts beside a SQLite store) if needed."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"mlflow.experiment={name}: that experiment is deleted in {redact(uri)}; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or "
            "choose another name"
        )
    if experiment is not None:
        if KIND[0] not in experiment.tags:  # made by an older mnistlab, or by MLflow itself
            with contextlib.suppress(MlflowException):  # no EDIT on a server: it stays as it is
                client.set_experiment_tag(experiment.experiment_id, *KIND)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_root(uri), tags=dict([KIND]))
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


def store_error(uri: str, err: Exception) -> UserError:
    """The one line for a store MLflow cannot open: no driver, a refusing database."""
    reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    return UserError(
        f"mlflow.tracking_uri={redact(uri)}: MLflow cannot open this store ({redact(reason)}); "
        "check the address and credentials, and install the database's driver "
        "(e.g. pip install 'psycopg[binary]' for postgresql, mysqlclient for mysql)"
    )


def not_pickle_note(record: logging.LogRecord) -> bool:
    """False for MLflow's warning on the pickle format (chosen on purpose)."""
    return "by Pickle" not in record.getMessage()


def quiet_mlflow() -> None:
    """Silence MLflow's notes on what mnistlab chose on purpose: the system metrics monitor's
    comings and goings, a new store's tables, the pickle format, an ambiguous dataset source."""
    for name in ("mlflow.system_metrics", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").addFilter(not_pickle_note)  # once: the same filter
    warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")


def connect(cfg: DictConfig) -> tuple[Any, str]:
    """Open the store and experiment `mlflow.experiment`, made if new: (client, experiment id)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    uri, experiment = tracking_uri(cfg), cfg.mlflow.experiment
    quiet_mlflow()
    check_store(uri)
    mlflow.set_tracking_uri(uri)  # for MLflow calls that take no client, like Model.log
    db = sqlite_path(uri)
    try:
        with store_lock(db):  # the first process creates the store, the others wait for it
            client = MlflowClient(tracking_uri=uri)
            experiment_id = get_experiment_id(client, experiment, uri)
            check_permission(uri, experiment_id, experiment)
            if db is not None:  # WAL: parallel runs write while others read
                with sqlite3.connect(db, timeout=30) as con:
                    con.execute("PRAGMA journal_mode=WAL")
    except MlflowException as err:
        if err.error_code == "PERMISSION_DENIED":  # e.g. to create the experiment
            user = os.environ.get("MLFLOW_TRACKING_USERNAME")
            raise UserError(
                f"mlflow.experiment={experiment}: user {user} has no permission to "
                f"use it on {redact(uri)} ({err.error_code}); ask the server's admin for access"
            ) from None
        raise store_error(uri, err) from err
    except (ImportError, SQLAlchemyError) as err:  # no driver, a refusing DB
        raise store_error(uri, err) from err
    mlflow.set_experiment(experiment_id=experiment_id)  # where Model.log puts logged models
    return client, experiment_id
