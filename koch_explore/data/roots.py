"""Where fundus data lives: explicit argument > ``KOCH_DATA`` > ``../shared/data`` > ``./data``."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "KOCH_DATA"


def candidate_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """The roots tried, in priority order (the explicit argument first when given)."""
    out: list[Path] = []
    if root is not None:
        out.append(Path(root).expanduser())
    env = os.environ.get(ENV_VAR)
    if env:
        out.append(Path(env).expanduser())
    # "../shared/data" and "./data" are meant relative to the project checkout; notebooks run
    # with their own folder as cwd, so the checkout (found from this file) is tried as well.
    repo = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repo):
        out.append(base.parent / "shared" / "data")
    for base in (Path.cwd(), repo):
        out.append(base / "data")
    unique: list[Path] = []
    for p in out:
        if p not in unique:
            unique.append(p)
    return unique


def resolve_data_root(root: str | os.PathLike | None = None, *, must_exist: bool = False) -> Path | None:
    """Return the first existing data root.

    An explicit ``root``, and else a set ``KOCH_DATA``, is authoritative: if it is not a directory
    we raise instead of silently falling back, because a typo would otherwise evaluate on a
    different dataset. One that exists but holds no dataset is returned as it is (callers fall back
    to the embedded data per dataset; a command that needs real data names what is missing).
    Returns ``None`` when no default root exists (callers then use the embedded phantom) unless
    ``must_exist`` is set.
    """
    if root is not None:
        p = Path(root).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"data root {p} does not exist or is not a directory")
        return p.resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        # As authoritative as --root: a mistyped KOCH_DATA would otherwise fall through to
        # ../shared/data or the embedded data, and the figures would come from another dataset.
        p = Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"{ENV_VAR}={env}: data root does not exist or is not a directory")
        return p.resolve()
    for p in candidate_roots(None):
        if p.is_dir():
            return p.resolve()
    if must_exist:
        tried = ", ".join(str(p) for p in candidate_roots(None))
        raise FileNotFoundError(f"no fundus data root found (tried {tried}); set {ENV_VAR} or pass --root")
    return None


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of one dataset (e.g. ``"DRIVE"``) under the resolved root; raises if absent."""
    base = resolve_data_root(root, must_exist=True)
    p = base / name
    if not p.is_dir():
        raise FileNotFoundError(f"dataset {name!r} not found under {base}")
    return p
