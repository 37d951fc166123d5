"""Isolation over thousands of photos: streamed, in shards, resumable, split across torchrun ranks.

``isolate_sharded(detector, paths, out)`` cuts ``paths`` into shards of ``shard_size`` photos
(a multiple of the batch size, so every batch holds the same photos whatever the split). Each shard
is read, explained, isolated and saved as its own bank under ``OUT.shards/`` (atomically, like every
bank), so memory holds one shard's photos at a time and a killed run loses at most the shard it was
on: re-run with the same arguments and it skips the shards on disk. Under ``torchrun`` rank r takes
shards r, r + N, ...; when all are written, rank 0 merges them in shard order into ``OUT``, file to
file (:func:`~.bank.merge_bank_files`), so the bank is the one a single process writes (same
descriptors, same order) and memory stays that of one shard however many photos there are.

A run's arguments (photo list, evidence and cut options, model hash) are fingerprinted in
``OUT.shards/run.json``; a folder written with other arguments is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bank import bank_paths, merge_bank_files

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


def shard_dir(out: str | os.PathLike) -> Path:
    """Where the shards of the bank ``out`` live: ``OUT.shards/`` beside it."""
    p, _ = bank_paths(out)
    return p.with_name(p.stem + ".shards")


def isolate_sharded(detector, paths: Sequence, out: str | os.PathLike, shard_size: int = 64, batch_size: int = 8,
                    progress: bool = True, **options) -> tuple[Path, int] | None:
    """Isolate ``paths`` shard by shard into ``out`` (see the module docstring); ``options`` are
    :func:`~.isolation.isolate_files`'s (method, start, channels, threshold, blur_sigma, min_area,
    min_share, require_disease, weights_label, rule). Returns (the bank's path, its number of
    descriptors) on rank 0, None on other ranks. The shard folder is kept: a later run resumes from it."""
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from .isolation import isolate_files

    if shard_size < 1 or batch_size < 1 or shard_size % batch_size:
        raise ValueError(f"shard_size ({shard_size}) must be a positive multiple of batch_size ({batch_size})")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no photos to isolate")
    distributed = dist.is_available() and dist.is_initialized()
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    folder = shard_dir(out)
    fingerprint = _fingerprint(detector, paths, shard_size, batch_size, options)
    problem = None
    if rank == 0:
        try:
            _claim(folder, fingerprint)
        except ValueError as exc:
            problem = str(exc)
    if distributed:  # every rank learns rank 0's verdict on the folder before any writes into it
        verdict = [problem]
        dist.broadcast_object_list(verdict, src=0)
        problem = verdict[0]
    if problem:
        raise ValueError(problem)

    n_shards = (len(paths) + shard_size - 1) // shard_size
    mine = [k for k in range(n_shards) if k % world == rank]
    todo = [k for k in mine if not _shard_done(folder, k)]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"isolate (rank {rank})" if world > 1 else "isolate",
               unit="shard", disable=not progress)
    for k in todo:
        chunk = paths[k * shard_size:(k + 1) * shard_size]
        bank = isolate_files(detector, chunk, batch_size=batch_size, seed_offset=k * shard_size, **options)
        bank.save(_shard_path(folder, k))
        bar.update(1)
    bar.close()
    if distributed:
        dist.barrier()
    if rank != 0:
        return None
    # streamed file to file: the merge holds one tensor at a time, not the whole bank
    n = merge_bank_files([_shard_path(folder, k) for k in range(n_shards)], out, {"images": len(paths), "shards": n_shards})
    return bank_paths(out)[0], n


def _shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard_{k:05d}.safetensors"


def _shard_done(folder: Path, k: int) -> bool:
    """A shard counts only when its sidecar, written last by ``DescriptorBank.save``, is there."""
    return bank_paths(_shard_path(folder, k))[1].is_file()


def _fingerprint(detector, paths: list[Path], shard_size: int, batch_size: int, options: dict) -> dict:
    listing = hashlib.sha256("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()
    return {"photos": len(paths), "photo_list_sha256": listing, "shard_size": shard_size, "batch_size": batch_size,
            "model": detector.weights_hash(), "options": {k: _plain(v) for k, v in sorted(options.items())}}


def _plain(v):
    if isinstance(v, float) and np.isnan(v):
        return "nan"
    return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


def _claim(folder: Path, fingerprint: dict) -> None:
    """Create the shard folder with the run's fingerprint, or check that it holds this run's shards."""
    run = folder / "run.json"
    if run.is_file():
        try:
            before = json.loads(run.read_text())
        except ValueError:
            raise ValueError(f"{run}: not a readable run record (edited or truncated); remove the folder to start over")
        if before != fingerprint:
            changed = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
            raise ValueError(f"{folder}: shards of another run (different {', '.join(changed)}); "
                             f"use another --out or remove the folder to start over")
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = run.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(fingerprint, indent=1))
    os.replace(tmp, run)
