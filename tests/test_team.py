"""The team setup, for real: `scripts/team_server.sh` starts a PostgreSQL cluster and an
`mlflow server` with basic auth on it; logins, permissions, load and faults are tried against it.

Sizes fit a 2-core machine: one torch thread per run; 2 epochs of synthetic data per run under
load, 4 to 5 epochs of 20000 samples for the faults.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import requires
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, cli_env, free_port, history, run_cli
from test_errors import EPOCH_KEYS, journal_lines, wait_for

SCRIPT = REPO / "scripts" / "team_server.sh"
SYNTH = ["data=synthetic", "device=cpu", "device.threads=1", "mlflow=server",
         "mlflow.log_model=false", "train.log_every=10"]  # fmt: skip
SLOW = [*SYNTH, "data.train_size=20000", "train.plots=false"]  # epochs of a few seconds
LOGIN_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass
class Team:
    folder: Path
    url: str
    login: dict[str, str]  # the admin's MLFLOW_TRACKING_USERNAME and _PASSWORD

    def script(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        result = subprocess.run(
            [str(SCRIPT), args[0], str(self.folder), *args[1:]], env=env,
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def env(self, **login: str) -> dict[str, str]:
        """A user's environment: no login of the caller's shell, `login` (default: the admin's)."""
        environ = {k: v for k, v in cli_env().items() if k not in LOGIN_VARS}
        return {**environ, **(login or self.login)}

    def client(self) -> MlflowClient:
        os.environ.update(self.login)  # MLflow's client reads the login from the environment
        return MlflowClient(self.url)

    def start(self, cwd: Path, args: list[str]) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [sys.executable, "-m", "train", *args, f"mlflow.tracking_uri={self.url}"], cwd=cwd,
            env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def train(self, cwd: Path, args: list[str], **login: str) -> subprocess.CompletedProcess:
        """`python -m train ARGS` on this server as `login` (default: the admin), to its end."""
        return subprocess.run(
            [sys.executable, "-m", "train", *args, f"mlflow.tracking_uri={self.url}"], cwd=cwd,
            env=self.env(**login), capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def runs(self, experiment: str) -> list:
        client = self.client()
        exp = client.get_experiment_by_name(experiment)
        return client.search_runs([exp.experiment_id]) if exp else []


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    """The README's throwaway team server, with auth, in a folder the postgres user can enter."""
    folder = Path(tempfile.mkdtemp(prefix="mnistlab-team-"))
    folder.chmod(0o755)
    port = free_port()
    team = Team(folder / "team", f"http://127.0.0.1:{port}", {})
    try:
        team.script("start", "--auth", "--port", str(port), "--db-port", str(free_port()))
        env = (team.folder / "client.env").read_text()
        assert f"export MLFLOW_TRACKING_URI={team.url}\n" in env
        password = env.split("MLFLOW_TRACKING_PASSWORD='")[1].split("'")[0]
        team.login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        yield team
    finally:
        for key in LOGIN_VARS:
            os.environ.pop(key, None)
        if (team.folder / "team.env").exists():
            team.script("stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_the_team_extra_is_the_psycopg_3_driver_and_mlflow_auth_alone():
    team = [r.split(";")[0] for r in requires("mnistlab") if r.endswith('extra == "team"')]
    names = sorted(r.split(">")[0].split("<")[0] for r in team)
    assert names == ["mlflow[auth]", "psycopg[binary]"]
    import flask_wtf  # noqa: F401  (what mlflow[auth] adds)
    import psycopg  # what SQLAlchemy 2 loads for postgresql://

    assert psycopg.__version__.startswith("3.")


def test_the_server_runs_on_postgresql_with_proxied_artifacts_and_auth(team):
    settings = (team.folder / "team.env").read_text()
    assert "auth=1" in settings and "db_password=" in settings
    assert oct((team.folder / "team.env").stat().st_mode)[-3:] == "600"
    data = team.folder / "pgdata"
    assert data.stat().st_uid != 0 and (data / "PG_VERSION").read_text().strip() == "15"
    config = (data / "postmaster.opts").read_text()
    assert "listen_addresses=127.0.0.1" in config
    log = (team.folder / "mlflow.log").read_text()
    assert "basic-auth" not in log or "Traceback" not in log
    result = team.script("start")  # a second start finds both running
    assert "already running" in result.stdout and "PostgreSQL on" not in result.stdout


def test_a_login_that_is_missing_or_wrong_is_one_line_before_any_job(team, tmp_path):
    cases = [  # a run without a login, a sweep with a wrong password
        ({"MLFLOW_TRACKING_PASSWORD": "x"}, [*SYNTH, "epochs=1"], "the server asks for a login"),
        (
            {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong-secret-1"},
            ["-m", *SYNTH, "epochs=1", "seed=0,1"],
            "the server refuses MLFLOW_TRACKING_USERNAME=admin (HTTP 401: wrong username or "
            "password)",
        ),
    ]
    for login, args, what in cases:
        result = team.train(tmp_path, [*args, "mlflow.experiment=logins"], **login)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().startswith(f"Error: mlflow.tracking_uri={team.url}: {what}")
        assert "\n" not in result.stderr.strip() and "Traceback" not in result.stdout
        assert result.stderr.strip().endswith(
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your MLflow account"
        )
        assert "wrong-secret-1" not in result.stdout + result.stderr
        assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    assert team.runs("logins") == []


def test_a_user_who_may_only_read_the_experiment_gets_one_no_permission_line(team, tmp_path):
    from mlflow.server import get_app_client

    client = team.client()
    experiment_id = client.create_experiment("read-only")
    auth = get_app_client("basic-auth", tracking_uri=team.url)
    auth.create_user("reader", "reader-secret-123")
    auth.grant_user_permission("reader", "experiment", experiment_id, "READ")
    reader = {"MLFLOW_TRACKING_USERNAME": "reader", "MLFLOW_TRACKING_PASSWORD": "reader-secret-123"}
    for args in ([*SYNTH, "epochs=1"], ["-m", *SYNTH, "epochs=1", "seed=0,1"]):
        result = team.train(tmp_path, [*args, "mlflow.experiment=read-only"], **reader)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stdout + result.stderr
        assert result.stderr.strip() == (
            f"Error: mlflow.experiment=read-only: user reader has no permission to add runs to it "
            f"on {team.url} (READ); ask its owner or the server's admin for EDIT, or use an "
            "experiment of your own (mlflow.experiment=<new name>)"
        )
        assert "reader-secret-123" not in result.stdout + result.stderr
    assert team.runs("read-only") == []


def assert_whole(client: MlflowClient, run, epochs: int) -> None:
    """A run FINISHED in the store with its params, every epoch's metrics and its artifacts."""
    run_id = run.info.run_id
    assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("failure_reason"))
    assert {"lr", "seed", "epochs", "model", "data"} <= set(run.data.params)
    for key in [*EPOCH_KEYS, "epoch_time_s"]:
        assert [s for s, _ in history(client, run_id, key)] == list(range(1, epochs + 1)), key
    assert history(client, run_id, "train/step_loss")
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.pth", "config.yaml", "train.log", "data.json"} <= names, names


def test_two_sweeps_and_runs_at_once_all_arrive(team, tmp_path):
    common = [*SYNTH, "epochs=2", "mlflow.experiment=load"]
    sweep = ["-m", *common, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "lr=1e-3,3e-3"]
    procs = [
        team.start(tmp_path / "a", [*sweep, "sweep_name=sweep-a"]),
        team.start(tmp_path / "b", [*sweep, "sweep_name=sweep-b", "seed=1"]),
        team.start(tmp_path / "c", [*common, "seed=2"]),
        team.start(tmp_path / "d", [*common, "seed=3"]),
    ]
    outputs = [proc.communicate(timeout=400)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
        assert "leaked semaphore" not in output and "Traceback" not in output
    runs = team.runs("load")
    assert len(runs) == 8 and not [r for r in runs if r.info.status == "RUNNING"]
    parents = {r.info.run_name: r for r in runs if r.info.run_name.startswith("sweep-")}
    assert sorted(parents) == ["sweep-a", "sweep-b"]
    client = team.client()
    for parent in parents.values():
        assert parent.info.status == "FINISHED" and parent.data.tags["sweep.n_jobs"] == "2"
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.csv"}
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(c.data.params["lr"] for c in children) == ["0.001", "0.003"]
    for run in runs:
        if run.info.run_name not in parents:
            assert_whole(client, run, epochs=2)
    download = client.download_artifacts(runs[0].info.run_id, "config.yaml", str(tmp_path))
    assert "epochs: 2" in Path(download).read_text()


def test_an_optuna_search_keeps_its_study_in_the_team_postgresql(team, tmp_path):
    settings = dict(kv.split("=", 1) for kv in (team.folder / "team.env").read_text().split())
    pg_bin = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    createdb = Path(pg_bin.stdout.strip() or "/usr/lib/postgresql/15/bin") / "createdb"
    subprocess.run(
        [str(createdb), "-h", "127.0.0.1", "-p", settings["db_port"], "-U", "mlflow", "optuna"],
        env={**os.environ, "PGPASSWORD": settings["db_password"]}, check=True, timeout=60,
    )  # fmt: skip
    storage = (f"postgresql+psycopg://mlflow:{settings['db_password']}@127.0.0.1:"
               f"{settings['db_port']}/optuna")  # fmt: skip
    search = ["-m", *SYNTH, "epochs=1", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
              f"hydra.sweeper.storage={storage}", "mlflow.experiment=search"]  # fmt: skip
    for attempt, trials in (("first", 2), ("again", 4)):  # the same command continues the study
        proc = team.start(tmp_path / attempt, search)
        output = proc.communicate(timeout=400)[0]
        assert proc.returncode == 0, output[-3000:]
        assert settings["db_password"] not in output  # the storage URI's password is not shown
        import optuna

        (name,) = optuna.get_all_study_names(storage)  # one study: the fixed config's
        study = optuna.load_study(study_name=name, storage=storage)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * trials
    children = [r for r in team.runs("search") if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [0, 1, 2, 3]


def kill_server(team: Team) -> None:
    pid = int((team.folder / "mlflow.pid").read_text())
    os.killpg(pid, signal.SIGKILL)  # the server and its workers, with no shutdown at all


def test_the_server_killed_mid_runs_and_restarted_loses_nothing(team, tmp_path):
    args = [*SLOW, "epochs=4", "mlflow.experiment=server-killed"]
    procs = [team.start(tmp_path, [*args, f"seed={seed}"]) for seed in (0, 1)]
    try:
        wait_for(lambda: journal_lines(tmp_path) >= 1, procs[0], "a first epoch", timeout=300)
        kill_server(team)
        assert all(p.poll() is None for p in procs) and journal_lines(tmp_path) < 8
        time.sleep(10)
        team.script("start")  # the server again, on the same database
        for proc in procs:
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, output[-3000:]
    finally:
        for proc in procs:
            proc.kill()
    runs = team.runs("server-killed")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    for run in runs:
        assert_whole(team.client(), run, epochs=4)


def test_postgresql_restarted_during_a_run_loses_nothing(team, tmp_path):
    proc = team.start(tmp_path, [*SLOW, "epochs=5", "mlflow.experiment=db-restarted"])
    try:
        wait_for(lambda: journal_lines(tmp_path) >= 1, proc, "first epoch", timeout=300)
        team.script("stop", "db")
        down = "epochs while the database is down"
        wait_for(lambda: journal_lines(tmp_path) >= 3, proc, down, timeout=300)
        team.script("start")  # PostgreSQL again; the server was up all along
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "training goes on" in output and "reachable again" in output
    (run,) = team.runs("db-restarted")
    assert_whole(team.client(), run, epochs=5)


def test_the_database_lost_for_good_ends_the_run_as_a_server_that_never_returns(team, tmp_path):
    epochs = 4
    args = [*SLOW, f"epochs={epochs}", "mlflow.experiment=db-lost", "mlflow.offline_wait_s=3"]
    proc = team.start(tmp_path, args)
    try:
        wait_for(lambda: journal_lines(tmp_path) >= 1, proc, "first epoch", timeout=300)
        team.script("stop", "db")  # and not started again
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
        team.script("start")  # for the runs after this one (its run is left RUNNING)
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"Error: MLflow store {team.url} unreachable for 3 s"), last
    (run_dir,) = tmp_path.glob("outputs/*/*")
    assert "metrics.jsonl" in last and f"python -m train resume={run_dir}" in last
    assert journal_lines(tmp_path) == epochs  # every epoch kept locally
    result = run_cli(
        [f"resume={run_dir}", f"mlflow.tracking_uri={team.url}"], cwd=tmp_path, **team.login
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = team.runs("db-lost")
    assert_whole(team.client(), run, epochs=epochs)
