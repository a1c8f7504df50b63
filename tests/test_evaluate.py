"""The evaluate and predict entrypoints, and the MLflow PyTorch model of every run."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from PIL import Image

from conftest import cli_env, only_run, run_cli
from mnistlab.data import normalize
from mnistlab.inference import load_trained


def module(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m mnistlab.NAME ARGS` in `cwd`, as a user would run it."""
    return subprocess.run([sys.executable, "-m", f"mnistlab.{name}", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished synthetic run in a fresh directory: (cwd, client, run)."""
    cwd = tmp_path_factory.mktemp("trained")
    result = run_cli(["data=synthetic", "epochs=2", "device=cpu"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    client, run = only_run(f"sqlite:///{cwd / 'mlflow.db'}")
    return cwd, client, run


def test_evaluate_reproduces_the_logged_test_accuracy_from_every_kind_of_source(trained):
    cwd, client, run = trained
    run_dir = Path(run.data.tags["hydra.output_dir"])
    logged = run.data.metrics["test/acc"]
    sources = [str(run_dir), str(run_dir / "model.pth"), str(run_dir / "last.pth"),
               f"runs:/{run.info.run_id}/model.pth", run.info.run_id]  # fmt: skip
    for source in sources:
        result = module("evaluate", [source, "--output", str(cwd / "cm.png")], cwd)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"test/acc  {logged:.4f}" in result.stdout, source
        assert f"test/loss {run.data.metrics['test/loss']:.4f}" in result.stdout
        assert result.stdout.count("class ") >= 10  # per-class accuracy, one line per class
        assert (cwd / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_an_output_that_cannot_be_written_is_one_line_naming_the_option(trained, tmp_path):
    cwd, _, run = trained
    (tmp_path / "a_file").write_text("not a folder")
    png = tmp_path / "a_file" / "cm.png"
    result = module("evaluate", [run.info.run_id, "--output", str(png)], cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot write {png} ({tmp_path / 'a_file'} is a file, not a folder): point "
        "--output elsewhere; the earlier cm.png, if any, is intact"
    )


def test_evaluate_can_log_eval_metrics_and_the_confusion_matrix_to_the_run(trained):
    cwd, client, run = trained
    result = module("evaluate", [run.info.run_id, "log_to_mlflow=true"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    after = client.get_run(run.info.run_id)
    assert after.data.metrics["eval/test_acc"] == pytest.approx(run.data.metrics["test/acc"])
    assert len([k for k in after.data.metrics if k.startswith("eval/class_acc/")]) == 10
    assert after.info.status == "FINISHED"
    pngs = [a.path for a in client.list_artifacts(run.info.run_id, "eval")]
    assert pngs == [f"eval/confusion_matrix_{run.info.run_id}.png"]


def test_the_run_logs_an_mlflow_pytorch_model_that_matches_model_pth(trained):
    cwd, client, run = trained
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    exported = mlflow.pytorch.load_model(run.data.tags["model_uri"])
    (logged_model,) = client.search_logged_models([run.info.experiment_id])
    assert logged_model.source_run_id == run.info.run_id
    plain = load_trained(str(Path(run.data.tags["hydra.output_dir"]) / "model.pth"))
    pixels = torch.randint(0, 256, (7, 1, 28, 28), dtype=torch.uint8)  # another batch size
    normalised = normalize(pixels, plain.data_info["mean"], plain.data_info["std"])
    with torch.no_grad():  # raw pixels in, the normalisation inside: uint8 or 0-1 floats
        assert torch.equal(exported(pixels), plain.model(normalised))
        assert torch.allclose(exported(pixels / 255), plain.model(normalised), atol=1e-4)
        version = mlflow.register_model(run.data.tags["model_uri"], "mnistlab-test")
        registered = mlflow.pytorch.load_model(f"models:/mnistlab-test/{version.version}")
        assert torch.allclose(registered(pixels / 255), plain.model(normalised), atol=1e-4)


def test_predict_classifies_pngs_rendered_from_the_test_set(tmp_path, data_root):
    result = run_cli(["epochs=1", "device=cpu", "mlflow.log_model=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    import torchvision

    test = torchvision.datasets.MNIST(str(data_root), train=False)
    paths, labels = [], []
    for i in range(20):
        image, label = test[i]
        if i == 0:
            image = image.resize((56, 56))  # resized back to 28x28 by predict
        paths.append(tmp_path / f"digit{i}.png")
        image.save(paths[-1])
        labels.append(label)
    result = module("predict", [run.info.run_id, *map(str, paths)], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 20
    predicted = [int(line.split(": ")[1].split(" ")[0]) for line in lines]
    assert sum(p == y for p, y in zip(predicted, labels, strict=True)) >= 18
    # the same model on the same pixels, in-process, predicts the same classes
    trained = load_trained(str(Path(run.data.tags["hydra.output_dir"]) / "best.pth"))
    pixels = torch.stack([torch.tensor(list(Image.open(p).getdata()), dtype=torch.uint8)
                          .view(28, 28) for p in paths[1:]])  # fmt: skip
    mean, std = trained.data_info["mean"], trained.data_info["std"]
    assert trained.model(normalize(pixels, mean, std)).argmax(1).tolist() == predicted[1:]
    probabilities = [float(v.split(":")[1]) for v in lines[1].split("[")[1].rstrip("]").split()]
    assert sum(probabilities) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize(
    ("tool", "damage", "message"),
    [
        ("evaluate", "truncate", "not a readable checkpoint (truncated or corrupt?"),
        ("evaluate", "other-architecture", "do not fit the mnistlab.models.MLP"),
        ("evaluate", "unknown-run", "no such MLflow run or artifact"),
        ("evaluate", "empty-folder", "no model.pth or last.pth in that folder"),
        ("predict", "not-an-image", "not a readable image"),
    ],
)
def test_bad_sources_give_one_line_and_exit_2(trained, tmp_path, tool, damage, message):
    cwd, _, run = trained
    model_pth = tmp_path / "model.pth"
    source = str(model_pth)
    run_dir = Path(run.data.tags["hydra.output_dir"])
    for name in ("config.yaml", "data.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    if damage == "truncate":
        model_pth.write_bytes((run_dir / "model.pth").read_bytes()[:3000])
    elif damage == "other-architecture":
        torch.save({"features.0.weight": torch.zeros(32, 1, 3, 3)}, model_pth)
    elif damage == "unknown-run":
        source = "0123456789abcdef0123456789abcdef"
    elif damage == "empty-folder":
        source = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    extra = [str(tmp_path / "config.yaml")] if tool == "predict" else []
    result = module(tool, [run.info.run_id if tool == "predict" else source, *extra], cwd)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
