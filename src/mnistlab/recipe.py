"""One training run, as a recipe: prepare, build, fit, finish.

- prepare: where the run writes, and where it starts (fresh, or from a checkpoint);
- build: seed, then the data, model and optimizer from the config (`parts.py`);
- fit: the epochs (`loop.py`), each logged to the tracker and checkpointed;
- finish: the weights, config, data facts, plots and the MLflow model, added to the record.

The tracker (`mnistlab.tracking`) records the run and keeps it safe: its journal, its watchdog
and its output dir's lock live behind `open_run` and `Claim`.
"""

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mnistlab import checkpoint, distributed, tracking
from mnistlab.config import Config, anchor_paths, hydra_output_dir, save_hydra_files, validate
from mnistlab.errors import UserError
from mnistlab.files import write_text
from mnistlab.loop import (
    EpochInterrupted,
    LoopSettings,
    TrainState,
    evaluate,
    seed_everything,
    train_epoch,
)  # fmt: skip
from mnistlab.parts import Parts, build_parts
from mnistlab.run_plots import draw_run_plots
from mnistlab.signals import StopRequest

log = logging.getLogger(__name__)


@dataclass
class Start:
    """Where a run writes and where it starts."""

    cfg: DictConfig  # a resumed run's own config
    output_dir: Path
    checkpoint: dict[str, Any] | None = None  # the one to resume from
    finished: float | None = None  # a sweep job run again that had FINISHED: its best val acc


def train(cfg: DictConfig, output_dir: str | Path | None = None) -> float:
    """Check the config, train it, record the run in MLflow; return its best val accuracy."""
    validate(cfg)
    return run(cfg, output_dir)


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> float:
    """Train a checked config: prepare, build, fit, finish. Returns the best val accuracy."""
    start = prepare(cfg, output_dir)
    if start.finished is not None:
        return start.finished
    cfg, output_dir, rank0 = start.cfg, start.output_dir, distributed.is_main()
    key, then = (
        (f"resume={cfg.resume}", "resume") if start.checkpoint else ("hydra.run.dir", "rerun")
    )
    claim = tracking.Claim(output_dir, key, then) if rank0 else None  # rank 0 records the run
    with claim or contextlib.nullcontext():
        save_hydra_files(cfg, output_dir)
        seed_everything(cfg.seed)
        parts = build_parts(cfg, threads=tracking.threads_per_job())
        state = TrainState()
        if start.checkpoint:  # a checkpoint that does not fit fails here, before the store
            checkpoint.restore(start.checkpoint, parts.model, parts.optimizer)
            state = start.checkpoint["state"]
        log.info(
            f"{type(parts.model).__name__} on {parts.device}: {len(parts.data.train)} train, "
            f"{len(parts.data.val)} val, {len(parts.data.test)} test samples"
        )
        with (
            open_tracker(cfg, claim, parts, start) as tracker,
            StopRequest().installed() as stop,
            logging_redirect_tqdm(),
        ):
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


def prepare(cfg: DictConfig, output_dir: str | Path | None) -> Start:
    """Where the run writes, and where it starts: fresh; from the checkpoint `resume=` names;
    or, for a sweep job run again in the same dir, from its own last.pth, or not at all if its
    earlier run FINISHED (force=true redoes it)."""
    anchor_paths(cfg)
    output_dir = Path(
        output_dir
        or hydra_output_dir()
        or Path("outputs", datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f"))
    )
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
    run_cfg = OmegaConf.merge(OmegaConf.structured(Config), resumed["config"])
    run_cfg.mlflow, run_cfg.resume = (
        cfg.mlflow,
        cfg.resume,
    )  # the store is where the user points now
    return Start(run_cfg, path.parent, resumed)


@contextlib.contextmanager
def open_tracker(cfg: DictConfig, claim: Any, parts: Parts, start: Start):
    """The run's tracker: its MLflow run on rank 0, opened or reopened; nothing elsewhere."""
    if claim is None:
        yield tracking.NoTracker()
        return
    connection = tracking.connect_in_background(cfg)  # overlaps compiling, say
    tags = {
        "device": str(parts.device),
        "torch.threads": str(torch.get_num_threads()),
        "distributed.world_size": str(distributed.world_size()),
    }
    resume = start.checkpoint and (start.checkpoint["run_id"], start.checkpoint["state"].epoch)
    with tracking.open_run(cfg, claim, tags, resume or None, connection) as tracker:
        state = start.checkpoint["state"] if start.checkpoint else TrainState()
        where = f"epoch {state.epoch + 1}" + (f" step {state.step + 1}" if state.step else "")
        uri = tracking.redact(tracking.tracking_uri(cfg))
        log.info(f"MLflow run {tracker.run_id} in {uri}, from {where}")
        yield tracker


def loop_settings(cfg: DictConfig) -> LoopSettings:
    """What the epoch loop reads of the config."""
    return LoopSettings(
        cfg.epochs, cfg.batch_size, cfg.seed, cfg.train.log_every, cfg.device.amp, cfg.train.on_nan
    )


def fit(cfg, parts: Parts, state: TrainState, tracker, stop, output_dir: Path) -> None:
    """Train the epochs left; after each, log its metrics and save a checkpoint. A signal stops
    training between two steps, with a checkpoint of the epoch so far."""
    opts = loop_settings(cfg)
    resume_hint = f"continue with python -m train resume={output_dir}"
    epochs = tqdm(range(state.epoch + 1, cfg.epochs + 1), desc="epochs", disable=None, position=0)
    for epoch in epochs:
        start = time.perf_counter() - state.elapsed_s
        try:
            train_m = train_epoch(parts.net, parts.data, parts.optimizer, state, opts, stop)
        except EpochInterrupted:
            state.elapsed_s = time.perf_counter() - start
            save_checkpoints(cfg, parts, state, tracker, output_dir, improved=False)
            stop.raise_if_requested(f"checkpoint at epoch {epoch} step {state.step}: {resume_hint}")
        epoch_time = time.perf_counter() - start
        metrics = {f"train/{k}": v for k, v in train_m.items()}
        for split in ("val", "test"):
            split_m = evaluate(parts.net, parts.data, getattr(parts.data, split),
                               cfg.train.eval_batch_size, cfg.device.amp)  # fmt: skip
            metrics.update({f"{split}/{k}": v for k, v in split_m.items()})
        tracker.log_epoch(epoch, {**metrics, "epoch_time_s": epoch_time}, state.step_losses)
        log.info(
            f"Epoch {epoch}/{cfg.epochs}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f", {epoch_time:.2f} s"
        )
        epochs.set_postfix(val_acc=f"{metrics['val/acc']:.4f}")
        improved = state.end_epoch(metrics)
        save_checkpoints(cfg, parts, state, tracker, output_dir, improved)
        stop.raise_if_requested(f"checkpoint after epoch {epoch}: {resume_hint}")


def save_checkpoints(cfg, parts: Parts, state: TrainState, tracker, output_dir: Path, improved):
    """On rank 0: write last.pth (and best.pth when val acc improved); upload them if asked."""
    if not distributed.is_main():
        return
    last, best = output_dir / "last.pth", output_dir / "best.pth"
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    about = {"run_id": tracker.run_id, "config": config, "data": parts.data.info()}
    checkpoint.save_checkpoint(last, parts.model, parts.optimizer, state, **about)
    if improved:
        shutil.copyfile(last, output_dir / ".best.pth.tmp")
        os.replace(output_dir / ".best.pth.tmp", best)
    if cfg.checkpoint.log_to_mlflow:
        for path in [last, best] if improved else [last]:
            tracker.log_artifact(path, "checkpoints")


def finish(cfg, parts: Parts, state: TrainState, tracker, output_dir: Path) -> None:
    """Write the run's outputs and add them to its record: the weights, the resolved config,
    the data facts, the plots, the MLflow model, Hydra's files and the log."""
    checkpoint.save_weights(parts.model, output_dir / "model.pth")
    write_text(output_dir / "config.yaml", tracking.redact(OmegaConf.to_yaml(cfg, resolve=True)))
    write_text(output_dir / "data.json", json.dumps(parts.data.info(), indent=1))
    for name in ("model.pth", "config.yaml", "data.json"):
        tracker.log_artifact(output_dir / name)
    if cfg.train.plots:
        draw_run_plots(parts.model, parts.data, state.history, output_dir / "plots")
        tracker.log_artifact(output_dir / "plots", "plots")
    if cfg.mlflow.log_model:
        tracker.log_model(parts.model, parts.data.inputs(parts.data.test.images[:2]))
    tracker.log_artifact(output_dir / ".hydra", ".hydra")
    tracker.log_artifact(output_dir / "train.log")
