"""Shipped-weights I/O shared by every model: safetensors written atomically, read strictly.

Why strict: a partial load (some tensors missing or of another shape) runs and silently explains
a different network. Every failure raises :class:`WeightsMismatchError` naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn


def safetensors_header(head: bytes) -> tuple[dict, int]:
    """(the JSON header, where the tensor data starts) of a safetensors file whose first bytes are
    ``head`` (8-byte little-endian header length, then the header): what the safetensors library does
    not expose for a file read into memory or copied tensor by tensor. Raises ValueError when ``head``
    is too short or not such a header."""
    import struct

    (n,) = struct.unpack("<Q", head[:8])
    if len(head) < 8 + n:
        raise ValueError(f"header of {n} bytes, only {len(head) - 8} read")
    return json.loads(head[8 : 8 + n]), 8 + n


def weights_format(path: str | os.PathLike) -> str | None:
    """The ``format`` a koch-explore safetensors file names in its header (read without its tensors), or
    None for a file that is missing, unreadable or says none: for choosing a loader, whose strict
    reading then names any problem."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format")
    except Exception:  # safetensors raises several types for a bad header
        return None


class JsonConfig:
    """Mixin of the architecture dataclasses stored in a weights file's header: one JSON text, keys
    sorted (the same config always writes the same header)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls(**json.loads(text))


class WeightsMismatchError(ValueError):
    """Weights that do not belong to this architecture (or are not weights of this kind at all)."""


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, str], metadata: dict | None = None) -> Path:
    """Write ``tensors`` and a string header (``metadata`` values JSON-encoded unless strings)
    to ``path`` via a temporary file and ``os.replace``: a crash never leaves half a file."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update(header)
    tmp = p.with_name(p.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, p)
    return p


def read_weights(path: str | os.PathLike, fmt: str, version: int, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of a file written by :func:`save_weights` with header ``format=fmt``."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} weights not found")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a bad header
        raise WeightsMismatchError(f"{p}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != fmt:
        raise WeightsMismatchError(f"{p}: not koch-explore {what} weights (format={meta.get('format')!r})")
    if meta.get("format_version") != str(version):
        raise WeightsMismatchError(f"{p}: {what} weights format version {meta.get('format_version')}, expected {version}")
    if "config" not in meta:
        raise WeightsMismatchError(f"{p}: no architecture config in the header")
    return tensors, meta


def check_config(path, cfg, expect) -> None:
    """Raise naming every field where the stored architecture ``cfg`` differs from ``expect``."""
    if expect is None or cfg == expect:
        return
    diffs = [f"{k}={getattr(cfg, k)!r} (expected {getattr(expect, k)!r})" for k in asdict(cfg) if getattr(cfg, k) != getattr(expect, k)]
    raise WeightsMismatchError(f"{path}: architecture differs from the expected one: " + ", ".join(diffs))


def load_state_strict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | os.PathLike, what: str) -> None:
    """``load_state_dict`` that names the file and every missing, unexpected or misshapen tensor;
    stored dtypes (fp16) are cast to the module's."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise WeightsMismatchError(f"{source}: weights do not fit this {what} architecture: " + "; ".join(parts))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)


def save_model(path: str | os.PathLike, state: dict[str, torch.Tensor], *, fmt: str, version: int, config: JsonConfig,
               half: bool = False, keep_fp32: tuple[str, ...] = (), header: dict[str, str] | None = None,
               metadata: dict | None = None) -> Path:
    """The one writer of a model's weights (detector, vessel segmenter, synthesizers): ``state`` with float tensors
    as fp16 when ``half`` (half the file; ``keep_fp32`` names those that must stay exact), and a header naming
    the format ``fmt``, its ``version`` and the architecture ``config``, plus ``header`` and ``metadata``.
    Written atomically (:func:`save_weights`); :func:`load_model` reads it back."""
    tensors = {k: v.detach().half() if half and v.is_floating_point() and k not in keep_fp32 else v.detach()
               for k, v in state.items()}
    head = {"format": fmt, "format_version": str(version), "config": config.to_json(), **(header or {})}
    return save_weights(path, tensors, head, metadata)


def load_model(path: str | os.PathLike, *, fmt: str, version: int, what: str, config_cls: type, build, expect=None
               ) -> tuple[nn.Module, dict[str, str]]:
    """The one reader of a model's weights written by :func:`save_model`: the file must say it holds ``fmt``
    weights of ``version``, with an architecture config (equal to ``expect`` when given) that builds, through
    ``build(config)``, a network with exactly its tensors (fp16 on disk are cast back). Every failure is a
    :class:`WeightsMismatchError` naming the file: a network of another shape loaded partly would run and
    silently explain a different model. Returns (the network on the CPU, the file's header)."""
    tensors, meta = read_weights(path, fmt, version, what)
    try:
        cfg = config_cls.from_json(meta["config"])
    except (TypeError, ValueError) as exc:
        raise WeightsMismatchError(f"{path}: unreadable {what} config in the header ({exc})") from exc
    check_config(path, cfg, expect)
    model = build(cfg)
    load_state_strict(model, tensors, path, what)
    return model, meta


# ---------------------------------------------------------------------------------------------
# The registry of shipped weights: name -> file (+ its model card beside it)
# ---------------------------------------------------------------------------------------------

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
"""Where the shipped weights and their model cards live (inside the installed package)."""

SHIPPED: dict[str, dict[str, str]] = {
    "detector": {
        "eyepacs": "detector_eyepacs_256.safetensors",  # o_O-256 on EyePACS + APTOS (the default)
        "phantom": "detector_phantom_256.safetensors",  # o_O-256 on phantoms (exact lesion truth)
    },
    "vessels": {
        "drive": "vessels_drive.safetensors",  # U-Net on the 20 DRIVE training images
    },
    "synthesizer": {
        "real": "synth_cpu256_disc.safetensors",  # whole mode: DRIVE/CHASE hosts, the conv8 bank, optic disc, no stripes (the default)
        "local": "synth_local256.safetensors",  # local mode: lesions grown in grade-0 EyePACS training photos
        "deconvnet": "synth_cpu256_deconvnet.safetensors",  # the first version: the paper's deconvnet bank
        "phantom": "synth_phantom_256.safetensors",  # phantom hosts and bank (embedded data only)
    },
    "bank": {
        "real": "synth_cpu256.bank.safetensors",
        "local": "synth_local256.bank.safetensors",  # off-rim descriptors of 300 EyePACS training eyes
        "deconvnet": "synth_cpu256_deconvnet.bank.safetensors",
        "phantom": "synth_phantom_256.bank.safetensors",
    },
}
"""kind -> shipped name -> file in :data:`WEIGHTS_DIR`. A bank shares its synthesizer's name."""

DEFAULT_NAMES = {"detector": "eyepacs", "vessels": "drive", "synthesizer": "real", "bank": "real"}


def resolve_weights(kind: str, name_or_path: str | os.PathLike | None = None) -> Path:
    """The file for a shipped ``name`` of ``kind`` (None: the default), or ``name_or_path`` itself
    when it is not a shipped name (a user's own file: it must exist)."""
    if kind not in SHIPPED:
        raise ValueError(f"unknown weights kind {kind!r}; one of {sorted(SHIPPED)}")
    key = DEFAULT_NAMES[kind] if name_or_path is None else name_or_path
    if isinstance(key, str) and key in SHIPPED[kind]:
        return WEIGHTS_DIR / SHIPPED[kind][key]
    p = Path(key)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no {kind} weights file (shipped {kind} names: {', '.join(SHIPPED[kind])})")
    return p


def model_card(kind: str, name: str | None = None) -> Path:
    """The model card (Markdown: data, command, seed, hardware, measured figures) of a shipped
    ``kind``/``name``; a bank's card is its synthesizer's."""
    stem = resolve_weights(kind, name).name.split(".")[0]
    return WEIGHTS_DIR / f"{stem}.md"
