"""`-m hparams_search=optuna`: mnistlab's Optuna sweeper through the CLI, on synthetic data, with
a real Optuna storage (SQLite beside the MLflow store) and a real MLflow store."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from mlflow import MlflowClient

from conftest import cli_env, history, run_cli

FAST = ["data=synthetic", "device=cpu", "batch_size=256",  # a plain value: not searched
        "train.plots=false", "mlflow.log_model=false"]  # fmt: skip
OPTUNA = ["-m", "hparams_search=optuna", *FAST]


def study(cwd: Path) -> optuna.Study:
    """The study `mnistlab` in the default storage: optuna.db beside the MLflow store."""
    return optuna.load_study(study_name="mnistlab", storage=f"sqlite:///{cwd}/optuna.db")


def runs(cwd: Path):
    """(client, parents, children) of the experiment in cwd's store."""
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    return client, parents, [r for r in found if "mlflow.parentRunId" in r.data.tags]


def states(cwd: Path) -> dict[int, str]:
    """Each trial's state by number."""
    return {t.number: t.state.name for t in study(cwd).get_trials()}


def test_a_study_persists_and_a_rerun_continues_it_with_parallel_trials(tmp_path):
    # 3 trials in batches of 2 and 1, each batch in parallel in joblib's workers
    args = [*OPTUNA, "epochs=1", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]  # fmt: skip
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert states(tmp_path) == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE"}
    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.data.tags["sweep.sweeper"].endswith("MnistlabOptunaSweeper")
    assert parent.data.tags["optuna.n_complete"] == "3"
    assert parent.data.tags["optuna.n_pruned"] == parent.data.tags["optuna.n_failed"] == "0"
    trials = {t.number: t for t in study(tmp_path).get_trials()}
    for run in children:  # a child per trial, tagged with it, its params Optuna's suggestions
        trial = trials[int(run.data.tags["optuna.trial_number"])]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert float(run.data.params["lr"]) == trial.params["lr"]
        assert run.data.params["optimizer"] == trial.params["optimizer"]
        assert run.data.params["batch_size"] == "256" and "batch_size" not in trial.params
        assert trial.value == max(v for _, v in history(client, run.info.run_id, "val/acc"))
    best = max(trials.values(), key=lambda t: t.value)
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["best/val_acc"] == best.value
    saved = yaml.safe_load(Path(client.download_artifacts(
        parent.info.run_id, "best_params.yaml", str(tmp_path / "dl"))).read_text())  # fmt: skip
    assert saved["trial"] == best.number and saved["params"] == best.params
    for name in ("optimization_history.png", "param_importances.png"):
        png = Path(client.download_artifacts(parent.info.run_id, name, str(tmp_path / "dl")))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    again = run_cli([*OPTUNA, "epochs=1", "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 trials so far, 3 to run" in again.stdout + again.stderr
    assert states(tmp_path) == {n: "COMPLETE" for n in range(6)}  # 0-2 kept, not rerun
    _, parents, children = runs(tmp_path)
    assert len(parents) == 2 and len(children) == 6
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == list(range(6))
    lrs = [t.params["lr"] for t in study(tmp_path).get_trials()]
    assert not set(lrs[3:]) & set(lrs[:3])  # the continued sampler proposes new values


def test_hopeless_trials_are_pruned_and_a_diverging_trial_fails(tmp_path):
    space = "hydra.sweeper.params.lr='choice(0.05, 1e-9, 1e6)'"  # good, hopeless, diverges
    # seed 35: TPE's random start tries lr 0.05 first, then 1e-9, 1e6, 1e-9, 0.05
    args = [*OPTUNA, "epochs=3", space, "hydra.sweeper.params.optimizer=sgd", "seed=35",
            "hydra.sweeper.n_trials=5", "hydra.sweeper.warmup.trials=1",
            "hydra.sweeper.warmup.epochs=0"]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # a failed trial fails the command
    trials = study(tmp_path).get_trials()
    by_lr = {lr: [t for t in trials if t.params["lr"] == lr] for lr in (0.05, 1e-9, 1e6)}
    assert all(by_lr.values()), f"the seed did not try every lr: {trials}"
    assert {t.state.name for t in by_lr[1e6]} == {"FAIL"}
    assert {t.state.name for t in by_lr[0.05]} == {"COMPLETE"}
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(t.params["lr"] == 1e-9 for t in pruned)
    client, parents, children = runs(tmp_path)
    (parent,) = parents
    assert parent.info.status == "FAILED"
    counts = {k: parent.data.tags[f"optuna.n_{k}"] for k in ("complete", "pruned", "failed")}
    assert counts == {"complete": str(5 - len(pruned) - len(by_lr[1e6])),
                      "pruned": str(len(pruned)), "failed": str(len(by_lr[1e6]))}  # fmt: skip
    by_trial = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in pruned:  # stopped at once: fewer epochs than asked, FINISHED, tagged
        run = by_trial[trial.number]
        epochs = len(history(client, run.info.run_id, "val/acc"))
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"
        assert epochs < 3 and run.data.tags["optuna.pruned_epoch"] == str(epochs)
    for trial in by_lr[1e6]:
        assert by_trial[trial.number].info.status == "FAILED"
    for trial in by_lr[0.05]:
        run = by_trial[trial.number]
        assert run.info.status == "FINISHED" and "optuna.state" not in run.data.tags
        assert len(history(client, run.info.run_id, "val/acc")) == 3


def test_a_killed_search_loses_no_finished_trial_and_resumes(tmp_path):
    # epochs of a second or more, so that the kill lands inside trial 1, not after it
    args = [*OPTUNA, "data.train_size=40000", "epochs=3", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner=none"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # trial 0 done, trial 1 midway through its epochs
            time.sleep(0.5)
            if not (tmp_path / "optuna.db").exists():
                continue
            try:
                trials = study(tmp_path).get_trials()
            except Exception:  # the search is still creating the study's tables or the study
                continue
            if len(trials) == 2 and trials[1].intermediate_values:
                break
        else:
            raise AssertionError("the search did not reach trial 1 in 180 s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert states(tmp_path) == {0: "COMPLETE", 1: "RUNNING"}
    client = runs(tmp_path)[0]
    killed = study(tmp_path).get_trials()[1].user_attrs["mlflow_run_id"]
    deadline = time.monotonic() + 60  # the watchdog ends the killed job's run
    while client.get_run(killed).info.status == "RUNNING":
        assert time.monotonic() < deadline, "the killed trial's run stayed RUNNING"
        time.sleep(0.5)
    assert client.get_run(killed).info.status == "KILLED"

    again = run_cli([*args[:-2], "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner=none"],
                    cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert states(tmp_path) == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}
    _, parents, children = runs(tmp_path)
    assert len(parents) == 2 and len(children) == 3  # trial 0 was not run again
    numbers = {t.user_attrs["mlflow_run_id"]: t.number for t in study(tmp_path).get_trials()}
    assert {numbers[r.info.run_id]: r.info.status for r in children} == {
        0: "FINISHED", 1: "KILLED", 2: "FINISHED"
    }  # fmt: skip
