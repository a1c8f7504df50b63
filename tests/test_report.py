"""`python -m mnistlab.report` over a real sweep in a fresh store."""

import csv
import subprocess
import sys

import pytest

from conftest import cli_env, run_cli


def report(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnistlab.report", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 3-job sweep, one of which fails: (cwd, parent run id)."""
    cwd = tmp_path_factory.mktemp("report")
    args = ["-m", "data=synthetic", "epochs=2", "device=cpu", "optimizer=sgd",
            "lr=0.001,0.05,1e6", "mlflow.log_model=false", "train.plots=false"]  # fmt: skip
    assert run_cli(args, cwd=cwd).returncode == 1  # the lr=1e6 job fails
    (parent_file,) = cwd.glob("multirun/*/*/mlflow_parent_run_id")
    return cwd, parent_file.read_text().strip()


def test_report_lists_a_sweeps_runs_sorted_with_csv_and_figure(sweep):
    cwd, parent = sweep
    result = report([parent, "--csv", "runs.csv", "--figure", "cmp.png"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sweep ") and "3 runs, sorted by best_val_acc" in lines[0]
    names = [line.split()[0] for line in lines[2:5]]
    assert names == ["lr=0.05", "lr=0.001", "lr=1000000.0"]  # best first, the failed one last
    assert lines[4].split()[1] == "FAILED"
    with open(cwd / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names
    assert float(rows[0]["best_val_acc"]) > float(rows[1]["best_val_acc"])
    assert (cwd / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_a_table_that_cannot_be_written_is_one_line_naming_the_option(sweep, tmp_path):
    cwd, parent = sweep
    (tmp_path / "a_file").write_text("not a folder")
    for *args, option, name in (["--csv", "runs.csv"], ["--by-config", "--csv", "configs.csv"],
                                ["--figure", "cmp.png"]):  # fmt: skip
        path = tmp_path / "a_file" / "sub" / name
        result = report([parent, *args, option, str(path)], cwd)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"Error: cannot write {path} ({tmp_path / 'a_file'} is a file, not a folder): point "
            f"{option} elsewhere; the earlier {name}, if any, is intact"
        )
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_report_of_the_experiment_sorts_by_any_metric(sweep):
    cwd, _ = sweep
    result = report(["mnistlab", "--sort", "test/loss", "--ascending"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    names = [line.split()[0] for line in result.stdout.splitlines()[2:5]]
    assert names[-1] == "lr=1000000.0"  # no test loss: last either way
    assert "3 runs" in result.stdout  # the parent is not a row


def test_report_of_an_unknown_target_is_one_line_and_exit_2(sweep):
    cwd, _ = sweep
    result = report(["no-such-experiment"], cwd)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: no-such-experiment: no such experiment or run")


def test_report_by_config_folds_the_runs_into_configs(sweep):
    cwd, parent = sweep
    result = report([parent, "--by-config", "--csv", "configs.csv"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "3 runs in 3 configs" in lines[0]
    assert [line.split()[:2] for line in lines[2:5]] == [["0.05", "1"], ["0.001", "1"],
                                                         ["1000000.0", "0"]]  # fmt: skip
    with open(cwd / "configs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["lr"] for r in rows] == ["0.05", "0.001", "1000000.0"]
    assert rows[2]["best_run_id"] == "" and rows[2]["n"] == "0"  # the failed job: no statistic
