"""A run's plots: drawn from its last evaluation, half of them by a forked process, and drawn
here after all when that process fails, dies or hangs (`mnistlab.forked`)."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import only_run
from mnistlab import forked, recipe, run_plots
from mnistlab.config import compose
from mnistlab.files import atomic_write
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


def drawn_by(path: Path, how: str = "") -> None:
    """A call for `forked.call_all`: writes `path` (atomically) with the pid that made it; a
    forked child that makes it first leaves a marker (it was there), then fails `how`."""
    if os.getpid() != PARENT[0] and how:
        path.with_suffix(".forked").touch()
        if how == "raise":
            raise RuntimeError("this call fails in the child")
        if how == "die":
            os.kill(os.getpid(), signal.SIGKILL)

    def write(f) -> None:
        f.write(str(os.getpid()).encode())
        if how == "hang" and os.getpid() != PARENT[0]:
            f.flush()
            time.sleep(60)  # midway through the write: its temp file is there

    atomic_write(path, write)


PARENT = [os.getpid()]


def test_every_second_call_is_made_by_a_forked_process(tmp_path):
    PARENT[0] = os.getpid()
    paths = [tmp_path / f"{i}.txt" for i in range(5)]
    forked.call_all([(drawn_by, path) for path in paths], tmp_path)
    pids = [int(path.read_text()) for path in paths]
    assert pids[0::2] == [os.getpid()] * 3
    if forked.spare_core():  # Linux, more than one core: as on CI and this machine
        assert len(set(pids[1::2])) == 1 and pids[1] != os.getpid()
        with pytest.raises(ChildProcessError):  # the child was waited for
            os.waitpid(pids[1], os.WNOHANG)
    else:
        assert pids == [os.getpid()] * 5


@pytest.mark.parametrize("how", ["raise", "die", "hang"])
def test_calls_a_forked_process_did_not_make_are_made_here(tmp_path, monkeypatch, how):
    PARENT[0] = os.getpid()
    monkeypatch.setattr(forked, "WAIT_S", 2.0)
    paths = [tmp_path / f"{i}.txt" for i in range(4)]
    began = time.monotonic()
    forked.call_all([(drawn_by, path, how) for path in paths], tmp_path)
    assert time.monotonic() - began < 20  # a hanging child is killed after WAIT_S
    assert [int(path.read_text()) for path in paths] == [os.getpid()] * 4
    if forked.spare_core():
        assert [p.name for p in tmp_path.glob("*.forked")] == ["1.forked"]  # it failed there
    assert not list(tmp_path.glob(".*"))  # no temp file left, even by a child killed midway


def test_a_call_failing_here_kills_the_forked_process_at_once(tmp_path):
    PARENT[0] = os.getpid()

    def fails(_: Path) -> None:  # once the child is midway through writing its file
        deadline = time.monotonic() + 10
        while forked.spare_core() and not list(tmp_path.glob(".*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        raise OSError("disk full")

    paths = [tmp_path / f"{i}.txt" for i in range(2)]
    began = time.monotonic()
    with pytest.raises(OSError, match="disk full"):
        forked.call_all([(fails, paths[0]), (drawn_by, paths[1], "hang")], tmp_path)
    assert time.monotonic() - began < forked.WAIT_S / 2  # not waited for
    assert forked.spare_core() == (tmp_path / "1.forked").exists()
    time.sleep(0.5)
    assert not paths[1].exists() and not list(tmp_path.glob(".*"))  # gone, its temp file too


def test_no_child_where_the_system_reaps_children(tmp_path):
    PARENT[0] = os.getpid()
    before = signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # as a Ray worker may have it
    try:
        assert not forked.spare_core()
        paths = [tmp_path / f"{i}.txt" for i in range(2)]
        forked.call_all([(drawn_by, path, "raise") for path in paths], tmp_path)
        assert [int(path.read_text()) for path in paths] == [os.getpid()] * 2
        assert not list(tmp_path.glob("*.forked"))
    finally:
        signal.signal(signal.SIGCHLD, before)


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
