"""A run's plots: drawn from its last evaluation, with no second pass over the test split."""

import pytest
import torch

from conftest import only_run
from mnistlab import recipe, run_plots
from mnistlab.config import compose
from mnistlab.loop import evaluate
from mnistlab.parts import build_part
from mnistlab.recipe import train
from mnistlab.run_plots import draw_run_plots

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ["learning_curves.png", "confusion_matrix.png", "per_class_accuracy.png",
           "misclassified.png"]  # fmt: skip


def test_evaluate_keeps_the_predictions_its_metrics_count(tmp_path):
    cfg = compose(["data=synthetic"])
    data = build_part(cfg.data, "data", seed=0)
    model = build_part(cfg.model, "model", in_shape=data.in_shape, num_classes=data.num_classes)
    metrics = evaluate(model, data, data.test, 300, predict=True)  # batches of 300: one partial
    tested = metrics.pop("predictions")
    plain = evaluate(model, data, data.test, 1000)  # the same numbers without
    assert metrics == pytest.approx(plain, rel=1e-6) and metrics["acc"] == plain["acc"]
    assert torch.equal(tested.labels, data.test.labels)  # in the split's order
    assert (tested.predicted == tested.labels).sum().item() / len(data.test) == metrics["acc"]
    with torch.inference_mode():
        probs = model(data.inputs(data.test.images)).softmax(dim=1)
    assert torch.equal(tested.predicted, probs.argmax(dim=1))
    assert torch.allclose(tested.confidence, probs.max(dim=1).values, atol=1e-6)

    draw_run_plots(model, data, {"val/acc": [(1, 0.5)], "val/loss": [(1, 2.0)]}, tmp_path, tested)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FIGURES)  # and no temp file
    assert all(p.read_bytes()[:8] == PNG for p in tmp_path.iterdir())


def test_a_run_draws_its_plots_from_its_last_evaluation(tmp_path, store, monkeypatch):
    def second_pass(*args, **kwargs):
        raise AssertionError("the plots evaluated the model again")

    monkeypatch.setattr(run_plots, "evaluate", second_pass)
    cfg = compose(["data=synthetic", "epochs=1", "device=cpu", "mlflow.log_model=false",
                   "device.flush_denormal=false",  # leaves this process's floats as they are
                   f"mlflow.tracking_uri={store}"])  # fmt: skip
    train(cfg, output_dir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "plots").iterdir()) == sorted(FIGURES)
    assert only_run(store)[1].info.status == "FINISHED"


def test_a_run_without_plots_keeps_no_predictions(tmp_path, store, monkeypatch):
    asked = []

    def evaluate_noting(*args, predict=False, **kwargs):
        asked.append(predict)
        return evaluate(*args, predict=predict, **kwargs)

    monkeypatch.setattr(recipe, "evaluate", evaluate_noting)
    cfg = compose(["data=synthetic", "epochs=1", "device=cpu", "mlflow.log_model=false",
                   "device.flush_denormal=false", "train.plots=false",
                   f"mlflow.tracking_uri={store}"])  # fmt: skip
    train(cfg, output_dir=tmp_path / "out")
    assert asked == [False, False]  # its epoch's val and test evaluations
    assert not (tmp_path / "out" / "plots").exists()
    assert only_run(store)[1].info.status == "FINISHED"
