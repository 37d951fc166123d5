"""Where and how code runs: device choice, bf16 autocast, torchrun (DDP), eval mode, atomic
checkpoints and the weights' moving average. Shared by every trainer (detector, vessels, synthesizer)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class eval_mode:
    """``with eval_mode(model):`` eval mode inside, the caller's mode restored after."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was)
        return False


class EMA:
    """Exponential moving average of every float tensor in the state (BN running stats included)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float | None = None):
        d = self.decay if decay is None else decay
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[k].lerp_(v.detach(), 1 - d)
            else:
                self.state[k].copy_(v)


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_is_native(device) -> bool:
    """Whether bf16 autocast runs on hardware: CUDA devices that support bf16 (Ampere and later), and
    CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch emulates bf16 on the CPU, many times slower
    (measured: docs/findings/detector.md#bf16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_amp(amp: bool | None, device) -> bool:
    """The autocast switch a run uses: an explicit True/False wins, None follows :func:`bf16_is_native`."""
    return bf16_is_native(device) if amp is None else bool(amp)


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(world size, rank, device) under ``torchrun`` (process group started: NCCL on CUDA, gloo on
    CPU) or (1, 0, device) in a plain process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device
