"""A run's plots: drawn from its last evaluation, with no second pass over the test split."""

import pytest
import torch

from conftest import only_run
from mnistlab.config import compose
from mnistlab.loop import evaluate
from mnistlab.parts import build_part
from mnistlab.plots import draw_run_plots
from mnistlab.recipe import train

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

    draw_run_plots(model, data, {"val/acc": [(1, 0.5)], "val/loss": [(1, 2.0)]}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FIGURES)  # and no temp file
    assert all(p.read_bytes()[:8] == PNG for p in tmp_path.iterdir())


@pytest.mark.parametrize("plots", [True, False])
def test_a_run_draws_its_four_plots_unless_told_not_to(tmp_path, store, plots):
    cfg = compose(["data=synthetic", "epochs=1", "device=cpu", "mlflow.log_model=false",
                   f"train.plots={plots}", f"mlflow.tracking_uri={store}"])  # fmt: skip
    train(cfg, output_dir=tmp_path / "out")
    drawn = sorted(p.name for p in (tmp_path / "out" / "plots").glob("*"))
    assert drawn == (sorted(FIGURES) if plots else [])
    client, run = only_run(store)
    assert run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert logged == ({f"plots/{name}" for name in FIGURES} if plots else set())
