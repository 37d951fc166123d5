"""Long jobs over thousands of files, cut into shards: resumable, split across torchrun ranks, never mixed.

A job over N items is cut into shards of ``shard_size`` items; each shard's result is written as its own
file (atomically) in a shard folder, so a killed run loses at most the shard it was on and a re-run with
the same arguments skips the shards already there. Under ``torchrun`` rank r takes shards r, r + W, ...;
after a barrier rank 0 merges the shards in order, so the result is the one a single process writes.

The run's arguments are fingerprinted in ``FOLDER/run.json``: a folder written with other arguments is
refused (naming what differs) rather than mixed into the result. Isolation
(:func:`~koch_explore.culture.sharded.isolate_sharded`) and prediction
(:func:`~koch_explore.detect.predict.predict_sharded`) both run through :func:`run_in_shards`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .runtime import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
"""What counts as a photo when a folder is given."""


def image_paths(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their photos (sorted, recursively): one ordered list, so a
    run and its resumption see the same photos in the same order."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise FileNotFoundError(f"{p}: no photos ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            out += found
        else:
            out.append(p)
    return out


def check_batch_size(batch_size: int, shard_size: int = 0) -> None:
    """A batch of at least one photo; a shard a whole number of batches, so every batch holds the same
    photos as in one pass and a sharded run's figures are the one-pass figures."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1")
    if shard_size and (shard_size < 1 or shard_size % batch_size):
        raise ValueError(f"--shard-size {shard_size}: must be a positive multiple of --batch-size ({batch_size})")


def path_list_digest(paths: Sequence[Path]) -> str:
    """sha256 of the resolved paths in order: two runs over the same photos have the same digest."""
    return hashlib.sha256("\n".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()


def plain(v):
    """A JSON-comparable form of an option value (NaN as "nan", objects as their str)."""
    if isinstance(v, float) and np.isnan(v):
        return "nan"
    return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


def claim_shard_folder(folder: Path, fingerprint: dict) -> None:
    """Create ``folder`` with the run's fingerprint, or check that it holds this run's shards; raises
    ValueError naming the folder (and the differing fields) otherwise."""
    run = folder / "run.json"
    if run.is_file():
        try:
            before = json.loads(run.read_text())
        except ValueError:
            raise ValueError(f"{run}: not a readable run record (edited or truncated); remove the folder to start over")
        if before != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(before) if before.get(k) != fingerprint.get(k))
            raise ValueError(f"{folder}: shards of another run (different {', '.join(changed)}); "
                             f"use another --out or remove the folder to start over")
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(run, json.dumps(fingerprint, indent=1))


def run_in_shards(n_items: int, shard_size: int, folder: Path, fingerprint: dict, work: Callable[[int, slice], None],
                  done: Callable[[int], bool], desc: str, progress: bool = True) -> int | None:
    """Run ``work(k, items_slice)`` for each shard of this rank that ``done(k)`` does not report finished.
    ``work`` must write shard k atomically (``done`` is how a re-run finds it). Returns the number of
    shards on rank 0 once every rank is done (rank 0 then merges), None on the other ranks."""
    import torch.distributed as dist
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError(f"shard size {shard_size}: must be at least 1")
    distributed = dist.is_available() and dist.is_initialized()
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    problem = None
    if rank == 0:
        try:
            claim_shard_folder(folder, fingerprint)
        except Exception as exc:  # any failure here must reach every rank, or they wait forever below
            if not distributed:
                raise
            problem = str(exc)
    if distributed:  # every rank learns rank 0's verdict on the folder before any writes into it
        verdict = [problem]
        dist.broadcast_object_list(verdict, src=0)
        problem = verdict[0]
    if problem:
        raise ValueError(problem)

    n_shards = (n_items + shard_size - 1) // shard_size
    mine = [k for k in range(n_shards) if k % world == rank]
    todo = [k for k in mine if not done(k)]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"{desc} (rank {rank})" if world > 1 else desc,
               unit="shard", disable=not progress)
    failure = None
    try:
        for k in todo:
            work(k, slice(k * shard_size, min(n_items, (k + 1) * shard_size)))
            bar.update(1)
    except Exception as exc:  # one rank's bad photo stops every rank (finished shards stay for the re-run)
        if not distributed:
            raise
        failure = exc
    finally:
        bar.close()
    if distributed:
        failures = [None] * world
        dist.all_gather_object(failures, None if failure is None else str(failure))  # the barrier before the merge
        if failure is not None:
            raise failure
        first = next((f for f in failures if f is not None), None)
        if first is not None:
            raise ValueError(first)
    return n_shards if rank == 0 else None
