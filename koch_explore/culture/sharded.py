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

import os
from collections.abc import Sequence
from pathlib import Path

from ..core.shards import check_batch_size, path_list_digest, plain, run_in_shards
from .bank import bank_paths, merge_bank_files


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
    from .isolation import isolate_files

    check_batch_size(batch_size, shard_size)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no photos to isolate")
    folder = shard_dir(out)
    fingerprint = {"photos": len(paths), "photo_list_sha256": path_list_digest(paths), "shard_size": shard_size,
                   "batch_size": batch_size, "model": detector.weights_hash(),
                   "options": {k: plain(v) for k, v in sorted(options.items())}}

    def work(k: int, items: slice) -> None:
        bank = isolate_files(detector, paths[items], batch_size=batch_size, seed_offset=items.start, **options)
        bank.save(_shard_path(folder, k))

    n_shards = run_in_shards(len(paths), shard_size, folder, fingerprint, work,
                             lambda k: bank_paths(_shard_path(folder, k))[1].is_file(), "isolate", progress)
    if n_shards is None:
        return None
    # streamed file to file: the merge holds one tensor at a time, not the whole bank
    n = merge_bank_files([_shard_path(folder, k) for k in range(n_shards)], out, {"images": len(paths), "shards": n_shards})
    return bank_paths(out)[0], n


def _shard_path(folder: Path, k: int) -> Path:
    """Shard k's bank; it counts as done only when its sidecar, written last by ``DescriptorBank.save``, is there."""
    return folder / f"shard_{k:05d}.safetensors"
