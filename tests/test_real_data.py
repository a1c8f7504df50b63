"""The real datasets from ../shared/data: the tutorial's MLP, Fashion-MNIST and the CNN."""

import pytest

from conftest import only_run, run_cli


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
