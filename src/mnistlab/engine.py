"""The training run: build everything from the config, then train, evaluate and log each epoch."""

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mnistlab import checkpoint, distributed, tracking
from mnistlab.checkpoint import atomic_write, save_state_dict
from mnistlab.config import Amp, Config, ConfigError, OnNan, validate
from mnistlab.data import Dataset, Split
from mnistlab.device import autocast, compiled, resolve_device
from mnistlab.signals import StopRequest
from mnistlab.sweep import in_multirun, threads_per_job
from mnistlab.watchdog import in_use

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf (with train.on_nan=stop)."""


def build(node: DictConfig, **kwargs):
    """`instantiate` with plain Python containers (an optimizer reading its betas from a ListConfig
    every step is ~40% slower), letting a component's ConfigError through unwrapped."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling RNG of one epoch: a function of (seed, epoch) alone, so it can be replayed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def check_finite(loss: float, where: str, on_nan: OnNan) -> None:
    """Raise NonFiniteLossError for a NaN or inf loss unless train.on_nan=ignore."""
    if OnNan(on_nan) is OnNan.stop and not math.isfinite(loss):
        raise NonFiniteLossError(
            f"train loss is {loss} at {where}: lower lr, or set train.on_nan=ignore to keep going"
        )


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: Dataset, split: Split, batch_size: int, amp: Amp = Amp.none
) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of `model` over `split`."""
    model.eval()
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    for inputs, labels in data.batches(split, batch_size):
        with autocast(data.device, amp):
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    return {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}


class EpochInterrupted(Exception):
    """A signal stopped the epoch between two steps; `state` lets a resume finish the epoch."""

    def __init__(self, state: dict):
        super().__init__(f"stopped at step {state['step']}")
        self.state = state


def train_epoch(
    model, data, optimizer, cfg: DictConfig, epoch: int, step_losses: list, stop=None, partial=None
) -> dict:
    """One pass over the shuffled train split (from `partial`'s step on, for an epoch resumed
    midway); appends (global step, loss) every log_every steps; stops between steps on `stop`."""
    model.train()
    split, every, done = data.train, cfg.train.log_every, partial["step"] if partial else 0
    ranks = distributed.world_size()  # under torchrun each rank trains on 1/ranks of the split
    trained = len(split) - len(split) % ranks
    steps = math.ceil(trained // ranks / cfg.batch_size)
    sums = partial if partial and distributed.is_main() else {"loss_sum": 0.0, "correct": 0}
    loss_sum = torch.tensor(sums["loss_sum"], device=data.device)  # rank 0 holds the sums so far
    correct = torch.tensor(sums["correct"], device=data.device)
    bar = tqdm(  # samples/s and the loss; off when stderr is not a terminal (CI logs)
        total=len(split), desc=f"epoch {epoch}", unit="img", unit_scale=True, disable=None,
        leave=False, position=1, initial=min(done * cfg.batch_size, len(split)),
    )  # fmt: skip
    shuffled = data.batches(split, cfg.batch_size, epoch_generator(cfg.seed, epoch), skip=done)
    for i, (inputs, labels) in enumerate(shuffled, start=done + 1):
        with autocast(data.device, cfg.device.amp):
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        bar.update(len(labels))
        stopping = bool(stop) and ranks == 1  # several ranks stop together, at a log step
        if i % every == 0:  # the only host sync inside the epoch: all ranks agree here
            flag = torch.tensor(float(bool(stop)), device=loss.device)
            total, stops = distributed.sum_all(loss, flag)
            value, stopping = total.item() / ranks, stops.item() > 0
            check_finite(value, f"epoch {epoch} step {i}", cfg.train.on_nan)
            step_losses.append(((epoch - 1) * steps + i, value))
            bar.set_postfix(loss=f"{value:.4f}")
            log.info(
                f"Epoch [{epoch:>3d} / {cfg.epochs:>3d}] Step [{i:>6d} / {steps:>6d}] "
                f"Loss: {value:>7f}"
            )
        if stopping and i < steps:  # Ctrl-C or SIGTERM: the caller checkpoints the epoch so far
            bar.close()
            loss_sum, correct = distributed.sum_all(loss_sum, correct)
            sums = {"loss_sum": loss_sum.item(), "correct": correct.item()}
            raise EpochInterrupted({"step": i, **sums, "step_losses": list(step_losses)})
    bar.close()
    loss_sum, correct = distributed.sum_all(loss_sum, correct)
    metrics = {"loss": loss_sum.item() / trained, "acc": correct.item() / trained}
    check_finite(metrics["loss"], f"the end of epoch {epoch}", cfg.train.on_nan)
    return metrics


def finished_before(cfg: DictConfig, last: Path) -> float | None:
    """For a sweep job run again: its best val acc if its earlier run FINISHED, else None."""
    state = checkpoint.load_checkpoint(last)
    client, _ = tracking.connect(cfg)
    if client.get_run(state["run_id"]).info.status == "FINISHED":
        log.info(f"Job already FINISHED as run {state['run_id']}: skipped (force=true redoes it)")
        return state["best_val_acc"]
    return None


def resume_point(cfg: DictConfig) -> tuple[DictConfig, Path, dict]:
    """For `resume=...`: the run's own config, its output dir and its last checkpoint."""
    path = checkpoint.find_checkpoint(cfg.resume, cfg)
    holder = in_use(path.parent)
    if holder:  # two processes would write the same checkpoints and run
        raise ConfigError(
            f"resume={cfg.resume}: another process is using {path.parent} (process {holder}); "
            "wait for it to end or stop it, then resume"
        )
    state = checkpoint.load_checkpoint(path)
    run_cfg = OmegaConf.merge(OmegaConf.structured(Config), state["config"])
    run_cfg.mlflow = cfg.mlflow  # the store is where the user points now
    return run_cfg, path.parent, state


def train(cfg: DictConfig, output_dir: str | Path | None = None) -> float:
    """Train the configured model, record the run in MLflow, and return its best val accuracy."""
    validate(cfg)
    output_dir = Path(
        output_dir
        or tracking.hydra_context()["output_dir"]
        or Path("outputs", datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f"))
    )
    if in_multirun() and not cfg.force and (output_dir / "last.pth").is_file():
        done = finished_before(cfg, output_dir / "last.pth")  # a rerun of the same sweep
        if done is not None:
            return done
        cfg.resume = str(output_dir / "last.pth")
    state = None
    if cfg.resume:
        cfg, output_dir, state = resume_point(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    tracking.save_hydra_files(cfg, output_dir)
    seed_everything(cfg.seed)
    device = distributed.setup(resolve_device(cfg.device))  # under torchrun: this rank's device
    main = distributed.is_main()  # rank 0 alone logs and writes checkpoints
    threads = cfg.device.threads or threads_per_job() or distributed.cpu_threads()  # share cores
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    data = build(cfg.data, seed=cfg.seed).to(device)
    model = build(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes).to(device)
    optimizer = build(cfg.optimizer, params=model.parameters())
    first_epoch, best_val_acc, partial = 1, -1.0, None
    if state:  # a checkpoint that does not fit fails here, before the store is touched
        checkpoint.restore(state, model, optimizer)
        first_epoch, best_val_acc = state["epoch"] + 1, state["best_val_acc"]
        partial = state.get("partial")  # stopped midway through first_epoch
    connection = main and tracking.connect_in_background(cfg)  # overlaps compiling, say
    net = compiled(model, cfg.device.compile)  # shares model's parameters
    trainer = distributed.wrap(net)  # DistributedDataParallel under torchrun: grads all-reduced
    log.info(
        f"{type(model).__name__} on {device}: {len(data.train)} train, "
        f"{len(data.val)} val, {len(data.test)} test samples"
    )

    run_tags = {
        "device": str(device),
        "torch.threads": str(torch.get_num_threads()),
        "distributed.world_size": str(distributed.world_size()),
    }
    resume_id = state and state["run_id"]
    with (
        StopRequest().installed() as stop,
        tracking.start_run(cfg, output_dir, run_tags, connection, resume_id)
        if main
        else contextlib.nullcontext(tracking.NoRun()) as run,
        logging_redirect_tqdm(),
    ):
        uri = tracking.shown(tracking.tracking_uri(cfg))
        where = f"epoch {first_epoch}" + (f" step {partial['step'] + 1}" if partial else "")
        log.info(f"MLflow run {run.run_id} in {uri}, from {where}")
        logged = run.catch_up(first_epoch - 1)  # journal epochs the store missed are sent now
        epochs = tqdm(range(first_epoch, cfg.epochs + 1), desc="epochs", disable=None, position=0)
        for epoch in epochs:
            step_losses = list(partial["step_losses"]) if partial else []
            start = time.perf_counter() - (partial["elapsed_s"] if partial else 0.0)
            try:
                train_m = train_epoch(
                    trainer, data, optimizer, cfg, epoch, step_losses, stop, partial
                )
            except EpochInterrupted as paused:
                paused.state["elapsed_s"] = time.perf_counter() - start
                if main:
                    save_checkpoints(
                        run, output_dir, model, optimizer, epoch - 1, best_val_acc, cfg, False,
                        data.info(), partial=paused.state,
                    )  # fmt: skip
                stop.raise_if_requested(
                    f"checkpoint at epoch {epoch} step {paused.state['step']}: "
                    f"continue with python -m train resume={output_dir}"
                )
            partial = None
            epoch_time = time.perf_counter() - start
            val_m = evaluate(net, data, data.val, cfg.train.eval_batch_size, cfg.device.amp)
            test_m = evaluate(net, data, data.test, cfg.train.eval_batch_size, cfg.device.amp)
            metrics = {
                f"{name}/{key}": value
                for name, split_m in (("train", train_m), ("val", val_m), ("test", test_m))
                for key, value in split_m.items()
            }
            if epoch > logged:
                run.log_epoch(epoch, {**metrics, "epoch_time_s": epoch_time}, step_losses)
            log.info(
                f"Epoch {epoch}/{cfg.epochs}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                + f", {epoch_time:.2f} s"
            )
            epochs.set_postfix(val_acc=f"{val_m['acc']:.4f}")
            improved = val_m["acc"] > best_val_acc
            best_val_acc = max(best_val_acc, val_m["acc"])
            if main:
                save_checkpoints(
                    run, output_dir, model, optimizer, epoch, best_val_acc, cfg, improved,
                    data.info(),
                )  # fmt: skip
            stop.raise_if_requested(
                f"checkpoint after epoch {epoch}: continue with python -m train resume={output_dir}"
            )

        distributed.teardown()
        if not main:  # the other ranks are done: rank 0 writes the outputs
            return best_val_acc
        run.flush(cfg.mlflow.offline_wait_s)  # the store has every epoch before the plots
        save_state_dict(model, output_dir / "model.pth")
        resolved = tracking.shown(OmegaConf.to_yaml(cfg, resolve=True)).encode()
        atomic_write(output_dir / "config.yaml", lambda f: f.write(resolved))
        info = json.dumps(data.info(), indent=1).encode()
        atomic_write(output_dir / "data.json", lambda f: f.write(info))
        for name in ("model.pth", "config.yaml", "data.json"):
            run.log_artifact(output_dir / name)
        if cfg.train.plots:
            from mnistlab.evaluate import draw_run_plots

            draw_run_plots(model, data, run.history(), output_dir / "plots")
            run.log_artifact(output_dir / "plots", "plots")
        if cfg.mlflow.log_model:
            run.log_pytorch_model(model, data.inputs(data.test.images[:2]))
        run.log_artifact(output_dir / ".hydra", ".hydra")
        run.log_artifact(output_dir / "train.log")
    log.info(f"Best val acc {best_val_acc:.4f}; outputs in {output_dir}")
    log.info(f"MLflow run {run.run_id}: {tracking.how_to_open(tracking.tracking_uri(cfg), run)}")
    return best_val_acc


def save_checkpoints(
    run, output_dir, model, optimizer, epoch, best_val_acc, cfg, improved, data_info, partial=None
):
    """Write last.pth (and best.pth when val acc improved), uploading them if configured;
    `partial` is the state of the epoch after `epoch` when a signal stopped it midway."""
    last = output_dir / "last.pth"
    checkpoint.save_checkpoint(
        last,
        model=model,
        optimizer=optimizer,
        epoch=epoch,
        best_val_acc=best_val_acc,
        run_id=run.run_id,
        cfg=cfg,
        data_info=data_info,
        partial=partial,
    )
    names = [last]
    if improved:
        shutil.copyfile(last, output_dir / ".best.pth.tmp")
        os.replace(output_dir / ".best.pth.tmp", output_dir / "best.pth")
        names.append(output_dir / "best.pth")
    if cfg.checkpoint.log_to_mlflow:
        for path in names:
            run.upload_later(path, "checkpoints")
