"""The options for real experiments: lr schedules, early stopping, clipping, label smoothing,
EMA, augmentation, the models for 1 and 3 channels, and the debug modes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, cli_env, history, only_run, run_cli
from mnistlab.config import compose, validate
from mnistlab.loop import LoopSettings, train_step
from mnistlab.parts import build_part, build_parts

FAST = ["data=synthetic", "device=cpu", "train.log_every=10"]
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))


def lrs(overrides: list[str], epochs: int, steps: int) -> list[float]:
    """The lr of every step of a run, as the configured schedule sets it (per-epoch schedules
    are stepped at each epoch's end, with a val loss that never improves)."""
    cfg = compose([f"epochs={epochs}", "lr=0.1", *overrides])
    validate(cfg)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    schedule = build_part(
        cfg.scheduler, "scheduler", optimizer=optimizer, epochs=epochs, steps_per_epoch=steps
    )
    seen = []
    for _ in range(epochs):
        for _ in range(steps):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if schedule.per_batch:
                schedule.step()
        schedule.end_epoch(val_loss=1.0)
    return seen


def test_schedule_curves():
    assert lrs(["scheduler=none"], 3, 2) == [0.1] * 6
    assert lrs(["scheduler=step"], 3, 2) == pytest.approx([0.1, 0.1, 0.07, 0.07, 0.049, 0.049])
    warm = lrs(["scheduler=cosine", "scheduler.warmup_epochs=1"], 3, 4)
    assert warm[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # linear warmup
    done = [(k, 0.1 * 0.5 * (1 + math.cos(math.pi * k / 8))) for k in range(8)]
    assert warm[4:] == pytest.approx([v for _, v in done])  # then a cosine to 0
    cycle = lrs(["scheduler=onecycle"], 4, 10)
    assert cycle[0] == pytest.approx(0.1 / 25) and max(cycle) == pytest.approx(0.1, rel=1e-3)
    assert cycle.index(max(cycle)) == 9 and cycle[-1] < 0.1 / 25 / 1e3  # up 25%, then far down
    plateau = lrs(["scheduler=plateau", "scheduler.patience=0"], 3, 1)
    assert plateau == pytest.approx([0.1, 0.1, 0.05])  # the first val loss is the best one


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("scheduler", ["step", "cosine", "onecycle", "plateau"])
def test_every_schedule_builds_for_every_optimizer(optimizer, scheduler):
    assert len(lrs([f"optimizer={optimizer}", f"scheduler={scheduler}"], 2, 3)) == 6


def test_a_run_logs_the_lr_per_epoch_and_per_log_step_for_per_batch_schedules(tmp_path):
    result = run_cli([*FAST, "epochs=3", "scheduler=step"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    lr = history(client, run.info.run_id, "train/lr")
    assert [s for s, _ in lr] == [1, 2, 3]
    assert [v for _, v in lr] == pytest.approx([1e-3, 7e-4, 4.9e-4])
    assert not history(client, run.info.run_id, "train/step_lr")  # a per-epoch schedule
    (tmp_path / "b").mkdir()
    result = run_cli([*FAST, "epochs=2", "scheduler=onecycle"], cwd=tmp_path / "b")
    assert result.returncode == 0, result.stderr[-2000:]
    client, run = only_run(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    steps = history(client, run.info.run_id, "train/step_lr")
    losses = history(client, run.info.run_id, "train/step_loss")
    assert [s for s, _ in steps] == [s for s, _ in losses] and len(steps) >= 6
    assert max(v for _, v in steps) > steps[0][1] > steps[-1][1]  # up, then down


def test_early_stopping_ends_the_run_finished_with_the_epoch(tmp_path):
    # an lr so small that val accuracy cannot improve after the first epoch
    args = [*FAST, "epochs=6", "optimizer=sgd", "lr=1e-12", "train.early_stopping_patience=2"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.data.tags["early_stopped_epoch"] == "3"
    assert [s for s, _ in history(client, run.info.run_id, "val/acc")] == [1, 2, 3]


def one_step(overrides: list[str]) -> tuple[float, torch.Tensor]:
    """(loss, parameter change) of one training step of a synthetic run."""
    cfg = compose([*FAST, "model.hidden_sizes=[16]", *overrides])
    validate(cfg)
    torch.manual_seed(0)
    parts = build_parts(cfg)
    inputs, labels = next(parts.data.batches(parts.data.train, 64))
    before = torch.cat([p.detach().flatten().clone() for p in parts.model.parameters()])
    opts = LoopSettings(1, 64, 0, label_smoothing=cfg.train.label_smoothing,
                        grad_clip_norm=cfg.train.grad_clip_norm)  # fmt: skip
    loss, _ = train_step(parts, inputs, labels, opts)
    after = torch.cat([p.detach().flatten() for p in parts.model.parameters()])
    return loss.item(), after - before


def test_gradient_clipping_bounds_the_step_and_label_smoothing_raises_the_loss():
    sgd = ["optimizer=sgd", "optimizer.momentum=0", "lr=1.0"]
    _, free = one_step(sgd)
    _, clipped = one_step([*sgd, "train.grad_clip_norm=0.001"])
    assert free.norm() > 0.01 and clipped.norm() == pytest.approx(0.001, rel=1e-4)
    plain, _ = one_step(sgd)
    smoothed, _ = one_step([*sgd, "train.label_smoothing=0.2"])
    assert smoothed > plain  # the same logits, scored against softer targets


def test_ema_weights_are_evaluated_and_saved_and_said_so(tmp_path):
    result = run_cli([*FAST, "epochs=2", "train.ema_decay=0.9"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert json.loads((run_dir / "data.json").read_text())["weights"] == "ema"
    saved = torch.load(run_dir / "model.pth")
    last = torch.load(run_dir / "last.pth", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in last["ema"].items() if k != "n_averaged"}
    assert all(torch.equal(saved[k], ema[k]) for k in saved)
    assert not all(torch.equal(saved[k], last["model"][k]) for k in saved)
    evaluated = run_cli_evaluate(run_dir, tmp_path)
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert f"test/acc  {run.data.metrics['test/acc']:.4f}" in evaluated  # the EMA's accuracy


def run_cli_evaluate(run_dir: Path, cwd: Path) -> str:
    """`python -m mnistlab.evaluate RUN_DIR`'s output."""
    import subprocess
    import sys

    from conftest import cli_env

    done = subprocess.run([sys.executable, "-m", "mnistlab.evaluate", str(run_dir)], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("kind", ["shift", "affine"])
def test_augmentation_is_seeded_per_batch_on_training_batches_only(kind):
    data = build_part(compose(["data=synthetic", f"data.augment={kind}"]).data, "data", seed=0)
    plain = build_part(compose(["data=synthetic"]).data, "data", seed=0)

    def batches(d, seed, **kw):
        return list(d.batches(d.train, 64, torch.Generator().manual_seed(seed), **kw))

    first, again = batches(data, 5, augment=True), batches(data, 5, augment=True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    resumed = batches(data, 5, augment=True, skip=7)  # an epoch resumed at batch 7
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[7:], resumed, strict=True))
    unchanged = batches(plain, 5)
    assert not torch.equal(first[0][0], unchanged[0][0])
    assert torch.equal(first[0][1], unchanged[0][1])  # the same samples, changed images
    assert not torch.equal(batches(data, 6, augment=True)[0][0], batches(data, 6)[0][0])
    val = next(data.batches(data.val, 64))[0]  # evaluation batches are never augmented
    assert torch.equal(val, next(plain.batches(plain.val, 64))[0])
    if kind == "shift":  # whole-pixel shifts: every value is one of the image's or black
        image, source = first[0][0][0], unchanged[0][0][0]
        black = (0 - data.mean) / data.std
        values = set(source.flatten().tolist()) | {black}
        assert set(image.flatten().tolist()) <= {v for v in values}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 28, 28), (3, 32, 24)])
def test_every_model_takes_1_or_3_channels_and_any_image_size(model, in_shape):
    cfg = compose([f"model={model}"])
    validate(cfg)
    net = build_part(cfg.model, "model", in_shape=in_shape, num_classes=7)
    assert net(torch.zeros(2, *in_shape)).shape == (2, 7)


def test_debug_fast_profile_and_anomaly_runs_are_short_tagged_and_profiled(tmp_path):
    for mode in ("fast", "profile", "anomaly"):
        cwd = tmp_path / mode
        cwd.mkdir()
        extra = ["epochs=1"] if mode == "anomaly" else []
        result = run_cli([*FAST, f"debug={mode}", *extra], cwd=cwd)
        assert result.returncode == 0, result.stderr[-2000:]
        client, run = only_run(f"sqlite:///{cwd / 'mlflow.db'}")
        assert run.info.status == "FINISHED" and run.data.tags["debug"] == mode
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert ("model_uri" in run.data.tags) == (mode == "anomaly")  # no export when debugging
        if mode == "profile":
            files = {a.path for a in client.list_artifacts(run.info.run_id, "profile")}
            assert files == {"profile/trace.json", "profile/top_ops.txt"}
            (table,) = cwd.glob("outputs/*/*/profile/top_ops.txt")
            assert "aten::" in table.read_text()
        else:
            assert "profile" not in artifacts


def test_debug_overfit_drives_the_loss_of_a_few_batches_near_zero(tmp_path):
    result = run_cli([*FAST, "debug=overfit"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    losses = history(client, run.info.run_id, "train/loss")
    assert losses[-1][1] <= 0.01 < losses[0][1] and len(losses) < 300
    assert run.data.tags["debug"] == "overfit"


def test_every_preset_runs_as_one_sweep_with_glob(tmp_path, data_root):
    # debug=fast cuts each preset to a few steps; bench/presets.py measures them for real
    result = run_cli(["-m", "experiment=glob(*)", "debug=fast", "device=cpu"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    children = {r.data.params["experiment"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == ["fashion_cnn", "mnist_cnn", "speedrun", "tutorial"]
    assert all(r.info.status == "FINISHED" for r in children.values())
    tutorial, fashion = children["tutorial"].data.params, children["fashion_cnn"].data.params
    assert (tutorial["model"], tutorial["lr"], tutorial["batch_size"]) == ("mlp", "0.001", "64")
    assert tutorial["data.val_size"] == "0" and tutorial["model.hidden_sizes"] == "[512, 512]"
    assert (fashion["data"], fashion["scheduler"], fashion["model"]) == (
        "fashion_mnist", "onecycle", "cnn"
    )  # fmt: skip


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_sets_how_every_torch_thread_treats_tiny_floats(flush):
    # on: floats below 1.2e-38 count as zero, on torch's worker threads too (a multiply of 4M
    # elements is split among them); off: plain IEEE math keeps them. A fresh process, as a run
    code = (
        "import torch; from mnistlab.config import compose, validate; "
        "from mnistlab.parts import build_parts; "
        f"cfg = compose({[*FAST, f'device.flush_denormal={flush}']!r}); validate(cfg); "
        "build_parts(cfg, threads=2); n = 1 << 22; "
        "x = torch.full((n,), 3e-39) * torch.ones(n); "
        "print(int((x == 0).sum()), int((x > 0).sum()))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    zeros, kept = map(int, done.stdout.split())
    assert (zeros, kept) == ((1 << 22, 0) if flush else (0, 1 << 22))
