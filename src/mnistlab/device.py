"""Resolve `cfg.device` to a torch device, failing at setup when the hardware is not there."""

import contextlib

import torch
from torch import nn

from mnistlab.errors import UserError
from mnistlab.options import Amp, Compile, DeviceType


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(kind: DeviceType | str) -> torch.device:
    """Turn `device.type` into a torch.device: auto tries cuda, then mps, then cpu."""
    kind = DeviceType(kind)
    if kind is DeviceType.auto:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if kind is DeviceType.cuda and not torch.cuda.is_available():
        raise UserError(
            f"device=cuda is unavailable: torch {torch.__version__} finds no CUDA GPU here; "
            "use device=auto or device=cpu"
        )
    if kind is DeviceType.mps and not _mps_available():
        raise UserError(
            "device=mps is unavailable: this is not an Apple-silicon Mac with MPS; "
            "use device=auto or device=cpu"
        )
    return torch.device(kind.value)


def autocast(device: torch.device, amp: Amp | str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for `device.amp=bf16`, else a no-op context."""
    if Amp(amp) is Amp.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiled(model: nn.Module, mode: Compile | str) -> nn.Module:
    """The model to call in the loop: `torch.compile`d per `device.compile`, else the model itself
    (parameters are shared: the optimizer and the saved state_dict use the plain model)."""
    mode = Compile(mode)
    return model if mode is Compile.off else torch.compile(model, mode=mode.value)
