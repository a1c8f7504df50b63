"""One training run, as a recipe: prepare, build, fit, finish.

- prepare: where the run writes, and where it starts (fresh, or from a checkpoint);
- build: seed, then the data, model and optimizer from the config (`parts.py`);
- fit: the epochs (`loop.py`), each logged to the tracker and checkpointed;
- finish: the weights, config, data facts, plots and the MLflow model, added to the record.
The tracker (`mnistlab.tracking`, behind `open_run` and `Claim`) records the run and keeps it safe.
"""

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mnistlab import checkpoint, config, distributed, loop, tracking
from mnistlab.errors import UserError
from mnistlab.files import advising, write_text
from mnistlab.loop import LoopSettings, TrainState
from mnistlab.parts import Parts, build_parts
from mnistlab.plots import draw_run_plots
from mnistlab.signals import StopRequest

log = logging.getLogger(__name__)


@dataclass
class Start:
    """Where a run writes and where it starts."""

    cfg: DictConfig  # a resumed run's own config
    output_dir: Path
    checkpoint: dict[str, Any] | None = None  # the one to resume from
    finished: float | None = None  # a sweep job run again that had FINISHED: its best val acc
    recorded: bool = False  # its MLflow run exists


def train(cfg: DictConfig, output_dir: str | Path | None = None) -> float:
    """Check the config, train it, record the run in MLflow; return its best val accuracy."""
    config.validate(cfg)
    return run(cfg, output_dir)


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> float:
    """Train a checked config: prepare, build, fit, finish. Returns the best val accuracy. A
    single run that fails before its MLflow run exists leaves no output dir of its own."""
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    folder = Path(output_dir or config.runtime("output_dir") or Path("outputs", stamp))
    start, earlier = Start(cfg, folder), tracking.Claim.held_before(folder)
    try:
        start = prepare(cfg, folder)
        if start.finished is not None:
            return start.finished
        cfg, output_dir, rank0 = start.cfg, start.output_dir, distributed.is_main()
        key = where = "hydra.sweep.dir" if tracking.in_multirun() else "hydra.run.dir"
        then = "rerun"
        if start.checkpoint:  # it writes where it wrote before: no other folder to point to
            key, then, where = f"resume={cfg.resume}", "resume", None
        claim = tracking.Claim(output_dir, key, then) if rank0 else None  # rank 0 records the run
        with claim or contextlib.nullcontext(), advising(where):  # a failed write: what to change
            parts, state = build(cfg, start)
            with (
                open_tracker(cfg, claim, parts, start) as tracker,
                StopRequest().installed() as stop,
                logging_redirect_tqdm(),
            ):
                with debugging(cfg.train, output_dir, tracker):
                    fit(cfg, parts, state, tracker, stop, output_dir)
                distributed.teardown()
                if not rank0:  # the other ranks are done: rank 0 writes the outputs
                    return state.best_val_acc
                finish(cfg, parts, state, tracker, output_dir)
        log.info(f"Best val acc {state.best_val_acc:.4f}; outputs in {output_dir}")
        uri = tracking.tracking_uri(cfg)
        log.info(f"MLflow run {tracker.run_id}: "
                 f"{tracking.how_to_open(uri, tracker.experiment_id, tracker.run_id)}")  # fmt: skip
        return state.best_val_acc
    except BaseException:
        if not (start.recorded or earlier or tracking.in_multirun()):
            tracking.Claim.discard(folder, config.launch_dir())
        raise


def build(cfg: DictConfig, start: Start) -> tuple[Parts, TrainState]:
    """Seed, then build the parts (a resumed run's as its checkpoint left them) before the store
    is opened: a run stopped by a missing dataset, or a model that does not fit, logs nothing."""
    config.save_hydra_files(cfg, start.output_dir)
    loop.seed_everything(cfg.seed)
    parts = build_parts(cfg, threads=tracking.threads_per_job())
    state = TrainState()
    if start.checkpoint:  # a checkpoint that does not fit fails here, before the store
        checkpoint.restore(start.checkpoint, parts)
        state = start.checkpoint["state"]
    log.info(
        f"{type(parts.model).__name__} on {parts.device}: {len(parts.data.train)} train, "
        f"{len(parts.data.val)} val, {len(parts.data.test)} test samples"
    )
    return parts, state


def prepare(cfg: DictConfig, output_dir: Path) -> Start:
    """Where the run writes and starts: fresh, in `output_dir`; from the checkpoint `resume=`
    names; a sweep job run again: from its last.pth, or not at all if it FINISHED (but force)."""
    config.anchor_paths(cfg)
    last = output_dir / "last.pth"
    if tracking.in_multirun() and not cfg.force and last.is_file():
        earlier = checkpoint.load_checkpoint(last)
        if tracking.run_status(cfg, earlier["run_id"]) == "FINISHED":
            log.info(f"Job already FINISHED as run {earlier['run_id']}: skipped "
                     "(force=true redoes it)")  # fmt: skip
            return Start(cfg, output_dir, finished=earlier["state"].best_val_acc)
        cfg.resume = str(last)
    if not cfg.resume:
        return Start(cfg, output_dir)
    path = Path(cfg.resume).expanduser()
    if path.is_dir():
        if not (path / "last.pth").is_file():
            raise UserError(
                f"resume={cfg.resume}: no last.pth in that folder; name a run output dir"
            )
        path = path / "last.pth"
    if not path.is_file():  # an MLflow run id
        path = tracking.run_checkpoint(cfg, cfg.resume)
    resumed = checkpoint.load_checkpoint(path)
    return Start(resumed_config(cfg, resumed["config"]), path.parent, resumed)


def resumed_config(cfg: DictConfig, saved: dict) -> DictConfig:
    """A resumed run's own config: the one its checkpoint saved, with the store the user points
    at now, and today's defaults for options added since (components are taken whole)."""
    run_cfg = OmegaConf.merge(OmegaConf.structured(config.Config), cfg)
    for key, value in saved.items():
        if key in ("mlflow", "resume"):  # the store is where the user points now
            continue
        if isinstance(value, dict) and key not in ("model", "optimizer", "data", "scheduler"):
            value = OmegaConf.merge(run_cfg[key], value)
        run_cfg[key] = value
    return run_cfg


@contextlib.contextmanager
def open_tracker(cfg: DictConfig, claim: Any, parts: Parts, start: Start):
    """The run's tracker: its MLflow run on rank 0, opened or reopened; nothing elsewhere."""
    if claim is None:
        yield tracking.NoTracker()
        return
    tags = {
        "device": str(parts.device),
        "torch.threads": str(parts.threads or torch.get_num_threads()),
        "distributed.world_size": str(distributed.world_size()),
    }
    if config.group_choice("debug"):  # so the UI can filter debug runs away
        tags["debug"] = config.group_choice("debug")
    resume = start.checkpoint and (start.checkpoint["run_id"], start.checkpoint["state"].epoch)
    with tracking.open_run(cfg, claim, tags, resume or None) as tracker:
        start.recorded = True
        state = start.checkpoint["state"] if start.checkpoint else TrainState()
        where = f"epoch {state.epoch + 1}" + (f" step {state.step + 1}" if state.step else "")
        uri = tracking.redact(tracking.tracking_uri(cfg))
        log.info(f"MLflow run {tracker.run_id} in {uri}, from {where}")
        tracker.log_dataset(parts.data, cfg)
        yield tracker


@contextlib.contextmanager
def debugging(train_cfg: Any, output_dir: Path, tracker: Any) -> Iterator[None]:
    """With train.detect_anomaly, find the op that made a NaN or inf in the backward pass; with
    train.profile, add torch.profiler's trace (trace.json, for chrome://tracing or Perfetto) and
    its top ops (top_ops.txt) to the run's artifacts under profile/."""
    with torch.autograd.set_detect_anomaly(bool(train_cfg.detect_anomaly)):
        if not train_cfg.profile:
            yield
            return
        from torch.profiler import ProfilerActivity, profile

        gpu = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
        with profile(activities=[ProfilerActivity.CPU, *gpu], record_shapes=True) as prof:
            yield
        folder = output_dir / "profile"
        folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(folder / "trace.json"))
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        write_text(folder / "top_ops.txt", prof.key_averages().table(sort_by=sort, row_limit=30))
        tracker.log_artifact(folder, "profile")


def loop_settings(cfg: DictConfig) -> LoopSettings:
    """What the epoch loop reads of the config (also bench/epoch.py's and bench/gpu.py's)."""
    train = cfg.train
    return LoopSettings(
        cfg.epochs, cfg.batch_size, cfg.seed, train.log_every, cfg.device.amp, train.on_nan,
        train.label_smoothing, train.grad_clip_norm, train.max_steps,
    )  # fmt: skip


def fit(cfg, parts: Parts, state: TrainState, tracker, stop, output_dir: Path) -> None:
    """Train the epochs left; after each, log its metrics, step the per-epoch schedule and save a
    checkpoint. Stops early on train.early_stopping_patience or train.target_loss."""
    train, opts = cfg.train, loop_settings(cfg)
    epochs = tqdm(range(state.epoch + 1, cfg.epochs + 1), desc="epochs", disable=None, position=0)
    trial = None
    if tracking.in_multirun():  # an Optuna trial reports every epoch
        from mnistlab.search import trial_reporter

        trial = trial_reporter(cfg, tracker)
    for epoch in epochs:
        metrics = run_epoch(cfg, parts, state, opts, (stop, tracker, output_dir))
        epochs.set_postfix(val_acc=f"{metrics['val/acc']:.4f}")
        improved = state.end_epoch(metrics)
        parts.schedule.end_epoch(metrics["val/loss"])
        save_checkpoints(cfg, parts, state, tracker, output_dir, improved)
        stop.raise_if_requested(f"checkpoint after epoch {epoch}: {resume_hint(output_dir)}")
        if trial is not None and trial.report(epoch, metrics["val/acc"]):
            log.info(f"Optuna pruned trial {trial.number} after epoch {epoch}")
            tracker.log_tags({"optuna.state": "PRUNED", "optuna.pruned_epoch": str(epoch)})
            return
        patience, target = train.early_stopping_patience, train.target_loss
        if patience and epoch - state.best_epoch >= patience:
            log.info(f"Early stop after epoch {epoch}: no better val acc for {patience} epochs")
            tracker.log_tags({"early_stopped_epoch": str(epoch)})
            return
        if target and metrics["train/loss"] <= target:
            log.info(f"Train loss {metrics['train/loss']:.4g} <= {target} after epoch {epoch}")
            return


def resume_hint(output_dir: Path) -> str:
    """How to continue a stopped run."""
    return f"continue with python -m train resume={output_dir}"


def run_epoch(cfg, parts: Parts, state: TrainState, opts: LoopSettings, where: tuple) -> dict:
    """Train one epoch (with a checkpoint if a signal stops it midway), evaluate val and test,
    and log the metrics; return them."""
    stop, tracker, output_dir = where
    epoch, start = state.epoch + 1, time.perf_counter() - state.elapsed_s
    try:
        train_m = loop.train_epoch(parts, state, opts, stop)
    except loop.EpochInterrupted:
        state.elapsed_s = time.perf_counter() - start
        save_checkpoints(cfg, parts, state, tracker, output_dir, improved=False)
        stop.raise_if_requested(
            f"checkpoint at epoch {epoch} step {state.step}: {resume_hint(output_dir)}"
        )
    epoch_time = time.perf_counter() - start
    speed = {"train/samples_per_s": train_m.pop("samples") / epoch_time}
    metrics = {f"train/{k}": v for k, v in train_m.items()}
    for split in ("val", "test"):
        split_m = loop.evaluate(parts.evaluated, parts.data, getattr(parts.data, split),
                           cfg.train.eval_batch_size, cfg.device.amp)  # fmt: skip
        metrics.update({f"{split}/{k}": v for k, v in split_m.items()})
    steps = {"train/step_loss": state.step_losses}
    if parts.schedule.per_batch:
        steps["train/step_lr"] = state.step_lrs
    tracker.log_epoch(epoch, {**metrics, "epoch_time_s": epoch_time, **speed}, steps)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "train/lr")
    log.info(f"Epoch {epoch}/{cfg.epochs}: {shown}, {epoch_time:.2f} s")
    return metrics


def save_checkpoints(cfg, parts: Parts, state: TrainState, tracker, output_dir: Path, improved):
    """On rank 0: write last.pth (and best.pth when val acc improved); upload them if asked."""
    if not distributed.is_main():
        return
    last, best = output_dir / "last.pth", output_dir / "best.pth"
    saved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    about = {"run_id": tracker.run_id, "config": saved, "data": parts.data.info()}
    checkpoint.save_checkpoint(last, parts, state, **about)
    if improved:
        shutil.copyfile(last, output_dir / ".best.pth.tmp")
        os.replace(output_dir / ".best.pth.tmp", best)
    if cfg.checkpoint.log_to_mlflow:
        for path in [last, best] if improved else [last]:
            tracker.log_artifact(path, "checkpoints")


def finish(cfg, parts: Parts, state: TrainState, tracker, output_dir: Path) -> None:
    """Write the run's outputs (weights, config, data facts, plots) and add them to its record."""
    model = parts.ema.module if parts.ema is not None else parts.model  # the weights evaluated
    checkpoint.save_weights(model, output_dir / "model.pth")
    write_text(output_dir / "config.yaml", tracking.redact(OmegaConf.to_yaml(cfg, resolve=True)))
    weights = "ema" if parts.ema is not None else "last"  # the moving average, or the last step's
    facts = json.dumps({**parts.data.info(), "weights": weights}, indent=1)
    write_text(output_dir / "data.json", facts)
    for name in ("model.pth", "config.yaml", "data.json"):
        tracker.log_artifact(output_dir / name)
    if cfg.mlflow.log_model:
        tracker.log_model(model, parts.data.inputs(parts.data.test.images[:2]))
    if cfg.train.plots:
        draw_run_plots(model, parts.data, state.history, output_dir / "plots", cfg.device.amp)
        tracker.log_artifact(output_dir / "plots", "plots")
    tracker.log_artifact(output_dir / ".hydra", ".hydra")
    tracker.log_artifact(output_dir / "train.log")
