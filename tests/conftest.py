"""Shared fixtures: the real datasets from ../shared/data, a temp MLflow store, and the CLI."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MNISTLAB_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding MNIST/raw and FashionMNIST/raw; a missing dataset fails, never skips."""
    for name in ("MNIST", "FashionMNIST"):
        if not (DATA_ROOT / name / "raw" / "train-images-idx3-ubyte").exists():
            pytest.fail(
                f"{name} not found under {DATA_ROOT}: set MNISTLAB_DATA to the folder "
                f"holding {name}/raw (../shared/data in this project's checkouts)"
            )
    return DATA_ROOT


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A fresh SQLite MLflow store in a temp dir."""
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a command run as a user would: MNISTLAB_DATA set, and no
    MLFLOW_TRACKING_URI from the caller's shell (each test picks its store)."""
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**environ, "MNISTLAB_DATA": str(DATA_ROOT), "PYTHONUNBUFFERED": "1", **extra}


def run_cli(args: list[str], cwd: Path, timeout: float = 600, **env: str):
    """Run `python -m train ARGS` in `cwd` as a user would, with MNISTLAB_DATA set."""
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_run(uri: str, experiment: str = "mnistlab"):
    """The single run of `experiment` in the store at `uri` (fails if there are more or none)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return client, runs[0]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) points in step order."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def free_port() -> int:
    """A TCP port nothing listens on, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(
    folder: Path, port: int | None = None, stop: signal.Signals = signal.SIGTERM, plain=False
) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 over a SQLite store and an artifact store (proxied as
    mlflow-artifacts:) in `folder`; its URL, once /health answers. `stop` ends it (SIGKILL: a
    crash, with no graceful shutdown that could still serve a request). `plain`: `mlflow ui` as a
    newcomer types it in `folder`, no flags (the port from MLFLOW_PORT, as MLflow reads it)."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "ui"] if plain else [
        mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
        "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, "MLFLOW_PORT": str(port)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up, or busy starting
                pass
            assert proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not come up in 90 s"
            time.sleep(0.3)
        yield url
    finally:  # the server and its uvicorn workers, and wait until the port is closed
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, stop)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
