"""Where the student runs: the torch device, bf16 autocast, and the CPU threads it may use."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a config value: "auto" picks CUDA, then Apple MPS, then the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """Whether to autocast to bf16: "auto" means on CUDA devices that support it, never on the CPU;
    true also works on the CPU (torch autocasts matmuls there; it pays only on CPUs with bf16 units)."""
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if setting == "auto":
        return supported
    if setting and not (supported or device.type == "cpu"):
        raise ValueError(f"train.bf16 is true but {device} has no bf16 support; set it to auto or false")
    return bool(setting)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def limit_cpu_threads() -> None:
    """Leave one core to the rest of the process (Prefect, the store, a teacher server).

    Measured on 2 cores: with the default of one thread per core and another busy process, a
    training step of the tiny student took 60x longer than with one thread (OpenMP threads spin
    while waiting for a core).
    """
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cores - 1)))
