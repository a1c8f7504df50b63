"""`-m hparams_search=optuna`: mnistlab's Optuna sweeper through the CLI, on synthetic data, with
a real Optuna storage (SQLite beside the MLflow store) and a real MLflow store."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution

from conftest import cli_env, history, run_cli

FAST = ["data=synthetic", "device=cpu", "batch_size=256",  # a plain value: not searched
        "train.plots=false", "mlflow.log_model=false"]  # fmt: skip
OPTUNA = ["-m", "hparams_search=optuna", *FAST]


def study(cwd: Path, name: str | None = None) -> optuna.Study:
    """The study `name` (default: the only one) in the default storage, beside the MLflow store."""
    storage = f"sqlite:///{cwd}/optuna.db"
    if name is None:
        (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


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
        assert float(run.data.params["lr"]) == trial.params["lr"]  # every digit in MLflow
        assert f"lr={trial.params['lr']:.4g}" in run.info.run_name.split(",")  # 4 in the name
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

    name = parent.data.tags["optuna.study"]  # named by the fixed config's digest
    assert re.fullmatch(r"mnistlab-[0-9a-f]{10}", name) and study(tmp_path).study_name == name
    again = run_cli([*OPTUNA, "epochs=1", "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"study {name} in sqlite:///{tmp_path}/optuna.db: 3 trials so far, 3 to run" in (
        again.stdout + again.stderr
    )  # the same command, run in-process now: the same study, continued
    assert states(tmp_path) == {n: "COMPLETE" for n in range(6)}  # 0-2 kept, not rerun
    _, parents, children = runs(tmp_path)
    assert len(parents) == 2 and len(children) == 6
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == list(range(6))
    lrs = [t.params["lr"] for t in study(tmp_path).get_trials()]
    assert not set(lrs[3:]) & set(lrs[:3])  # the continued sampler proposes new values


def test_another_fixed_config_gets_its_own_study_and_the_command_line_grammar_works(tmp_path):
    # a first search, then one whose space comes from the command line in hydra-optuna-sweeper's
    # grammar (its fixed config differs: batch_size is searched, not 256, and data.noise is 90)
    first = run_cli([*OPTUNA, "epochs=1", "hydra.sweeper.n_trials=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "to run; TPESampler searching" in first.stdout + first.stderr  # the default
    (old,) = optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")
    fast = [a for a in FAST if not a.startswith("batch_size=")]
    grammar = ["-m", "hparams_search=optuna", *fast, "epochs=1", "data.noise=90",
               "hydra.sweeper.n_trials=2", "lr=tag(log, interval(1e-3, 1e-1))",
               "batch_size=choice(128, 256)",
               "optimizer=adam,sgd", "train.label_smoothing=range(0.0, 0.2, step=0.1)",
               "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=7"]  # fmt: skip
    second = run_cli(grammar, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "to run; RandomSampler searching" in second.stdout + second.stderr  # its group
    names = set(optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")) - {old}
    assert len(names) == 1 and len(study(tmp_path, old).trials) == 1  # studies do not mix
    new = study(tmp_path, names.pop())
    assert new.user_attrs["fixed_config"]["data.noise"] == 90
    assert "batch_size" not in new.user_attrs["fixed_config"]
    assert [t.state.name for t in new.trials] == ["COMPLETE", "COMPLETE"]
    assert new.trials[0].distributions == {
        "lr": FloatDistribution(1e-3, 1e-1, log=True),
        "batch_size": CategoricalDistribution([128, 256]),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
        "train.label_smoothing": FloatDistribution(0.0, 0.2, step=0.1),
    }
    client, parents, children = runs(tmp_path)
    (parent,) = [p for p in parents if p.data.tags["optuna.study"] == new.study_name]
    ours = {r.info.run_id: r for r in children if r.data.tags["optuna.study"] == new.study_name}
    assert parent.data.tags["best_run_id"] == new.best_trial.user_attrs["mlflow_run_id"] in ours
    for trial in new.trials:  # each run trained with its trial's values
        run = ours[trial.user_attrs["mlflow_run_id"]]
        assert float(run.data.params["lr"]) == trial.params["lr"]
        assert run.data.params["batch_size"] == str(trial.params["batch_size"])

    # the first search's study named explicitly, with the second's fixed config: one line, exit 2
    mixed = run_cli([*grammar, f"hydra.sweeper.study_name={old}"], cwd=tmp_path)
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr
    error = mixed.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: hydra.sweeper.study_name={old}: that study searched another "
                            "fixed config (batch_size=<unset> here, 256 there; ")  # fmt: skip
    assert "data.noise=90 here, 60.0 there" in error and "name a new one" in error
    assert len(study(tmp_path, old).trials) == 1 and len(new.trials) == 2  # nothing written


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
