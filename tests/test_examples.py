"""examples/: a user's own model and dataset in their own folder, trained and swept over their
own keys through `--config-dir`, as the README's "Bring your own model and data" shows."""

from conftest import REPO, only_run, run_cli

OWN = ["--config-dir", str(REPO / "examples" / "conf"), "model=wide_mlp", "data=stripes"]
ENV = {"PYTHONPATH": str(REPO / "examples")}


def test_your_own_model_and_data_train_sweep_and_are_type_checked(tmp_path):
    result = run_cli([*OWN, "epochs=2", "device=cpu"], cwd=tmp_path, **ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.data.params["model"] == "wide_mlp" and run.data.params["model.width"] == "256"
    assert run.data.metrics["test/acc"] > 0.9
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    args = ["-m", *OWN, "model.width=16,64", "epochs=1", "device=cpu", "mlflow.log_model=false"]
    result = run_cli(args, cwd=sweep, **ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    client, parent = only_run_parent(sweep)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.params["model.width"] for r in children) == ["16", "64"]
    result = run_cli([*OWN, "model.width=wide"], cwd=tmp_path, **ENV)
    assert result.returncode == 2 and result.stderr.startswith(
        "Error: model.width: Value 'wide' of type 'str' could not be converted to Integer"
    ), result.stderr


def only_run_parent(cwd):
    """(client, the sweep's parent run) of the store in `cwd`."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parent
