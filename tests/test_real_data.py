"""The real datasets from ../shared/data: the tutorial's MLP, Fashion-MNIST and the CNN; data
paths recorded absolute, and the advice when the files are missing offline."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import cli_env, only_run, run_cli


def cli_run(tmp_path, *args: str):
    result = run_cli(list(args), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    return result, run


def test_one_epoch_of_the_tutorial_mlp_on_mnist_reaches_96_percent(tmp_path, data_root):
    result, run = cli_run(tmp_path, "epochs=1", f"data.root={data_root}")
    assert run.data.params["data.root"] == str(data_root)
    assert run.data.metrics["test/acc"] >= 0.96
    assert run.data.metrics["val/acc"] >= 0.95
    # the tutorial prints a line every 100 steps: 55,000 / 64 -> 860 steps, 8 lines
    assert (result.stdout + result.stderr).count("Step [") == 8
    lines = (result.stdout + result.stderr).splitlines()  # the run's own lines, no library's
    assert lines and all(line.startswith("[20") for line in lines), lines


def test_one_epoch_on_fashion_mnist(tmp_path, data_root):
    _, run = cli_run(tmp_path, "epochs=1", "data=fashion_mnist")
    assert run.data.params["data.dataset"] == "torchvision.datasets.FashionMNIST"
    assert 0.80 <= run.data.metrics["test/acc"] < 0.95  # clothes are harder than digits


def test_cnn_reaches_98_8_percent_on_mnist_within_two_epochs(tmp_path, data_root):
    _, run = cli_run(tmp_path, "epochs=2", "model=cnn")
    assert run.data.params["model"] == "cnn"
    assert run.data.metrics["test/acc"] >= 0.988


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_other_optimizers_train_the_mlp(tmp_path, data_root, optimizer):
    lr = {"sgd": "0.05", "adamw": "0.001"}[optimizer]
    _, run = cli_run(tmp_path, "epochs=1", f"optimizer={optimizer}", f"lr={lr}", "batch_size=128")
    assert run.data.params["lr"] == lr and "optimizer.lr" not in run.data.params
    assert run.data.metrics["test/acc"] >= 0.95


def test_a_run_trained_with_a_relative_data_root_evaluates_from_another_folder(tmp_path, data_root):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "digits").symlink_to(data_root)
    args = ["epochs=1", "data.root=digits", "train.max_steps=20", "hydra.run.dir=run",
            "mlflow.log_model=false", "train.plots=false"]  # fmt: skip
    result = run_cli(args, cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(f"sqlite:///{project / 'mlflow.db'}")
    assert run.data.params["data.root"] == str(project / "digits")  # recorded absolute
    saved = OmegaConf.load(project / "run" / "config.yaml")
    assert saved.data.root == str(project / "digits")
    evaluated = subprocess.run(
        [sys.executable, "-m", "mnistlab.evaluate", str(project / "run")], cwd=elsewhere,
        env=cli_env(**OFFLINE), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "MNIST test split (10000 images)" in evaluated.stdout
    assert not (elsewhere / "digits").exists()


OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # refused
FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels"


@pytest.mark.parametrize("download", ["true", "false"])
def test_missing_files_offline_advise_what_helps(tmp_path, download):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(["epochs=1", "data.root=empty", f"data.download={download}"], cwd=tmp_path,
                     **OFFLINE)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    raw = empty / "MNIST" / "raw"
    assert line.startswith(f"Error: data.root={empty}: no MNIST in {raw} (expected {FILES}")
    fix = ("Fix: copy those files there, point data.root (or MNISTLAB_DATA) at the folder "
           "that holds MNIST/raw/, or go online")  # fmt: skip
    if download == "true":  # already the setting: naming it would not help
        assert "and the download failed (" in line and line.endswith(fix)
        assert "data.download" not in line
    else:
        assert "and data.download=false. " in line
        assert line.endswith(fix + " with data.download=true")
    assert list(empty.iterdir()) == []  # a failed download leaves no empty MNIST/raw behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nor a run dir nor a store
