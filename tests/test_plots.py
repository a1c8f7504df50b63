"""A run's plots: drawn from its last evaluation, half of them by a forked process, and drawn
here after all when that process fails, dies or hangs."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from mnistlab import plots
from mnistlab.config import compose
from mnistlab.loop import evaluate
from mnistlab.parts import build_part
from mnistlab.run_plots import draw_run_plots

PNG = b"\x89PNG\r\n\x1a\n"


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
    assert {p.name for p in tmp_path.iterdir()} == {
        "learning_curves.png",
        "confusion_matrix.png",
        "per_class_accuracy.png",
        "misclassified.png",
    }  # written whole: no temp file left
    assert all(p.read_bytes()[:8] == PNG for p in tmp_path.iterdir())


def drawn_by(path: Path, how: str = "") -> None:
    """A figure for `draw_all`: writes the pid that drew it; `how` it fails in a forked one."""
    if os.getpid() != PARENT[0]:
        if how == "raise":
            raise RuntimeError("this figure cannot be drawn")
        if how == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "hang":
            time.sleep(60)
    path.write_text(str(os.getpid()))


PARENT = [os.getpid()]


def test_draw_all_draws_every_second_figure_in_a_forked_process(tmp_path):
    PARENT[0] = os.getpid()
    paths = [tmp_path / f"{i}.txt" for i in range(5)]
    plots.draw_all([(drawn_by, path) for path in paths])
    pids = [int(path.read_text()) for path in paths]
    assert plots.spare_core()  # Linux, more than one core: as on CI and this machine
    assert pids[0::2] == [os.getpid()] * 3
    assert len(set(pids[1::2])) == 1 and pids[1] != os.getpid()
    with pytest.raises(ChildProcessError):  # the forked process was waited for
        os.waitpid(pids[1], os.WNOHANG)


@pytest.mark.parametrize("how", ["raise", "die", "hang"])
def test_figures_a_forked_process_did_not_draw_are_drawn_here(tmp_path, monkeypatch, how):
    PARENT[0] = os.getpid()
    monkeypatch.setattr(plots, "FORK_WAIT_S", 2.0)
    paths = [tmp_path / f"{i}.txt" for i in range(4)]
    began = time.monotonic()
    plots.draw_all([(drawn_by, path, how) for path in paths])
    assert [int(path.read_text()) for path in paths] == [os.getpid()] * 4
    assert time.monotonic() - began < 20  # a hanging one is killed after FORK_WAIT_S
    assert not list(tmp_path.glob(".*.tmp*"))
