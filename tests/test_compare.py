"""Comparing runs like a scientist, on one real sweep with `repeats=2` (joblib, synthetic data)
and one single run beside it in the same fresh store: seeds folded into configs, the config
digest, dataset lineage, system metrics, params without duplicates, and the Model Registry."""

import csv
import statistics
import subprocess
import sys
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from conftest import cli_env, history, run_cli
from mnistlab.files import write_csv

FAST = ["data=synthetic", "epochs=1", "device=cpu", "train.plots=false"]


def module(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m mnistlab.NAME ARGS` in `cwd`, as a user would run it."""
    return subprocess.run([sys.executable, "-m", f"mnistlab.{name}", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """`-m lr=0.01,0.1 repeats=2` on joblib (4 jobs with their MLflow models), then a single run
    with another val_size and system metrics off: (cwd, client, parent, children, single)."""
    cwd = tmp_path_factory.mktemp("compare")
    args = ["lr=0.01,0.1", "repeats=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = run_cli([*FAST, *args], cwd=cwd)  # repeats adds the -m
    assert result.returncode == 0, result.stderr[-3000:]
    single = [
        "lr=0.01",
        "data.val_size=400",
        "mlflow.system_metrics=false",
        "mlflow.log_model=false",
    ]
    result = run_cli([*FAST, *single], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    (parent,) = [r for r in runs if "sweep.dir" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    (alone,) = [r for r in runs if r is not parent and r not in children]
    return cwd, client, parent, children, alone


def key(run) -> tuple[str, str]:
    return run.data.params["lr"], run.data.params["seed"]


def test_repeats_runs_every_config_with_consecutive_seeds(store):
    _, _, parent, children, _ = store
    assert parent.info.status == "FINISHED"
    assert sorted(key(r) for r in children) == [("0.01", "0"), ("0.01", "1"), ("0.1", "0"),
                                                ("0.1", "1")]  # fmt: skip
    assert all(r.info.status == "FINISHED" for r in children)
    assert parent.data.tags["sweep.swept_keys"] == "lr,seed"
    assert sorted(r.info.run_name for r in children)[0] == "lr=0.01,seed=0"


def test_repeats_refuses_a_seed_sweep_and_optuna_in_one_line(tmp_path):
    both = run_cli(["-m", *FAST, "seed=0,1", "repeats=2"], cwd=tmp_path)
    assert both.returncode == 2 and both.stderr.strip().splitlines() == [
        "Error: repeats=2 with seed=0,1: both choose the seeds; give one seed (seed=0 "
        "repeats=2) or drop repeats"
    ]
    optuna = run_cli(["-m", "hparams_search=optuna", *FAST, "repeats=3"], cwd=tmp_path)
    assert optuna.returncode == 2 and len(optuna.stderr.strip().splitlines()) == 1
    assert optuna.stderr.startswith("Error: repeats=3 does not combine with Optuna")
    assert not (tmp_path / "mlruns").exists()  # refused before any run


def test_the_config_digest_ignores_the_seed_and_changes_with_the_config(store):
    _, _, _, children, alone = store
    digests = {key(r): r.data.tags["config_digest"] for r in children}
    assert digests["0.01", "0"] == digests["0.01", "1"]  # two processes, same config
    assert digests["0.1", "0"] == digests["0.1", "1"]
    assert digests["0.01", "0"] != digests["0.1", "0"]
    assert alone.data.tags["config_digest"] not in digests.values()  # data.val_size=400
    from mnistlab.config import compose
    from mnistlab.tracking.tracker import config_digest

    here = compose([*FAST, "lr=0.01", "seed=7", "mlflow.log_model=false"])  # this process
    assert config_digest(here) == digests["0.01", "0"]


def test_summary_by_config_and_the_best_config_match_values_computed_here(store, tmp_path):
    cwd, client, parent, children, _ = store
    expected = {}
    for lr in ("0.01", "0.1"):
        runs = [r for r in children if r.data.params["lr"] == lr]
        val = [max(v for _, v in history(client, r.info.run_id, "val/acc")) for r in runs]
        test = [r.data.metrics["test/acc"] for r in runs]
        best = runs[val.index(max(val))]
        expected[lr] = (statistics.mean(val), statistics.stdev(val), statistics.mean(test),
                        statistics.stdev(test), best)  # fmt: skip
    path = client.download_artifacts(parent.info.run_id, "summary_by_config.csv", str(tmp_path))
    with open(path) as f:
        rows = {r["lr"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["0.01", "0.1"]
    for lr, (val_mean, val_std, test_mean, test_std, best) in expected.items():
        row = rows[lr]
        assert row["n"] == "2"
        got = [float(row[k]) for k in ("val_acc_mean", "val_acc_std", "test_acc_mean",
                                       "test_acc_std")]  # fmt: skip
        assert got == pytest.approx([val_mean, val_std, test_mean, test_std], abs=5e-5)
        assert all(len(row[k].partition(".")[2]) <= 4 for k in row if k.endswith(("mean", "std")))
        assert row["best_run_id"] == best.info.run_id
        assert row["best_seed"] == best.data.params["seed"]
    winner = max(expected, key=lambda lr: expected[lr][0])  # the best MEAN val acc
    best_run = expected[winner][4]
    assert parent.data.tags["best_run_id"] == best_run.info.run_id
    assert parent.data.metrics["best/val_acc_mean"] == pytest.approx(expected[winner][0])
    assert parent.data.metrics["best/test_acc"] == best_run.data.metrics["test/acc"]
    png = client.download_artifacts(parent.info.run_id, "summary.png", str(tmp_path))
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    result = module("report", [parent.info.run_id, "--by-config", "--csv", "cfg.csv"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "4 runs in 2 configs" in lines[0]
    first = lines[2].split()  # best mean first: lr, n, val mean, val std, test mean, test std
    assert first[:2] == [winner, "2"]
    assert [float(x) for x in first[2:6]] == pytest.approx(expected[winner][:4], abs=6e-5)
    assert first[-1] == best_run.info.run_id
    with open(cwd / "cfg.csv") as f:
        assert [r["lr"] for r in csv.DictReader(f)][0] == winner


def test_a_summary_that_fails_midway_leaves_the_last_one_whole(tmp_path):
    path, columns = tmp_path / "summary.csv", ["run_id", "best_val_acc"]
    write_csv(path, columns, [{"run_id": "a", "best_val_acc": 0.9, "other": "left out"}])
    before = path.read_bytes()
    assert before.decode().splitlines() == ["run_id,best_val_acc", "a,0.9"]

    class Unprintable:  # a value that fails as the CSV writer turns it into text
        def __str__(self) -> str:
            raise RuntimeError("cannot print this value")

    rows = [{"run_id": "b", "best_val_acc": 0.8}, {"run_id": "c", "best_val_acc": Unprintable()}]
    with pytest.raises(RuntimeError, match="cannot print this value"):
        write_csv(path, columns, rows)  # row b would be in a file written in place
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # no temp file left


def test_each_run_logs_its_splits_as_dataset_inputs_with_digests_of_their_samples(store):
    _, _, _, children, alone = store
    from mnistlab.config import compose
    from mnistlab.parts import build_part
    from mnistlab.tracking.tracker import split_digest

    def inputs(run) -> dict[str, object]:
        found = {}
        for i in run.inputs.dataset_inputs:
            context = {t.key: t.value for t in i.tags}["mlflow.data.context"]
            found[context] = i.dataset
        assert sorted(found) == ["test", "train", "val"]
        assert {d.name for d in found.values()} == {"synthetic"}
        assert all("make_synthetic" in d.source for d in found.values())
        return {k: d.digest for k, d in found.items()}

    by = {key(r): inputs(r) for r in children}
    assert by["0.01", "0"] == by["0.1", "0"]  # the same seed: the same three splits
    assert by["0.01", "0"]["val"] != by["0.01", "1"]["val"]  # the val split follows the seed
    assert by["0.01", "1"] == by["0.1", "1"]  # (synthetic data draws even its test split
    assert by["0.01", "0"]["test"] != by["0.01", "1"]["test"]  # from the seed)
    other = inputs(alone)  # seed 0, data.val_size=400
    assert other["val"] != by["0.01", "0"]["val"] and other["test"] == by["0.01", "0"]["test"]
    cfg = compose([*FAST, "seed=1"])
    data = build_part(cfg.data, "data", seed=1)  # the exact samples, rebuilt in this process
    assert by["0.1", "1"]["val"] == split_digest(data.val.images, data.val.labels)
    assert by["0.1", "1"]["train"] == split_digest(data.train.images, data.train.labels)


def test_system_metrics_and_samples_per_s_are_logged_unless_turned_off(store):
    _, client, _, children, alone = store
    for run in children:
        for name in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            assert history(client, run.info.run_id, name), name
        speed = history(client, run.info.run_id, "train/samples_per_s")
        assert [s for s, _ in speed] == [1] and speed[0][1] > 0
    assert not [k for k in alone.data.metrics if k.startswith("system/")]
    assert history(client, alone.info.run_id, "train/samples_per_s")


def test_an_interpolated_value_is_one_param_under_the_users_key(store):
    _, _, _, children, _ = store
    for run in children:
        params = run.data.params
        assert "lr" in params and "optimizer.lr" not in params
        assert not [k for k in params if k.endswith(".lr")]
        assert params["optimizer"] == "adam" and "optimizer.betas" in params


def test_promote_the_sweeps_best_run_then_evaluate_and_predict_by_alias(store, tmp_path):
    cwd, client, parent, children, alone = store
    result = module("promote", [parent.info.run_id, "--name", "mnist-synth", "--alias",
                                "champion"], cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    best_id = parent.data.tags["best_run_id"]
    version = client.get_model_version_by_alias("mnist-synth", "champion")
    assert str(version.version) == "1" and version.run_id == best_id
    assert version.tags["mnistlab.run_id"] == best_id
    assert version.tags["mnistlab.metric"] == "val/acc"
    val = history(client, best_id, "val/acc")  # what it registered: the last epoch's weights
    last = (version.tags["mnistlab.weights"], int(version.tags["mnistlab.epoch"]))
    assert last == ("last", val[-1][0])
    assert float(version.tags["mnistlab.metric_value"]) == val[-1][1]
    assert f"its last weights, epoch {val[-1][0]} (val/acc {val[-1][1]:.4f})" in result.stdout
    assert version.tags["mnistlab.sweep_parent_run_id"] == parent.info.run_id
    best = next(r for r in children if r.info.run_id == best_id)
    top = max(val, key=lambda point: point[1])  # the best epoch's weights, by name
    chosen = module("promote", [best_id, "--name", "mnist-synth", "--alias", "best", "--weights",
                                "best"], cwd)  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    assert f"its best weights, epoch {top[0]} (val/acc {top[1]:.4f})" in chosen.stdout
    second = client.get_model_version_by_alias("mnist-synth", "best")
    assert float(second.tags["mnistlab.metric_value"]) == top[1] and str(second.version) == "2"
    mlflow.set_registry_uri(client.tracking_uri)
    registered = mlflow.pytorch.load_model("models:/mnist-synth@best").state_dict()
    kept = torch.load(Path(best.data.tags["hydra.output_dir"]) / "best.pth", weights_only=True)
    assert all(torch.equal(registered[k], v) for k, v in kept["model"].items())
    again = module("evaluate", ["models:/mnist-synth@best", "--output", "best.png"], cwd)
    assert again.returncode == 0 and f"run {best_id}" in again.stdout, again.stderr[-2000:]
    evaluated = module("evaluate", ["models:/mnist-synth@champion", "--output", "cm.png"], cwd)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"run {best_id}" in evaluated.stdout
    assert f"test/acc  {best.data.metrics['test/acc']:.4f}" in evaluated.stdout
    Image.new("L", (28, 28), 0).save(tmp_path / "img.png")
    predicted = module("predict", ["models:/mnist-synth@champion", str(tmp_path / "img.png")], cwd)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.startswith(f"{tmp_path / 'img.png'}: class ")


def test_unknown_models_and_runs_without_a_model_get_one_line(store):
    cwd, _, _, _, alone = store
    unknown = module("evaluate", ["models:/no-such-model@champion"], cwd)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert unknown.stderr.startswith("Error: models:/no-such-model@champion: no registered model")
    bare = module("promote", [alone.info.run_id, "--name", "mnist-synth"], cwd)
    assert bare.returncode == 2 and bare.stderr.strip().splitlines() == [
        f"Error: {alone.info.run_id}: the run has no MLflow model (trained with "
        "mlflow.log_model=false?); promote a run that logged one"
    ]
    nothing = module("promote", ["0" * 32, "--name", "mnist-synth"], cwd)
    assert nothing.returncode == 2 and nothing.stderr.startswith(f"Error: {'0' * 32}: no such")
