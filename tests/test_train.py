"""End-to-end runs on synthetic data, through the CLI and the Python function, checked in MLflow."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf

from conftest import DATA_ROOT, history, only_run, run_cli
from mnistlab.config import compose
from mnistlab.errors import NonFiniteLossError
from mnistlab.loop import evaluate
from mnistlab.parts import build_part
from mnistlab.recipe import train

EPOCH_METRICS = [
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "test/loss",
    "test/acc",
    "epoch_time_s",
]
FAST = ["data=synthetic", "epochs=2", "train.log_every=10", "device=cpu"]


def reevaluate(client: MlflowClient, run_id: str, dst: Path) -> float:
    """Rebuild data and model from the run's own config.yaml and model.pth; return test accuracy."""
    cfg = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", str(dst)))
    data = build_part(cfg.data, "data", seed=cfg.seed)
    model = build_part(cfg.model, "model", in_shape=data.in_shape, num_classes=data.num_classes)
    model.load_state_dict(torch.load(client.download_artifacts(run_id, "model.pth", str(dst))))
    return evaluate(model, data, data.test, 1000)["acc"]


def check_record(client: MlflowClient, run, epochs: int, tmp_path: Path) -> None:
    """The MLflow record the foundation issue promises, for a finished synthetic MLP run."""
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["lr"] == "0.001" and params["batch_size"] == "64"
    assert params["epochs"] == str(epochs) and params["seed"] == "0"
    assert params["model.hidden_sizes"] == "[512, 512]"
    assert "optimizer.lr" not in params  # ${lr}: logged once, as lr
    assert params["model._target_"] == "mnistlab.models.MLP"
    assert (params["model"], params["optimizer"], params["data"], params["device"]) == (
        "mlp",
        "adam",
        "synthetic",
        "cpu",
    )
    for key in EPOCH_METRICS:
        assert [s for s, _ in history(client, run.info.run_id, key)] == list(range(1, epochs + 1))
    steps_per_epoch = -(-2500 // 64)
    step_losses = history(client, run.info.run_id, "train/step_loss")
    assert [s for s, _ in step_losses] == [
        e * steps_per_epoch + i for e in range(epochs) for i in range(10, steps_per_epoch + 1, 10)
    ]
    assert all(v > 0 for _, v in step_losses)
    assert 0 < run.data.metrics["epoch_time_s"] < 60
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pth", "config.yaml", ".hydra"} <= artifacts
    plots = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "plots")}
    assert set(plots) == {f"plots/{name}.png" for name in ("learning_curves", "confusion_matrix",
                          "per_class_accuracy", "misclassified")}  # fmt: skip
    for name in plots:
        png = Path(client.download_artifacts(run.info.run_id, name, str(tmp_path)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert ".hydra/overrides.yaml" in hydra_files
    assert run.data.tags["device"] == "cpu"
    assert "mlflow.parentRunId" not in run.data.tags  # a single run is a top-level run
    assert Path(run.data.tags["hydra.output_dir"]).is_dir()
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    logged = run.data.metrics["test/acc"]
    assert logged > 0.8
    assert reevaluate(client, run.info.run_id, tmp_path) == pytest.approx(logged, abs=1e-9)


def test_cli_run_records_everything_in_the_cwd_store(tmp_path):
    result = run_cli([*FAST, "model.hidden_sizes=[512,512]"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Epoch [  1 /   2] Step [    10 /     40] Loss:" in log  # the tutorial's line
    assert all(line.startswith("[20") for line in log.splitlines()), log  # no library's notes
    db = tmp_path / "mlflow.db"
    assert db.exists() and (tmp_path / "outputs").is_dir()
    client, run = only_run(f"sqlite:///{db}")
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())
    check_record(client, run, epochs=2, tmp_path=tmp_path)
    assert run.data.tags["hydra.overrides"].startswith("data=synthetic epochs=2")
    out_dir = Path(run.data.tags["hydra.output_dir"]).name
    assert run.info.run_name == f"mlp-adam-synthetic-{out_dir}"  # not MLflow's seeded random name
    assert Path(run.data.tags["hydra.output_dir"]).parent.parent == tmp_path / "outputs"


def test_plain_mlflow_finds_the_runs_and_an_older_mlruns_store_is_moved_once(tmp_path):
    quick = [*FAST, "epochs=1", "mlflow.log_model=false", "train.plots=false"]
    old = run_cli([*quick, "mlflow.tracking_uri=sqlite:///mlruns/mlflow.db"], cwd=tmp_path)
    assert old.returncode == 0, old.stderr[-3000:]
    with contextlib.closing(sqlite3.connect(tmp_path / "mlruns" / "mlflow.db")) as con:
        (first,) = [row[0] for row in con.execute("SELECT run_uuid FROM runs")]  # nothing kept open
    plain = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    subprocess.run(
        [sys.executable, "-c", "import mlflow; mlflow.search_experiments()"],
        cwd=tmp_path,
        env=plain,
        check=True,
    )  # plain MLflow: a stray, empty mlflow.db
    new = run_cli(quick, cwd=tmp_path)
    assert new.returncode == 0, new.stderr[-3000:]
    assert new.stderr.count("Moved the store") == 1
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()
    assert len(list(tmp_path.glob("mlflow.db.before-*"))) == 1  # the stray one, kept aside
    again = run_cli(quick, cwd=tmp_path)
    assert again.returncode == 0 and "Moved the store" not in again.stderr
    found = subprocess.run(  # MLflow's own defaults, in the launch folder: no URI anywhere
        [sys.executable, "-c", "import mlflow; e = mlflow.get_experiment_by_name('mnistlab'); "
         "print(e.tags['mlflow.experimentKind']); "
         "print(*mlflow.search_runs([e.experiment_id], output_format='list'), sep='\\n')"],
        cwd=tmp_path, env=plain, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert found.splitlines()[0] == "custom_model_development"
    assert found.count("<Run: ") == 3 and first in found
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.list_artifacts(first)  # the old run's artifacts, where they were


def test_python_function_gives_the_same_record_and_returns_best_val_acc(tmp_path, store):
    cfg = compose([*FAST, f"mlflow.tracking_uri={store}"])
    best = train(cfg, output_dir=tmp_path / "out")
    client, run = only_run(store)
    check_record(client, run, epochs=2, tmp_path=tmp_path)
    assert best == max(v for _, v in history(client, run.info.run_id, "val/acc"))
    assert (tmp_path / "out" / "model.pth").exists()
    hydra_dir = tmp_path / "out" / ".hydra"  # written by the run, as Hydra's CLI writes them
    assert sorted(p.name for p in hydra_dir.iterdir()) == ["config.yaml", "hydra.yaml",
                                                           "overrides.yaml"]  # fmt: skip
    overrides = [*FAST, f"mlflow.tracking_uri={store}"]
    assert list(OmegaConf.load(hydra_dir / "overrides.yaml")) == overrides
    saved = OmegaConf.load(hydra_dir / "config.yaml")
    assert (saved.lr, saved.epochs, saved.model.hidden_sizes) == (cfg.lr, 2, cfg.model.hidden_sizes)


def test_mlflow_tracking_uri_env_var_picks_the_store(tmp_path, store):
    result = run_cli([*FAST, "epochs=1"], cwd=tmp_path, MLFLOW_TRACKING_URI=store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "mlruns").exists()
    assert only_run(store)[1].info.status == "FINISHED"


def test_same_seed_reproduces_exactly_on_cpu_and_another_seed_differs(tmp_path, store):
    def run(seed: int, name: str):
        train(
            compose([*FAST, f"seed={seed}", f"mlflow.tracking_uri={store}"]),
            output_dir=tmp_path / name,
        )
        weights = torch.load(tmp_path / name / "model.pth")
        return weights

    first, again, other = run(0, "a"), run(0, "b"), run(1, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["linear_relu_stack.0.weight"], other["linear_relu_stack.0.weight"])
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs(
        [client.get_experiment_by_name("mnistlab").experiment_id],
        order_by=["attributes.start_time ASC"],
    )
    curves = [[v for _, v in history(client, r.info.run_id, "train/step_loss")] for r in runs]
    assert curves[0] == curves[1] != curves[2]


def test_exploding_loss_fails_the_run_with_the_reason(tmp_path, store):
    cfg = compose([*FAST, "optimizer=sgd", "lr=1e6", f"mlflow.tracking_uri={store}"])
    with pytest.raises(NonFiniteLossError, match="train loss is (nan|inf)"):
        train(cfg, output_dir=tmp_path / "out")
    _, run = only_run(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("NonFiniteLossError: train loss is")


def test_cli_failure_exits_non_zero_and_marks_the_run_failed(tmp_path):
    result = run_cli([*FAST, "optimizer=sgd", "lr=1e6"], cwd=tmp_path)
    assert result.returncode != 0
    assert "train loss is" in result.stderr
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED"


def test_sigterm_ends_the_run_as_killed_not_running(tmp_path):
    db = tmp_path / "mlflow.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", "data=synthetic", "epochs=1000", "device=cpu"],
        cwd=tmp_path,
        env={"MNISTLAB_DATA": str(DATA_ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the run has logged its first epoch
            if db.exists():
                with sqlite3.connect(db) as con:
                    try:
                        if con.execute("select count(*) from metrics").fetchone()[0]:
                            break
                    except sqlite3.OperationalError:
                        pass
            time.sleep(0.2)
        else:
            pytest.fail("the run never logged a metric")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    _, run = only_run(f"sqlite:///{db}")
    assert run.info.status == "KILLED", stderr[-2000:]
    assert "SIGTERM" in run.data.tags["failure_reason"]


def test_passwords_in_store_uris_are_never_shown():
    from mnistlab.tracking import redact

    assert redact("postgresql://bob:s3cr3t@db:5432/mlflow") == "postgresql://bob:***@db:5432/mlflow"
    assert (
        redact("a=1 mlflow.tracking_uri=http://u:p@h:5000")
        == "a=1 mlflow.tracking_uri=http://u:***@h:5000"
    )
    assert redact("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"


USER_MODEL = '''
from typing import Annotated

from torch import nn

from mnistlab.options import Check


class Tiny(nn.Module):
    """A user's own model, outside the package."""

    def __init__(
        self, in_shape, num_classes, width: Annotated[int, Check(lambda v: v >= 1, "a width >= 1")]
    ):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, width), nn.ReLU(),
                                 nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)
'''


def test_a_users_own_model_in_their_own_folder_trains_and_is_checked_by_its_signature(tmp_path):
    (tmp_path / "my_models.py").write_text(USER_MODEL)
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "tiny.yaml").write_text(
        "_target_: my_models.Tiny  # my class\nwidth: 32  # hidden units\n"
    )
    args = ["--config-dir", "my_conf", "model=tiny", *FAST, "epochs=1"]
    result = run_cli(args, cwd=tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.data.params["model.width"] == "32"
    assert "model_uri" in run.data.tags  # its MLflow model is logged too
    for bad, message in [
        ("model.width=abc", "Error: model.width: Value 'abc' of type 'str' could not be converted"),
        ("model.width=0", "Error: model.width=0 is invalid: use a width >= 1"),
        ("+model.wdth=3", "Error: model.wdth is not a known key: did you mean model.width?"),
    ]:
        result = run_cli([*args, bad], cwd=tmp_path, PYTHONPATH=str(tmp_path))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (
            result.stderr
        )
        assert result.stderr.startswith(message), result.stderr[-2000:]
    assert only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")  # no run for the mistakes


def test_relative_paths_mean_the_launch_folder_with_hydra_job_chdir(tmp_path):
    chdir = [*FAST, "epochs=1", "hydra.job.chdir=true"]
    result = run_cli(chdir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")  # not in the run dir
    run_dir = Path(run.data.tags["hydra.output_dir"])
    assert run_dir.parent.parent == tmp_path / "outputs" and not (run_dir / "mlruns").exists()
    relative = run_dir.relative_to(tmp_path)  # resume= of a relative path, from the job's dir
    result = run_cli([f"resume={relative}", "hydra.job.chdir=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")[1].info.status == "FINISHED"


def test_the_record_is_complete_when_the_command_returns(tmp_path):
    # every part of the record is in the store once the command has returned: nothing is left behind
    result = run_cli([*FAST, "seed=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.pth", "config.yaml", "data.json", "plots", ".hydra", "train.log"} <= artifacts
    log = Path(client.download_artifacts(run_id, "train.log", str(tmp_path))).read_text()
    assert "Epoch 2/2: " in log
    inputs = run.inputs.dataset_inputs
    contexts = {t.value for d in inputs for t in d.tags if t.key.endswith("context")}
    assert contexts == {"train", "val", "test"}
    check_model(run, tmp_path)
    # every epoch trains on torch's default threads
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert run.data.tags["torch.threads"] == default
    journal = Path(run.data.tags["hydra.output_dir"]) / "metrics.jsonl"
    assert [json.loads(line)["epoch"] for line in journal.read_text().splitlines()] == [1, 2]


def check_model(run, tmp_path: Path) -> None:
    """The run's MLflow model holds the weights of its model.pth; nothing was left behind."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exported = mlflow.pytorch.load_model(run.data.tags["model_uri"])
    output_dir = Path(run.data.tags["hydra.output_dir"])
    saved = torch.load(output_dir / "model.pth")
    assert all(torch.equal(saved[k], v) for k, v in exported.state_dict().items())


def test_what_is_logged_never_changes_what_is_trained(tmp_path):
    # the same config and seed, with the MLflow model, the plots and the system metrics logged
    # or not: the same weights and the same metrics every epoch, bit for bit
    outputs = {}
    for name, logged in [("all", "true"), ("none", "false")]:
        (tmp_path / name).mkdir()
        args = [*FAST, "seed=3", f"mlflow.log_model={logged}", f"train.plots={logged}",
                f"mlflow.system_metrics={logged}"]  # fmt: skip
        result = run_cli(args, cwd=tmp_path / name)
        assert result.returncode == 0, result.stderr[-3000:]
        _, run = only_run(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        assert ("model_uri" in run.data.tags) == (logged == "true")
        outputs[name] = Path(run.data.tags["hydra.output_dir"])
    weights = {name: torch.load(out / "model.pth") for name, out in outputs.items()}
    assert weights["all"].keys() == weights["none"].keys()
    assert all(torch.equal(weights["all"][k], weights["none"][k]) for k in weights["all"])
    timing = ("epoch_time_s", "train/samples_per_s")
    epochs = {
        name: [{k: v for k, v in json.loads(line)["metrics"].items() if k not in timing}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
        for name, out in outputs.items()
    }  # fmt: skip
    assert len(epochs["all"]) == 2 and epochs["all"] == epochs["none"]
    assert (outputs["all"] / "plots").is_dir() and not (outputs["none"] / "plots").exists()


def test_a_deleted_experiment_is_one_line_before_any_training(tmp_path):
    db = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(db)
    client.delete_experiment(client.create_experiment("gone"))
    result = run_cli(
        [*FAST, "epochs=30", f"mlflow.tracking_uri={db}", "mlflow.experiment=gone"], cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: mlflow.experiment=gone: that experiment is deleted in ")
    assert "Traceback" not in result.stderr
    assert "Epoch 1/30" not in result.stdout + result.stderr  # refused before training
    assert len(client.search_runs([client.get_experiment_by_name("gone").experiment_id])) == 0
