"""Data-parallel training under `torchrun`: one process per device, gradients all-reduced.

`torchrun --nproc_per_node=N -m train ...` starts N copies of the run, each training on its shard
of every epoch's batches (one step sees `batch_size * N`); rank 0 alone logs and checkpoints.
"""

import logging
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world_size() -> int:
    """How many processes train together (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process logs, checkpoints and reports (rank 0)."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, nccl on CUDA) and pick this rank's GPU."""
    if world_size() == 1 or dist.is_initialized():
        return device
    if not is_main():  # rank 0 tells the story once
        logging.getLogger("mnistlab").setLevel(logging.WARNING)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def cpu_threads() -> int | None:
    """Torch threads for one of this machine's torchrun processes on the CPU: its share of the
    cores it may run on (its CPU affinity: taskset, SLURM's cpuset)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    affinity = getattr(os, "sched_getaffinity", None)  # Linux's; elsewhere every core
    cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    return max(1, cores // local) if local > 1 else None


def wrap(model: nn.Module) -> nn.Module:
    """The model under DistributedDataParallel when several processes train, else itself."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None
    )


def shard(order: Tensor) -> Tensor:
    """This rank's part of an epoch's shuffled sample order; every rank gets as many samples
    (the last `len % N` of the order are left out of this epoch) so all take the same steps."""
    n = world_size()
    return order if n == 1 else order[: len(order) - len(order) % n][rank() :: n]


def sum_all(*values: Tensor) -> list[Tensor]:
    """Each value summed over all processes (one all-reduce)."""
    if world_size() == 1:
        return list(values)
    flat = torch.stack([v.detach().double() for v in values])
    dist.all_reduce(flat)
    return [f.to(v.dtype) for f, v in zip(flat, values, strict=True)]


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
