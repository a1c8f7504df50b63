"""Bad input and faults: one clear line, a non-zero exit, no traceback, no run left RUNNING, and
no metric lost when the tracking server goes away."""

import fcntl
import pickle
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from conftest import DATA_ROOT, cli_env, free_port, history, mlflow_server, run_cli
from mnistlab.cli import check_command_line
from mnistlab.errors import UserError, WriteError


def running_runs(cwd: Path) -> list[str]:
    """Ids of runs left RUNNING in the default store under `cwd` (none if there is no store)."""
    db = cwd / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return [r[0] for r in con.execute("select run_uuid from runs where status='RUNNING'")]
        except sqlite3.OperationalError:  # the store was never set up
            return []


SYNTH = ["data=synthetic", "device=cpu", "epochs=1"]
CANNOT_BUILD = ["model=cnn", "model.channels=[8,8,8,8,8]"]  # found in the job, as it builds


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["=1"], 2, "Error: Config group override must be a string or a list. Got int"),
        (["lr=inf"], 2, "Error: lr=inf is invalid: use a positive learning rate"),
        (["seed=-1"], 2, "Error: seed=-1 is invalid: use an integer from 0 to 4294967295"),
        (["model=cnn", "model.channels=[0]"], 2, "Error: model.channels=[0] is invalid"),
        (["model.dropout=1"], 2, "Error: model.dropout=1.0 is invalid: use a probability"),
        (["optimizer.betas=[0.9]"], 2, "Error: optimizer.betas=[0.9] is invalid"),
        (["optimizer=sgd", "optimizer.momentum=-1"], 2, "Error: optimizer.momentum=-1.0 is"),
        (["mlflow.experiment= "], 2, "Error: mlflow.experiment='' is invalid"),
        (["device.threads=0"], 2, "Error: device.threads=0 is invalid"),
        (["data=synthetic", "data.val_size=3000"], 2, "Error: data.val_size=3000 is invalid"),
        (["data.val_size=60000"], 2, "Error: data.val_size=60000 is invalid: use an integer"),
        (["device=cuda"], 2, "Error: device=cuda is unavailable"),
        (["device=mps"], 2, "Error: device=mps is unavailable"),
        (["hydra.run.dir=/proc/1/x"], 2, "Error: hydra.run.dir=/proc/1/x: cannot write"),
        (["hydra.run.dir=/etc/hostname/run"], 2, "Error: hydra.run.dir=/etc/hostname/run:"),
        (["-m", "hydra.sweep.dir=/proc/1/x", "lr=1e-3,1e-2"], 2, "Error: hydra.sweep.dir="),
        (
            ["mlflow.tracking_uri=sqlite:////proc/1/x/mlflow.db"],
            2,
            "Error: mlflow.tracking_uri=sqlite:////proc/1/x/mlflow.db: cannot write /proc/1/x",
        ),
        (["mlflow.tracking_uri=foo://bar"], 2, "Error: mlflow.tracking_uri=foo://bar: unknown"),
        (["mlflow.tracking_uri=/tmp"], 2, "Error: mlflow.tracking_uri=/tmp: MLflow 3 refuses a"),
        (
            ["mlflow.tracking_uri=postgresql://u:secret@127.0.0.1:9/db"],  # no driver installed
            2,
            "Error: mlflow.tracking_uri=postgresql://u:***@127.0.0.1:9/db: MLflow cannot open",
        ),
        (
            ["-m", "lr=1e-3,1e-2", "mlflow.tracking_uri=postgresql://u:secret@127.0.0.1:9/db"],
            2,
            "Error: mlflow.tracking_uri=postgresql://u:***@127.0.0.1:9/db: MLflow cannot open",
        ),
        (["resume=/nonexistent/last.pth"], 2, "Error: resume=/nonexistent/last.pth: no such"),
        (["resume=garbage"], 2, "Error: resume=garbage: no such checkpoint file, run output"),
        (["--foo"], 2, "Error: --foo is not a flag of python -m train: give settings as key="),
        (["-m", "lr=1e-3,1e-2", "--cfg", "job"], 2, "Error: -m does not combine with -c/--cfg/"),
        (
            ["batch_size=abc"],
            2,
            "Error: batch_size: Value 'abc' of type 'str' could not be "
            "converted to Integer; use an integer >= 1, e.g. batch_size=64",
        ),
        (
            ["model=cnn", "model.channels=-1"],
            2,
            "Error: model.channels: Invalid value assigned: "
            "int is not a ListConfig, list or tuple; use a list of channel counts >= 1",
        ),
        (
            ["model=cnn", "model.channels=[8,8,8,8,8]"],  # valid values, impossible for 28x28
            2,
            "Error: model.channels=[8,8,8,8,8]: 5 pooling blocks halve a 28x28 input to nothing",
        ),
        (["optimizer=sgd", "lr=1e6"], 1, "Error: train loss is"),  # the run exists, FAILED
    ],
)
def test_bad_input_gets_one_line_a_non_zero_exit_and_leaves_no_running_run(
    tmp_path, args, code, message
):
    result = run_cli([*SYNTH, *args] if "-m" not in args else [*args, *SYNTH], cwd=tmp_path)
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert "secret" not in result.stderr + result.stdout  # passwords in URIs are never shown
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]
    assert result.stderr.strip().endswith(errors[0])  # the last word is the one line
    if code == 2:  # a mistake found before training: that line alone, not even MLflow's logs
        assert result.stderr.strip() == errors[0]
        assert not (tmp_path / "outputs").exists()  # nor a run dir, nor its lock
    assert running_runs(tmp_path) == []


def test_truncated_dataset_files_are_named_unreadable_not_missing(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (DATA_ROOT / "MNIST" / "raw").glob("*ubyte"):
        (raw / source.name).write_bytes(source.read_bytes()[:1000])
    result = run_cli(["epochs=1", f"data.root={tmp_path / 'data'}"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: data.root={tmp_path / 'data'}: the MNIST files in ")
    assert "are unreadable" in result.stderr and running_runs(tmp_path) == []
    assert not (tmp_path / "outputs").exists()  # the job failed before training: no run dir


FETCH = "(or MNISTLAB_DATA) at the folder that holds {}/raw/, or create it "


@pytest.mark.parametrize(
    ("root", "args", "fix"),
    [  # a folder elsewhere (None), or one relative to the launch folder
        (None, [], FETCH.format("MNIST") + "to download into"),
        ("dta", ["data.download=false"], FETCH.format("MNIST") + "and add data.download=true "
                                                                 "to download into it"),
        (None, ["data=fashion_mnist"], FETCH.format("FashionMNIST") + "to download into"),
        ("dta", ["data=imagefolder"], "at the folder that holds train/<class>/ and test/<class>/"),
    ],
)  # fmt: skip
def test_a_data_root_that_does_not_exist_is_one_line_and_nothing_is_made(tmp_path, root, args, fix):
    here, typo = tmp_path / "here", tmp_path / "no_such_dir" / "data"
    here.mkdir()
    root = root or str(typo)
    result = run_cli(["epochs=1", f"data.root={root}", *args], cwd=here)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    folder = here / root if root == "dta" else typo
    assert result.stderr.strip() == (
        f"Error: data.root={root}: the folder {folder} does not exist; point data.root {fix}"
    ), result.stderr
    assert list(here.iterdir()) == [] and not typo.parent.exists()  # no data, run dir, store


def test_a_run_that_fails_before_its_mlflow_run_leaves_no_run_dir_and_one_after_keeps_it(
    tmp_path,
):
    # the model cannot be built: found in the job, after Hydra made the run dir and its lock
    result = run_cli([*SYNTH, *CANNOT_BUILD], cwd=tmp_path)
    assert result.returncode == 2 and list(tmp_path.iterdir()) == [], result.stderr[-2000:]
    result = run_cli([*SYNTH, "hydra.run.dir=runs/a", "resume=runs/nothing_here"], cwd=tmp_path)
    assert result.returncode == 2 and list(tmp_path.iterdir()) == [], result.stderr[-2000:]
    # a folder another process holds is never taken away, even bare
    held = tmp_path / "runs" / "held"
    held.mkdir(parents=True)
    with open(held / ".run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("1 training\n")
        lock.flush()
        result = run_cli([*SYNTH, f"hydra.run.dir={held}", *CANNOT_BUILD], cwd=tmp_path)
        assert result.returncode == 2 and "another process is using" in result.stderr
        assert (held / ".run.lock").exists() and (held / ".hydra").is_dir()
    # a run that failed once its MLflow run existed keeps the dir that run's record names
    result = run_cli([*SYNTH, "optimizer=sgd", "lr=1e6", "train.plots=false"], cwd=tmp_path)
    assert result.returncode == 1 and "train loss is" in result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert (run_dir / "train.log").exists()


def test_a_store_file_that_is_no_database_is_named_and_left_alone(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not sqlite " * 500)
    for args in (SYNTH, ["-m", *SYNTH, "seed=0,1"]):
        result = run_cli(args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip() == (
            f"Error: mlflow.tracking_uri=sqlite:///{db}: {db} is not a readable SQLite database "
            f"(file is not a database); move it aside (mv {db} {db}.bad) to start a new store, "
            "or point mlflow.tracking_uri elsewhere"
        )
    assert db.read_bytes() == b"not sqlite " * 500 and not (tmp_path / "outputs").exists()


def file_size_limit() -> None:
    """What a full disk does to a run's checkpoint: its write stops at 4 MiB."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 2**20, 4 * 2**20))


def test_a_full_disk_fails_the_run_in_one_line_and_leaves_no_partial_checkpoint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train", *SYNTH], cwd=tmp_path, env=cli_env(),
        capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit,
    )  # fmt: skip
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: cannot write {run_dir / 'last.pth'} ("), result.stderr[-2000:]
    assert "free space on that disk or point hydra.run.dir elsewhere" in line
    assert not list(run_dir.glob("*.pth*")) and not list(run_dir.glob(".*.tmp*"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("WriteError: cannot write")


def test_a_write_error_survives_pickling_whole():  # as a process pool hands errors back
    err = WriteError("/data/runs/last.pth", "No space left on device", True, "hydra.sweep.dir")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is WriteError and str(again) == str(err) == (
        "cannot write /data/runs/last.pth (No space left on device): free space on that disk "
        "or point hydra.sweep.dir elsewhere; the earlier last.pth, if any, is intact"
    )


def test_a_sweep_job_on_a_full_disk_fails_advising_to_move_the_sweeps_dir(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train", "-m", *SYNTH], cwd=tmp_path, env=cli_env(),
        capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "1 of 1 sweep jobs failed" in result.stdout + result.stderr
    (job_dir,) = (tmp_path / "multirun").glob("*/*/0")
    assert not list(job_dir.glob("*.pth*")) and not list(job_dir.glob(".*.tmp*"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    (job,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert job.info.status == "FAILED"
    reason = job.data.tags["failure_reason"]
    assert reason.startswith(f"WriteError: cannot write {job_dir.resolve() / 'last.pth'} (")
    assert reason.endswith("): free space on that disk or point hydra.sweep.dir elsewhere; "
                           "the earlier last.pth, if any, is intact")  # fmt: skip


def test_runs_started_together_in_one_folder_keep_their_own_outputs_and_runs(tmp_path):
    procs = [start_training(tmp_path, [*SYNTH, f"seed={seed}"]) for seed in (1, 2)]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    dirs = {r.data.tags["hydra.output_dir"] for r in runs}
    assert len(dirs) == 2 and all((Path(d) / "last.pth").is_file() for d in dirs)


def test_an_unreachable_tracking_server_is_answered_within_15_s(tmp_path):
    start = time.monotonic()
    result = run_cli([*SYNTH, f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}"], tmp_path)
    elapsed = time.monotonic() - start
    assert result.returncode == 2 and elapsed < 15, (elapsed, result.stderr[-2000:])
    assert result.stderr.startswith("Error: mlflow.tracking_uri=http://127.0.0.1:")
    assert "no MLflow server answers there" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "outputs").exists()


# Override strings a user could type: known and misspelt keys, group picks, Hydra's grammar
# (+, ~, ++, lists, sweeps, interpolations) and arbitrary text.
KEYS = ["lr", "batch_size", "epochs", "seed", "model", "optimizer", "data", "device",
        "model.hidden_sizes", "model.dropout", "optimizer.betas", "data.val_size", "data.root",
        "device.amp", "train.on_nan", "mlflow.experiment", "optimzer", "lr.x", "hydra.run.dir",
        "checkpoint", "resume"]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(
        [
            "mlp",
            "cnn",
            "adam",
            "sgd",
            "synthetic",
            "cpu",
            "null",
            "[]",
            "[1,2]",
            "1e-3",
            "-1",
            "0",
            "nan",
            "inf",
            "true",
            "${lr}",
            "${oc.env:NOPE}",
            "'quoted'",
            "a,b",
            "range(1,3)",
            "{a: 1}",
            "outputs/x",
        ]
    ),  # fmt: skip
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=12),
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(["", "+", "++", "~"]), st.sampled_from(KEYS), VALUES).map(
        lambda t: f"{t[0]}{t[1]}={t[2]}"
    ),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv=st.lists(OVERRIDE, max_size=4), multirun=st.booleans())
def test_no_override_string_makes_the_config_layer_raise_anything_but_one_line(argv, multirun):
    try:
        check_command_line((["-m"] if multirun else []) + argv)
    except UserError as err:
        assert str(err) and "\n" not in str(err).strip()


def start_training(cwd: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "train", *args], cwd=cwd, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def journal_lines(cwd: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in cwd.glob("outputs/*/*/metrics.jsonl"))


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training ended before {what}: {proc.stdout.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.1)


EPOCHS = 5
OUTAGE = ["data=synthetic", "data.train_size=40000", f"epochs={EPOCHS}", "device=cpu",
          "mlflow.log_model=false", "train.plots=false"]  # fmt: skip
EPOCH_KEYS = ["train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"]


def assert_every_epoch_arrived(url: str, checkpoints: bool = False) -> None:
    client = MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    assert run.info.status == "FINISHED"
    for key in [*EPOCH_KEYS, "epoch_time_s"]:
        assert [s for s, _ in history(client, run.info.run_id, key)] == list(range(1, EPOCHS + 1))
    assert history(client, run.info.run_id, "train/step_loss")
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pth", "config.yaml", "train.log"} <= names
    if checkpoints:  # uploaded from the queue once the server was back
        uploaded = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert "checkpoints/last.pth" in uploaded


def test_training_goes_on_while_the_server_is_away_and_every_metric_arrives(tmp_path):
    folder, port = tmp_path / "server", free_port()
    with mlflow_server(folder, port, stop=signal.SIGKILL) as url:
        args = [*OUTAGE, "checkpoint.log_to_mlflow=true", f"mlflow.tracking_uri={url}"]
        proc = start_training(tmp_path, args)
        wait_for(lambda: journal_lines(tmp_path) >= 1, proc, "first epoch")
    assert proc.poll() is None and journal_lines(tmp_path) < EPOCHS, "no epoch met the outage"
    try:  # the server is down now; training must not wait for it
        wait_for(lambda: journal_lines(tmp_path) >= 3, proc, "epochs while the server is down")
        with mlflow_server(folder, port) as url:  # back, on the same store
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, output[-2000:]
            assert "training goes on" in output and "reachable again" in output
            assert_every_epoch_arrived(url, checkpoints=True)
    finally:
        proc.kill()


def test_a_server_gone_for_good_keeps_the_metrics_and_resume_sends_them(tmp_path):
    folder, port = tmp_path / "server", free_port()
    args = [*OUTAGE, "mlflow.offline_wait_s=2"]
    with mlflow_server(folder, port, stop=signal.SIGKILL) as url:
        proc = start_training(tmp_path, [*args, f"mlflow.tracking_uri={url}"])
        wait_for(lambda: journal_lines(tmp_path) >= 1, proc, "first epoch")
    assert proc.poll() is None and journal_lines(tmp_path) < EPOCHS, "no epoch met the outage"
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in output, output[-2000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"Error: MLflow store {url} unreachable for 2 s"), last
    (run_dir,) = tmp_path.glob("outputs/*/*")
    assert f"python -m train resume={run_dir}" in last
    assert journal_lines(tmp_path) == EPOCHS  # every epoch kept locally

    with mlflow_server(folder, port) as url:
        result = run_cli([f"resume={run_dir}", f"mlflow.tracking_uri={url}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert_every_epoch_arrived(url)
