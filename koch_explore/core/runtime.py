"""Where and how code runs: device choice, bf16 autocast, torchrun (DDP), threads, eval mode, atomic
writes and resume checks. The training loop built on them is :mod:`.training`."""

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


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write(path, data: bytes | str) -> Path:
    """Write ``data`` (text or bytes) to ``path`` through a temporary file and a rename: a reader, or a
    run killed half-way, sees the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def end_distributed() -> None:
    """Leave the torchrun process group if this process joined one (a no-op otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


RESUMABLE_CHANGES = frozenset({"epochs", "steps", "max_minutes", "schedule_minutes", "checkpoint_minutes", "device", "num_threads", "out",
                               "root", "packed", "eval_every", "sample_every", "eval_tta"})
"""Config fields a resumed run may change: how long it runs, where, and how often it reports or saves.
Everything else (data, architecture, optimiser, losses, seeds) shapes the run, so a change is refused."""


def check_resume_config(ckpt_path, saved, current: dict, may_change=RESUMABLE_CHANGES) -> None:
    """Refuse to resume ``ckpt_path`` under another configuration: every field of the checkpoint's
    ``saved`` config (a dict or its JSON) but ``may_change`` must equal ``current`` (compared as JSON).
    Raises ValueError naming each differing field with both values. Checkpoints written before configs
    were stored (``saved`` None) pass."""
    import json

    if saved is None:
        return
    # both sides as JSON sees them (tuples become lists, paths strings), as the checkpoint stored them
    before = json.loads(saved if isinstance(saved, str) else json.dumps(saved, default=str))
    now = json.loads(json.dumps(current, default=str))
    changed = [k for k in sorted(set(before) | set(now)) if k not in may_change and before.get(k) != now.get(k)]
    if changed:
        diffs = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ValueError(f"{ckpt_path}: checkpoint of another configuration ({diffs}{more}); "
                         f"resume with its settings, or train into another --out")


def determinism_note(device) -> str | None:
    """One line to print beside figures computed on ``device``, or None where they are bit-reproducible
    (CPU: the same seed and inputs give byte-identical JSON, tests/test_determinism.py)."""
    if torch.device(device).type != "cuda":
        return None
    return ("note: on CUDA the same seed can give figures that differ in the last digits from run to run (cuDNN picks "
            "convolution algorithms per run; grid_sample/interpolate backward and scatter add with atomics); "
            "on CPU they are byte-identical (docs/gpu.md#determinism)")


DEVICES = "auto, cpu, cuda or cuda:N"
"""The device names every ``--device`` and every ``device=`` of the loaders accept."""


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device for ``name``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``. Anything else, or CUDA where there is none, or a GPU index past the last, raises
    ValueError saying which, before any model or photo is read (torch's own errors come later and
    read as a bug: "Torch not compiled with CUDA enabled", "Expected one of cpu, cuda, ipu, ...")."""
    text = str(name) if isinstance(name, torch.device) else name
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    index = text[len("cuda:"):] if isinstance(text, str) and text.startswith("cuda:") else None
    if text != "cuda" and not (index and index.isascii() and index.isdigit()):
        raise ValueError(f"device {name!r}: expected {DEVICES}")
    if not torch.cuda.is_available():
        why = "a CPU build of torch" if torch.version.cuda is None else "no GPU visible"
        raise ValueError(f"device {text!r}: CUDA is not available on this machine ({why}): use --device cpu or auto")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise ValueError(f"device {text!r}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                         f"(cuda:0 to cuda:{count - 1})")
    return torch.device(text)


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
    CPU) or (1, 0, device) in a plain process. ``device_name`` is checked by :func:`resolve_device`
    first, so a bad one is a ValueError before any process group is started."""
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


def agree_to_stop(stop: bool, world: int, device) -> bool:
    """Rank 0's decision to stop, the same on every rank: one broadcast per step. A time limit read on each
    rank's own clock, or a widget's stop seen only by rank 0, would otherwise let one rank leave the loop
    while the others wait in the next collective (DDP's gradient all-reduce, a barrier) forever. Without
    torchrun (``world`` 1) it is ``stop`` itself, and costs nothing."""
    if world <= 1:
        return bool(stop)
    import torch.distributed as dist

    flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def cpu_budget(cgroup: str | os.PathLike = "/sys/fs/cgroup") -> tuple[int, str]:
    """(cores this process may use, where that came from). ``OMP_NUM_THREADS`` when set wins; otherwise the
    smallest of the CPU affinity (``taskset``), the container's CPU quota (cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded up) and ``CPU_LIMIT`` (what JupyterHub's spawners set).
    Torch's default is the machine's core count, which a quota does not change: 30 students' kernels on a
    quota of one core each would each start a thread per host core."""
    import math

    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given), "OMP_NUM_THREADS"
    limits = [(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), "CPU affinity")]
    root = Path(cgroup)
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            if quota != "max":
                limits.append((max(1, math.ceil(int(quota) / int(period))), "cgroup cpu.max"))
        elif (root / "cpu" / "cpu.cfs_quota_us").is_file():
            quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            if quota > 0:
                limits.append((max(1, math.ceil(quota / period)), "cgroup cpu.cfs_quota_us"))
    except (OSError, ValueError):
        pass  # an unreadable or odd cgroup file: the other limits stand
    try:
        limit = float(os.environ.get("CPU_LIMIT", ""))
        if limit > 0:
            limits.append((max(1, math.ceil(limit)), "CPU_LIMIT"))
    except ValueError:
        pass
    return min(limits)


def set_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count to ``n``, or to :func:`cpu_budget` (the one place the kit decides how
    many threads a notebook uses); returns the count set."""
    n = cpu_budget()[0] if n is None else int(n)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n
