"""Scale-out on existing engines: a shared `mlflow server` (mlflow=server), torchrun DDP, Ray."""

import filecmp
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient

from conftest import cli_env, history, mlflow_server, only_run, run_cli
from mnistlab.tracking import flatten

SYNTH = ["data=synthetic", "device=cpu", "epochs=2"]
EPOCH_KEYS = ["train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"]


def test_a_parallel_sweep_against_a_real_tracking_server_arrives_whole(tmp_path):
    with mlflow_server(tmp_path / "server") as url:
        args = ["-m", *SYNTH, "mlflow=server", "lr=1e-3,1e-2", "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2", "sweep_name=on-server"]  # fmt: skip
        result = run_cli(args, cwd=tmp_path, MLFLOW_TRACKING_URI=url)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not (tmp_path / "mlruns").exists()  # everything went to the server

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("mnistlab")
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the proxy
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if r.info.run_name == "on-server"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(runs) == 3 and len(children) == 2
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert sorted(r.data.params["lr"] for r in children) == ["0.001", "0.01"]

        for child in children:
            run_id, local = child.info.run_id, Path(child.data.tags["hydra.output_dir"])
            for key in [*EPOCH_KEYS, "epoch_time_s"]:
                assert [s for s, _ in history(client, run_id, key)] == [1, 2], key
            config = yaml.safe_load((local / "config.yaml").read_text())
            del config["resume"], config["repeats"], config["mlflow"]["tracking_uri"]  # by design
            raw = flatten(yaml.safe_load((local / ".hydra" / "config.yaml").read_text()))
            aliases = {k for k, v in raw.items() if re.fullmatch(r"\$\{[\w.]+\}", v)}
            expected = {k: v for k, v in flatten(config).items() if k not in aliases}
            assert "optimizer.lr" in aliases and "optimizer.lr" not in child.data.params
            assert {k: child.data.params.get(k) for k in expected} == expected
            down = Path(client.download_artifacts(run_id, "", str(tmp_path / "down" / run_id)))
            for name in ["model.pth", "config.yaml", "data.json", "plots/confusion_matrix.png",
                         "plots/learning_curves.png", ".hydra/overrides.yaml"]:  # fmt: skip
                assert filecmp.cmp(down / name, local / name, shallow=False), name
            # the log is uploaded last, before its closing lines are written
            assert (local / "train.log").read_text().startswith((down / "train.log").read_text())
            # the logged PyTorch model too (models:/ URIs resolve against the global store)
            previous = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(url)
            try:
                model = mlflow.artifacts.download_artifacts(
                    child.data.tags["model_uri"], dst_path=str(tmp_path / "models" / run_id)
                )
            finally:
                mlflow.set_tracking_uri(previous)
            assert (Path(model) / "MLmodel").is_file()
        summary = client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path))
        assert len(Path(summary).read_text().splitlines()) == 3


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m train ARGS`, exactly as a user types it."""
    command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "-m", "train", *args], cwd=cwd, env=cli_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_torchrun_trains_on_2_processes_and_logs_one_run_like_one_process(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    ddp.mkdir(), single.mkdir()
    result = torchrun(["epochs=1", "data=synthetic", "device=cpu"], ddp)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(f"sqlite:///{ddp / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert run.data.tags["distributed.world_size"] == "2" and run.data.params["batch_size"] == "64"
    assert len(list(ddp.glob("outputs/*/*"))) == 1  # rank 1 wrote nothing of its own
    assert (Path(run.data.tags["hydra.output_dir"]) / "last.pth").is_file()

    # 2 ranks x 64 per step is one step over the same 128 samples as 1 process at batch 128
    result = run_cli(["epochs=1", "data=synthetic", "device=cpu", "batch_size=128"], single)
    assert result.returncode == 0, result.stderr[-3000:]
    _, alone = only_run(f"sqlite:///{single / 'mlflow.db'}")
    for key in ["train/loss", "val/acc", "test/acc"]:
        assert abs(run.data.metrics[key] - alone.data.metrics[key]) < 2e-3, key
    assert run.data.metrics["test/acc"] > 0.8


def test_a_sweep_runs_as_tasks_on_a_local_ray_instance(tmp_path):
    args = ["-m", "data=synthetic", "device=cpu", "epochs=1", "lr=1e-3,1e-2", "sweep_name=on-ray",
            "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
            "+hydra.launcher.ray.init.include_dashboard=false"]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    why = "".join(mark.read_text() for mark in tmp_path.rglob("FAILED"))  # a job's reason
    assert result.returncode == 0, why + result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "on-ray"]
    assert parent.data.tags["sweep.launcher"].endswith("RayLauncher")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["lr"] for r in children) == ["0.001", "0.01"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.metrics["test/acc"] > 0.8 for r in children)
    assert len({r.data.tags["hydra.output_dir"] for r in children}) == 2
