"""Real Hydra multiruns through the CLI, each against a fresh SQLite store in a temp dir."""

import csv
import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from conftest import cli_env, history, run_cli

FAST = ["data=synthetic", "epochs=2", "device=cpu"]


def sweep_record(cwd: Path):
    """(client, parent run, child runs by job number) of the one sweep in cwd's store."""
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnistlab")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    parent = parents[0]
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    by_job = {int(r.data.tags["sweep.job_num"]): r for r in children}
    assert len(by_job) == len(children)
    return client, parent, by_job


def summary_rows(client: MlflowClient, parent, tmp_path: Path) -> list[dict]:
    """The parent's summary.csv, downloaded from its artifacts; also checks summary.png."""
    png = Path(client.download_artifacts(parent.info.run_id, "summary.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    path = client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path))
    with open(path) as f:
        return list(csv.DictReader(f))


def check_best(client: MlflowClient, parent, children: dict) -> None:
    """best/val_acc, best/test_acc and best_run_id agree with the finished children."""
    finished = [r for r in children.values() if r.info.status == "FINISHED"]
    best_val = {
        r.info.run_id: max(v for _, v in history(client, r.info.run_id, "val/acc"))
        for r in finished
    }
    best_id = max(best_val, key=best_val.get)
    assert parent.data.tags["best_run_id"] == best_id
    assert parent.data.metrics["best/val_acc"] == best_val[best_id]
    best = next(r for r in finished if r.info.run_id == best_id)
    assert parent.data.metrics["best/test_acc"] == best.data.metrics["test/acc"]


def test_parallel_2x2_grid_with_joblib_is_one_parent_with_four_children(tmp_path):
    args = [*FAST, "lr=1e-4,1e-3", "batch_size=32,64", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", "sweep_name=grid"]  # fmt: skip
    result = run_cli(["-m", *args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "leaked semaphore" not in output and "Traceback" not in output  # workers exit cleanly
    assert len(list(tmp_path.glob("multirun/*/*/*/train.log"))) == 4
    client, parent, children = sweep_record(tmp_path)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "grid"
    tags = parent.data.tags
    assert tags["sweep.n_jobs"] == "4" and tags["sweep.n_failed"] == "0"
    assert Path(tags["sweep.dir"]).is_dir() and Path(tags["sweep.dir"]).is_relative_to(tmp_path)
    assert tags["sweep.command"] == "python -m train -m " + " ".join(args)
    assert sorted(r.info.run_name for r in children.values()) == [
        "batch_size=32,lr=0.0001",
        "batch_size=32,lr=0.001",
        "batch_size=64,lr=0.0001",
        "batch_size=64,lr=0.001",
    ]
    for num, run in children.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["torch.threads"] == "1"  # two jobs share this machine's cores
        for key in ("lr", "batch_size"):
            assert f"{key}={run.data.params[key]}" in run.data.tags["sweep.overrides"].split()
        assert [s for s, _ in history(client, run.info.run_id, "test/acc")] == [1, 2]
        assert Path(run.data.tags["hydra.output_dir"]).name == str(num)
    check_best(client, parent, children)
    rows = summary_rows(client, parent, tmp_path)
    assert [r["status"] for r in rows] == ["FINISHED"] * 4
    assert {r["run_id"] for r in rows} == {r.info.run_id for r in children.values()}
    path = client.download_artifacts(parent.info.run_id, "summary_by_config.csv", str(tmp_path))
    with open(path) as f:
        configs = list(csv.DictReader(f))  # one seed each: a config per job, n = 1
    assert sorted((c["batch_size"], c["lr"]) for c in configs) == [
        ("32", "0.0001"), ("32", "0.001"), ("64", "0.0001"), ("64", "0.001")
    ]  # fmt: skip
    assert {c["n"] for c in configs} == {"1"} and {c["val_acc_std"] for c in configs} == {"nan"}
    assert configs[0]["best_run_id"] == parent.data.tags["best_run_id"]  # best mean first
    assert len({c["config_digest"] for c in configs}) == 4


def test_joblib_jobs_share_the_cores_the_sweep_may_use_not_the_machines(tmp_path):
    # Pinned to one CPU (as taskset or SLURM's cpuset pins a job), a job joblib runs has that
    # one for its torch threads, whatever the machine's count.
    one_cpu = {min(os.sched_getaffinity(0))}
    args = ["-m", *FAST, "epochs=1", "train.plots=false", "seed=0",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=1"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "train", *args], cwd=tmp_path, env=cli_env(),
        capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: os.sched_setaffinity(0, one_cpu),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _, parent, children = sweep_record(tmp_path)
    assert parent.info.status == "FINISHED" and children[0].info.status == "FINISHED"
    assert children[0].data.tags["torch.threads"] == "1"


def test_a_sweep_of_fewer_jobs_than_joblib_workers_gives_each_job_more_cores(tmp_path):
    # one job, n_jobs=-1 (a worker per core): it trains on every core this command may use
    args = ["-m", *FAST, "epochs=1", "train.plots=false", "mlflow.log_model=false", "seed=0",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, _, children = sweep_record(tmp_path)
    assert children[0].data.tags["torch.threads"] == str(len(os.sched_getaffinity(0)))


def test_a_failing_job_fails_its_run_and_the_parent_but_not_the_other_jobs(tmp_path):
    result = run_cli(["-m", *FAST, "optimizer=sgd", "lr=1e-3,1e6,1e-2"], cwd=tmp_path)
    assert result.returncode == 1
    assert "1 of 3 sweep jobs failed" in result.stdout + result.stderr
    client, parent, children = sweep_record(tmp_path)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["sweep.n_failed"] == "1"
    assert [children[i].info.status for i in range(3)] == ["FINISHED", "FAILED", "FINISHED"]
    failed = children[1]
    assert failed.data.tags["failure_reason"].startswith("NonFiniteLossError: train loss is")
    trace = client.download_artifacts(failed.info.run_id, "traceback.txt", str(tmp_path))
    assert "Traceback (most recent call last)" in Path(trace).read_text()
    check_best(client, parent, children)
    rows = summary_rows(client, parent, tmp_path)
    assert [r["status"] for r in rows] == ["FINISHED", "FAILED", "FINISHED"]


def test_eight_parallel_jobs_on_a_fresh_store_all_finish_with_every_metric(tmp_path):
    args = ["-m", *FAST, "seed=0,1,2,3,4,5,6,7", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stdout + result.stderr
    client, parent, children = sweep_record(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 8
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert len(run.data.params) > 20
        for key in ("train/loss", "val/acc", "test/acc", "epoch_time_s"):
            assert len(history(client, run.info.run_id, key)) == 2


def test_submitit_local_jobs_attach_to_the_parent_and_take_repeats(tmp_path):
    args = ["hydra/launcher=submitit_local", *FAST, "lr=1e-2", "repeats=2"]  # repeats adds -m
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, parent, children = sweep_record(tmp_path)
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children.values()) == ["seed=0", "seed=1"]
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert len({r.data.tags["config_digest"] for r in children.values()}) == 1  # one config


def test_hydras_sweep_functions_pass_the_check_and_run_as_hydra_expands_them(tmp_path):
    # glob() once failed the check before Hydra started ("ConfigLoader is not set");
    # tests/test_sweep_grammar.py compares every grammar form with Hydra's own sweeper
    args = ["optimizer=glob(*,exclude=adamw)", "seed=range(1,2)", "batch_size=choice(64)"]
    result = run_cli(["-m", *args, *FAST, "epochs=1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, parent, children = sweep_record(tmp_path)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["optimizer"] for r in children.values()) == ["adam", "sgd"]
    (tmp_path / "bad").mkdir()
    bad = run_cli(["-m", "lr=interval(1e-4,1e-2)", *FAST], cwd=tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "Error: BasicSweeper does not support sweep type : INTERVAL_SWEEP"
    ], bad.stderr
