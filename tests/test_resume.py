"""Checkpoints and resume: a SIGKILL loses at most the epoch in progress, Ctrl-C and SIGTERM lose
nothing, and resuming into the same MLflow run ends exactly where an uninterrupted run ends."""

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_env, history, only_run, run_cli

RUN = ["data=synthetic", "data.train_size=30000", "epochs=3", "device=cpu", "train.log_every=50"]
LOGS = "outputs/*/*/train.log"
EPOCH_METRICS = ["train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"]


def logged_epochs(db: Path) -> int:
    """How many epochs' metrics the run in `db` has logged so far."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            row = con.execute("select count(*) from metrics where key='epoch_time_s'").fetchone()
        return row[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def wait_for_checkpoint(proc: subprocess.Popen, cwd: Path) -> None:
    """Wait until the run in `cwd` has written last.pth after epoch 1 (the store may have that
    epoch's metrics a moment before the checkpoint is on disk)."""
    deadline = time.monotonic() + 180
    while not list(cwd.glob("outputs/*/*/last.pth")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)


def stop_during_epoch_2(cwd: Path, sig: signal.Signals, run: list[str] = RUN) -> Path:
    """Start the run, send `sig` once epoch 1 is logged (so during epoch 2); its output dir."""
    env = cli_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *run], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while logged_epochs(cwd / "mlflow.db") < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "no epoch was logged"
            time.sleep(0.05)
        wait_for_checkpoint(proc, cwd)
        time.sleep(0.3)  # well inside epoch 2, which takes seconds
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    if sig != signal.SIGKILL:  # a clean stop: one line, the checkpoint named, no traceback
        assert proc.returncode == 130, stderr[-2000:]
        assert f"Stopped: received signal {sig.name}; checkpoint at epoch 2 step" in stderr
        assert "Traceback" not in stderr
    (run_dir,) = (cwd / "outputs").glob("*/*")
    return run_dir


def closed_by_watchdog(client, run_id: str, wait_s: float = 60):
    """The run once it is no longer RUNNING (its watchdog closes it after a SIGKILL)."""
    deadline = time.monotonic() + wait_s
    while (run := client.get_run(run_id)).info.status == "RUNNING":
        assert time.monotonic() < deadline, "the killed run was left RUNNING"
        time.sleep(0.2)
    return run


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The reference: the same run, never interrupted."""
    straight = tmp_path_factory.mktemp("straight")
    result = run_cli(RUN, cwd=straight)
    assert result.returncode == 0, result.stderr[-2000:]
    return only_run(f"sqlite:///{straight / 'mlflow.db'}")


SIGNALS = [signal.SIGKILL, signal.SIGINT, signal.SIGTERM]


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_stopped_mid_epoch_then_resumed_equals_an_uninterrupted_run(tmp_path, straight_run, sig):
    client_a, run_a = straight_run
    run_dir = stop_during_epoch_2(tmp_path, sig)
    state = torch.load(run_dir / "last.pth", weights_only=True)["state"]  # the TrainState
    assert state["epoch"] == 1
    client_b, stopped = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    if sig == signal.SIGKILL:  # no chance to save: epoch 2 so far is lost; the watchdog closes it
        stopped = closed_by_watchdog(client_b, stopped.info.run_id)
        assert state["step"] == 0 and stopped.info.status == "KILLED"
        assert f"python -m train resume={run_dir}" in stopped.data.tags["failure_reason"]
    else:  # Ctrl-C and SIGTERM save the steps of epoch 2 done so far, and close the run
        assert state["step"] >= 1 and stopped.info.status == "KILLED"
        assert sig.name in stopped.data.tags["failure_reason"]

    result = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client_b, run_b = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run_b.info.run_id == stopped.info.run_id and run_b.info.status == "FINISHED"
    assert "failure_reason" not in run_b.data.tags  # the stop it came back from is over
    assert run_b.data.params == run_a.data.params
    for key in EPOCH_METRICS:
        points = history(client_b, run_b.info.run_id, key)
        assert [s for s, _ in points] == [1, 2, 3], key  # no duplicate epoch points
        assert points == history(client_a, run_a.info.run_id, key), key
    steps = history(client_b, run_b.info.run_id, "train/step_loss")
    assert steps == history(client_a, run_a.info.run_id, "train/step_loss")
    weights_a = torch.load(Path(run_a.data.tags["hydra.output_dir"]) / "model.pth")
    weights_b = torch.load(run_dir / "model.pth")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_run_stopped_in_epoch_1_and_resumed_logging_more_ends_where_one_never_stopped(tmp_path):
    # a run that logs no MLflow model, stopped mid-epoch 1 and resumed by a command that logs
    # one, ends bit for bit where the run that was never stopped ends
    run = ["data=synthetic", "data.train_size=30000", "epochs=1", "device=cpu",
           "train.log_every=20", "mlflow.log_model=false"]  # fmt: skip
    (tmp_path / "straight").mkdir()
    straight = run_cli(run, cwd=tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *run], cwd=stopped, env=cli_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Step [    20 /" not in "".join(p.read_text() for p in stopped.glob(LOGS)):
            assert proc.poll() is None and time.monotonic() < deadline, "no step was logged"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "checkpoint at epoch 1 step" in stderr, stderr[-2000:]
    (run_dir,) = (stopped / "outputs").glob("*/*")
    resumed = run_cli([f"resume={run_dir}"], cwd=stopped)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (straight_dir,) = (tmp_path / "straight" / "outputs").glob("*/*")
    weights_a = torch.load(straight_dir / "model.pth")
    weights_b = torch.load(run_dir / "model.pth")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_resume_on_a_full_disk_is_told_to_free_space_and_keeps_its_checkpoint(tmp_path):
    # it writes where it wrote before: there is no other folder to point it to
    run_dir = stop_during_epoch_2(tmp_path, signal.SIGTERM)
    before = (run_dir / "last.pth").read_bytes()

    def file_size_limit() -> None:  # what a full disk does to the checkpoint's write
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, len(before) // 2))

    result = subprocess.run(
        [sys.executable, "-m", "train", f"resume={run_dir}"], cwd=tmp_path, env=cli_env(),
        capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: cannot write {run_dir / 'last.pth'} (")
    assert line.endswith("): free space on that disk; the earlier last.pth, if any, is intact")
    assert (run_dir / "last.pth").read_bytes() == before


def test_resuming_a_folder_that_a_live_run_is_using_is_refused(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *RUN, "epochs=20"], cwd=tmp_path, env=cli_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_checkpoint(proc, tmp_path)
        (run_dir,) = (tmp_path / "outputs").glob("*/*")
        result = run_cli([f"resume={run_dir}"], cwd=tmp_path)
        assert proc.poll() is None, "the run ended before the resume was tried"
        assert result.returncode == 2, result.stderr[-2000:]
        line = f"Error: resume={run_dir}: another process is using {run_dir} (process {proc.pid}"
        assert result.stderr.startswith(line) and len(result.stderr.splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "KILLED"  # untouched by the refused resume: stopped by SIGTERM


def test_a_run_killed_with_its_watchdog_is_closed_by_the_next_run(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *RUN, "epochs=20"], cwd=tmp_path, env=cli_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:  # like a container killed whole: the process and its watchdog die together
        wait_for_checkpoint(proc, tmp_path)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        cmdlines = {int(pid): Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
        (watchdog,) = [pid for pid, cmd in cmdlines.items() if b"mnistlab.tracking.watchdog" in cmd]
        os.kill(watchdog, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    client, killed = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert killed.info.status == "RUNNING"  # nobody was left to close it

    result = run_cli(["data=synthetic", "epochs=1", "device=cpu", "train.plots=false",
                      "mlflow.log_model=false"], cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    closed = client.get_run(killed.info.run_id)
    assert closed.info.status == "KILLED"
    reason = closed.data.tags["failure_reason"]
    assert "found by a later run" in reason and "python -m train resume=" in reason


def test_checkpoints_are_kept_and_uploaded_and_resume_by_run_id_works(tmp_path):
    args = ["data=synthetic", "epochs=2", "device=cpu", "checkpoint.log_to_mlflow=true"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_dir = Path(run.data.tags["hydra.output_dir"])
    last, best = (torch.load(run_dir / n, weights_only=True) for n in ("last.pth", "best.pth"))
    assert last["state"]["epoch"] == 2 and last["run_id"] == run.info.run_id
    assert last["config"]["epochs"] == 2 and set(last) >= {"model", "optimizer", "rng"}
    assert best["state"]["best_val_acc"] == max(
        v for _, v in history(client, run.info.run_id, "val/acc")
    )
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert uploaded == {"checkpoints/last.pth", "checkpoints/best.pth"}
    # a finished run resumed by its id has nothing left to do, and stays one whole run
    result = run_cli([f"resume={run.info.run_id}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client, again = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert again.info.status == "FINISHED"
    assert [s for s, _ in history(client, run.info.run_id, "val/acc")] == [1, 2]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """The output dir of a finished 1-epoch run, for tests to copy and damage."""
    cwd = tmp_path_factory.mktemp("one_epoch")
    assert run_cli(["data=synthetic", "epochs=1", "device=cpu"], cwd=cwd).returncode == 0
    (run_dir,) = (cwd / "outputs").glob("*/*")
    return run_dir


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: (d / "last.pth").write_bytes((d / "last.pth").read_bytes()[:5000]),
            "not a readable checkpoint (truncated or corrupt?",
        ),
        (
            lambda d: (d / "model.pth").replace(d / "last.pth"),
            "not an mnistlab training checkpoint",
        ),
        (lambda d: None, "does not fit the configured model"),
        (lambda d: (d / "last.pth").unlink(), "no last.pth in that folder"),
    ],
    ids=["truncated", "weights-only", "other-architecture", "missing"],
)
def test_bad_checkpoints_give_one_line_and_exit_2(tmp_path, one_epoch_run, make, message):
    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    make(run_dir)
    args = [f"resume={run_dir}"]
    if message.startswith("does not fit"):  # a CNN's weights in the MLP's checkpoint
        state = torch.load(run_dir / "last.pth", weights_only=True)
        state["model"] = {"features.0.weight": torch.zeros(32, 1, 3, 3)}
        torch.save(state, run_dir / "last.pth")
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("Error: resume") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_unknown_run_id_gives_one_line_and_exit_2(one_epoch_run):
    store_folder = one_epoch_run.parents[2]  # a store with a run, but not that one
    result = run_cli(["resume=0123456789abcdef0123456789abcdef"], cwd=store_folder)
    assert result.returncode == 2
    assert (
        "resume=0123456789abcdef0123456789abcdef: no such checkpoint file, run output dir or "
        "MLflow run" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1


def test_rerunning_a_killed_sweep_skips_finished_jobs_and_resumes_the_dead_one(tmp_path):
    sweep = ["-m", "data=synthetic", "data.train_size=30000", "epochs=3", "device=cpu",
             "seed=0,1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    env = cli_env()
    db = tmp_path / "mlflow.db"
    proc = subprocess.Popen([sys.executable, "-m", "train", *sweep], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:  # job 0 has 3 epochs logged and job 1 one epoch: kill during job 1's epoch 2
        deadline = time.monotonic() + 300
        while logged_epochs(db) < 4 or not (tmp_path / "sweep" / "1" / "last.pth").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    # the watchdogs close the parent and job 1, killed outright; job 0 had finished
    killed = client.search_runs(["1"])
    first = {r.info.run_id: closed_by_watchdog(client, r.info.run_id) for r in killed}
    assert sorted(r.info.status for r in first.values()) == ["FINISHED", "KILLED", "KILLED"]
    (parent,) = [r for r in first.values() if "sweep.dir" in r.data.tags]
    assert f"hydra.sweep.dir={tmp_path / 'sweep'}" in parent.data.tags["failure_reason"]

    result = run_cli(sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Job already FINISHED" in result.stdout + result.stderr
    runs = client.search_runs(["1"])
    assert len(runs) == 4  # the same parent, jobs 0 and 1 in their old runs, job 2 new
    assert set(first) < {r.info.run_id for r in runs}
    assert all(r.info.status == "FINISHED" for r in runs)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    for child in children:
        assert [s for s, _ in history(client, child.info.run_id, "val/acc")] == [1, 2, 3]

    result = run_cli([*sweep, "force=true"], cwd=tmp_path)
    assert result.returncode == 0 and len(client.search_runs(["1"])) == 7


# every option that keeps state across steps or draws random numbers
EXTRAS = ["scheduler=onecycle", "lr=3e-3", "train.ema_decay=0.9", "data.augment=affine",
          "train.grad_clip_norm=1.0", "train.label_smoothing=0.1"]  # fmt: skip


def test_resume_is_bit_exact_with_a_schedule_ema_augmentation_and_clipping(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    result = run_cli([*RUN, *EXTRAS], cwd=straight)
    assert result.returncode == 0, result.stderr[-2000:]
    client_a, run_a = only_run(f"sqlite:///{straight / 'mlflow.db'}")
    run_dir = stop_during_epoch_2(tmp_path, signal.SIGINT, [*RUN, *EXTRAS])
    assert torch.load(run_dir / "last.pth", weights_only=True)["state"]["step"] >= 1
    result = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client_b, run_b = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for key in [*EPOCH_METRICS, "train/lr", "train/step_loss", "train/step_lr"]:
        points = history(client_b, run_b.info.run_id, key)
        assert points and points == history(client_a, run_a.info.run_id, key), key
    weights_a = torch.load(Path(run_a.data.tags["hydra.output_dir"]) / "model.pth")
    weights_b = torch.load(run_dir / "model.pth")  # the moving averages
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
