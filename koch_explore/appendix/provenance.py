"""Where an audit's numbers come from: the kit, the model, the data, the seeds and the command, and the
warnings a reviewer needs before reading them."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

EVALUATION_SETS = {
    "eyepacs": "EyePACS validation eyes (grading, sanity, Koch hosts eyepacs-val, competence)",
    "aptos": "APTOS validation eyes (Koch hosts aptos-val, competence)",
    "idrid": "IDRiD lesion images (localisation)",
    "drive": "DRIVE photos (Koch hosts: trees)",
    "chase_db1": "CHASE_DB1 photos (Koch hosts: trees)",
    "phantom": "phantoms (embedded grading, sanity and localisation)",
}
"""The kit's evaluation sets by the dataset they are drawn from: a model trained on one may have seen them."""


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the checkout the kit runs from (with "+dirty" when its tracked files differ), or None
    outside a git checkout (an installed wheel)."""
    here = start or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def model_identity(model) -> dict:
    """The audited model: its class, the weights file and its sha256 (when loaded from one), the sha256 of
    its tensors (the same weights loaded any way give the same), and the adapter's options."""
    source = getattr(model, "source_path", None)
    out = {
        "class": type(model).__name__,
        "wrapped": type(getattr(model, "model", model)).__name__,
        "weights_file": str(source) if source else None,
        "weights_file_sha256": file_sha256(source) if source and Path(source).is_file() else None,
        "tensors_sha256": model.weights_hash() if hasattr(model, "weights_hash") else None,
        "input_size": int(getattr(model, "input_size", 0)) or None,
    }
    if hasattr(model, "options"):
        out["adapter_options"] = model.options()
    return out


def parse_trained_on(values) -> tuple[str, ...]:
    """The datasets a user says the model was trained on (names, or comma-separated lists of them), checked
    against :data:`~koch_explore.appendix.config.DATASETS` (an unknown name is refused in one line)."""
    from .config import DATASETS

    names = tuple(n.strip().lower().replace("-", "_") for given in values for n in str(given).split(",") if n.strip())
    for name in names:
        if name not in DATASETS:
            raise ValueError(f"trained_on: {name!r} is not one of {', '.join(DATASETS)}")
    return names


def trained_on_warnings(trained_on, used: dict[str, int]) -> list[str]:
    """One warning per evaluation set the model may have seen: ``trained_on`` the datasets the user named,
    ``used`` the evaluation sets this audit read (dataset -> images)."""
    out = []
    for key in parse_trained_on(trained_on):
        if used.get(key):
            out.append(f"the model was trained on {key}: the audit's {EVALUATION_SETS.get(key, key)} may include images "
                       f"it saw ({used[key]} read); figures on them can be optimistic")
    return out


def provenance(model, config, data: dict, command: list[str] | None = None, device=None) -> dict:
    """The provenance block of ``audit.json``: kit version and commit, python/torch/numpy versions, device,
    the model's identity, the audit's configuration (seeds included), the data read by each section (root,
    split names, image counts), the date and the exact command."""
    import numpy as np
    import torch

    from .. import __version__

    return {
        "kit": {"name": "koch-explore", "version": __version__, "git_commit": git_commit()},
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device) if device is not None else None,
        "cpu_threads": torch.get_num_threads(),
        "model": model_identity(model),
        "config": asdict(config),
        "data": data,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command) if command else None,
        "cwd": os.getcwd(),
    }
