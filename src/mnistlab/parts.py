"""The parts of a run, built from the config with `instantiate`: data, model, optimizer; with
runtime values passed at the call site (the seed, the data's shape, the model's parameters).
"""

import re
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnistlab import distributed
from mnistlab.data import Dataset
from mnistlab.device import compiled, resolve_device
from mnistlab.errors import UserError
from mnistlab.loop import steps_per_epoch
from mnistlab.schedules import Schedule


@dataclass
class Parts:
    """What a run trains: the data on its device, model, optimizer, lr schedule and weights' EMA."""

    data: Dataset
    model: nn.Module  # the plain model: its weights are what is saved
    net: nn.Module  # what the loop calls: the model compiled, under DDP with several processes
    optimizer: torch.optim.Optimizer
    device: torch.device
    schedule: Schedule
    ema: AveragedModel | None = None
    threads: int | None = None  # on the CPU: torch's intra-op threads

    @property
    def evaluated(self) -> nn.Module:
        """The model that is evaluated and saved: the moving average if there is one."""
        if self.ema is not None:
            return self.ema.module
        ddp = isinstance(self.net, nn.parallel.DistributedDataParallel)
        return self.net.module if ddp else self.net  # each rank evaluates on its own


def build_part(node: DictConfig, key: str, **runtime):
    """Instantiate `node` (config key `key`) with plain containers (an optimizer reading betas
    from a ListConfig is ~40% slower); a constructor's ValueError `name=...` names the key."""
    try:
        return instantiate(node, _convert_="all", **runtime)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, ValueError) and re.match(r"\w+=", str(cause)):
            raise UserError(f"{key}.{cause}") from None
        raise


def build_parts(cfg: DictConfig, threads: int | None = None) -> Parts:
    """The data on this process's device, and the model and optimizer for it. `threads`: torch's
    CPU threads (a sweep job's share of the cores), unless device.threads sets them."""
    device = distributed.setup(resolve_device(cfg.device.type))  # under torchrun: this rank's
    threads = cfg.device.threads or threads or distributed.cpu_threads()  # share the cores
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    if device.type == "cpu":  # tiny Adam moments and weights as denormals slow each epoch more
        torch.set_flush_denormal(bool(cfg.device.flush_denormal))
    data = build_part(cfg.data, "data", seed=cfg.seed).to(device)
    if cfg.train.overfit_batches:  # a few fixed batches, to check the model can learn at all
        data = data.train_subset(cfg.train.overfit_batches * cfg.batch_size)
    model = build_part(cfg.model, "model", in_shape=data.in_shape, num_classes=data.num_classes)
    model = model.to(device)
    optimizer = build_part(cfg.optimizer, "optimizer", params=model.parameters())
    schedule = build_part(
        cfg.scheduler, "scheduler", optimizer=optimizer, epochs=cfg.epochs,
        steps_per_epoch=steps_per_epoch(len(data.train), cfg.batch_size, cfg.train.max_steps),
    )  # fmt: skip
    ema = None
    if cfg.train.ema_decay is not None:  # buffers too: BatchNorm's statistics are averaged
        ema_fn = get_ema_multi_avg_fn(cfg.train.ema_decay)
        ema = AveragedModel(model, multi_avg_fn=ema_fn, use_buffers=True)
    net = distributed.wrap(compiled(model, cfg.device.compile))  # shares model's parameters
    cpu = torch.get_num_threads() if device.type == "cpu" else None
    return Parts(data, model, net, optimizer, device, schedule, ema, cpu)
