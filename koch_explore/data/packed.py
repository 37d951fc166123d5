"""Graded splits packed once into uint8 safetensors shards, so a training run reads arrays instead of
decoding thousands of photos.

``koch-explore data pack --out DIR`` (or :func:`pack_graded`) reads the splits exactly as
:func:`~koch_explore.data.graded.load_graded` does (the same patient-disjoint split, APTOS train in
the training split when ``aptos``, the same dropped partial frames) and writes, per split, shards of
at most ``max_mib`` MiB each::

    DIR/index.json                  what is where: split -> shards (file, count, bytes, sha256),
                                    the image side, the GradedData settings the splits came from
    DIR/train-00000.safetensors     "images" uint8 (n, S, S, 3), "grades" int64 (n,);
    DIR/train-00001.safetensors     names, patient groups and sources in the header metadata
    DIR/val-00000.safetensors ...

Why shards of bounded size: one file per split would be gigabytes that a copy to another machine
moves whole or not at all, and a reader holds it twice while checking it; a shard is read, hashed
and copied into place one at a time (:func:`load_packed`). Why sha256 in the index: a shard copied
half-way or from another pack is found before a run trains on it, naming the file. Every file is
written to a temporary name and moved into place, and ``index.json`` last: a folder whose index
exists is a complete pack.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from ..core.runtime import atomic_write
from ..core.weights import safetensors_header
from .graded import GradedArrays, GradedData, load_graded

PACK_FORMAT = "koch-explore/packed-graded"
"""The ``format`` of ``index.json`` and of every shard's header."""
PACK_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("train", "val", "aptos_val")
"""The splits :func:`load_graded` can return, in the order they are packed."""
MIB = 1024 * 1024
# Room for the safetensors header besides the names: tensor entries, format keys, alignment.
_HEADER_BYTES = 8192

__all__ = ["INDEX_NAME", "PACK_FORMAT", "PACK_VERSION", "SPLITS", "graded_settings", "load_packed", "pack_graded", "read_pack_index"]


def graded_settings(cfg) -> GradedData:
    """The :class:`GradedData` fields of ``cfg`` (a ``GradedData`` or the detector's ``TrainConfig``,
    which carries the same fields): what decides which eyes land in which split."""
    return GradedData(**{f.name: getattr(cfg, f.name) for f in fields(GradedData)})


def _split_arrays(cfg: GradedData, size: int, splits: tuple[str, ...]):
    """(split, GradedArrays) one split at a time: real photos are decoded per split so only one
    split is in memory at once; phantoms are generated once (their splits come from one draw)."""
    if cfg.data == "phantom":
        arrays = load_graded(cfg, size, splits)
        for split in splits:
            if split in arrays:
                yield split, arrays.pop(split)
        return
    for split in splits:
        arrays = load_graded(cfg, size, (split,))
        if split in arrays:
            yield split, arrays.pop(split)


def _row_bytes(arr: GradedArrays, i: int, size: int) -> int:
    """Bytes image ``i`` adds to a shard: its pixels, its grade, and its name, group and source in
    the header (JSON inside a JSON string: quotes escaped, so counted twice to stay on the safe side)."""
    meta = json.dumps([arr.names[i], arr.groups[i], arr.source[i] if arr.source else ""])
    return size * size * 3 + 8 + 2 * len(meta.encode())


def _shard_bytes(arr: GradedArrays, start: int, stop: int, split: str, size: int) -> bytes:
    import safetensors.numpy

    meta = {
        "format": PACK_FORMAT,
        "format_version": str(PACK_VERSION),
        "split": split,
        "size": str(size),
        "names": json.dumps(arr.names[start:stop]),
        "groups": json.dumps(arr.groups[start:stop]),
        "source": json.dumps(arr.source[start:stop] if arr.source else []),
    }
    tensors = {"images": np.ascontiguousarray(arr.images[start:stop]), "grades": np.ascontiguousarray(arr.grades[start:stop], dtype=np.int64)}
    return safetensors.numpy.save(tensors, metadata=meta)


def pack_graded(cfg: GradedData, size: int, out_dir: str | os.PathLike, max_mib: float = 60.0,
                splits: tuple[str, ...] = SPLITS, progress=None) -> dict:
    """Write the graded splits of ``cfg`` at ``size`` px into ``out_dir`` as shards of at most
    ``max_mib`` MiB (see the module docstring); returns the index written to ``out_dir/index.json``.

    ``cfg`` may be a ``GradedData`` or the detector's ``TrainConfig``. ``progress(message)`` is
    called once per shard written (default: silent). An older pack in ``out_dir`` is replaced, and
    kept until the new one is complete: the new shards carry a run id in their names, so they never
    overwrite the old ones; the index is switched atomically once every split is written, and only then
    are the old shards removed. A run that fails (a photo that does not decode, a missing dataset)
    removes its own shards and leaves the old pack as it was."""
    import time

    from .roots import resolve_data_root

    cfg = graded_settings(cfg)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
    max_bytes = int(max_mib * MIB)
    if size * size * 3 + 8 + _HEADER_BYTES > max_bytes:
        raise ValueError(f"--max-mib {max_mib}: one {size} px image does not fit in a shard")
    root = None if cfg.data == "phantom" else resolve_data_root(cfg.root, must_exist=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = hashlib.sha256(f"{time.time_ns()}-{os.getpid()}".encode()).hexdigest()[:8]
    index = {"format": PACK_FORMAT, "format_version": PACK_VERSION, "size": size, "max_mib": max_mib,
             "graded_data": asdict(cfg), "data_root": None if root is None else str(root), "splits": {}}
    written: set[str] = set()
    try:
        _write_splits(cfg, size, tuple(splits), out, run_id, max_bytes, index, written, progress)
    except BaseException:
        for name in written:  # this run's shards only: the old pack stays whole
            (out / name).unlink(missing_ok=True)
        raise
    atomic_write(out / INDEX_NAME, (json.dumps(index, indent=1) + "\n").encode())
    # The old pack's shards (and any an interrupted run left) are unindexed from here on.
    for old in out.glob("*-*.safetensors"):
        if old.name not in written and old.name.split("-")[0] in SPLITS:
            old.unlink()
    return index


def _write_splits(cfg, size: int, splits: tuple[str, ...], out: Path, run_id: str, max_bytes: int, index: dict,
                  written: set[str], progress) -> None:
    """Decode each split and write its shards (``<split>-<run id>-<k>.safetensors``) into ``out``,
    recording them in ``index`` and their names in ``written`` as they are written."""
    for split, arr in _split_arrays(cfg, size, splits):
        shards, start, n = [], 0, len(arr.grades)
        while start < n:
            stop, used = start, _HEADER_BYTES
            while stop < n and used + (row := _row_bytes(arr, stop, size)) <= max_bytes:
                used += row
                stop += 1
            data = _shard_bytes(arr, start, stop, split, size)
            if len(data) > max_bytes:  # the estimate above is conservative; this would be a bug in it
                raise RuntimeError(f"{split} shard {len(shards)}: {len(data)} bytes over the {max_bytes} byte limit")
            name = f"{split}-{run_id}-{len(shards):05d}.safetensors"
            written.add(name)
            atomic_write(out / name, data)
            shards.append({"file": name, "count": stop - start, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            if progress:
                progress(f"{name}: {stop - start} images, {len(data) / MIB:.1f} MiB")
            start = stop
        index["splits"][split] = {"count": n, "shards": shards}
        del arr  # one split in memory at a time


def read_pack_index(pack_dir: str | os.PathLike) -> dict:
    """The ``index.json`` of a pack folder; FileNotFoundError when there is none, ValueError naming
    the file when it is not a koch-explore pack of a version this code reads."""
    path = Path(pack_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pack index (write one with `koch-explore data pack --out {pack_dir}`)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable pack index ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != PACK_FORMAT:
        raise ValueError(f"{path}: not a koch-explore pack index (format={index.get('format') if isinstance(index, dict) else None!r})")
    if index.get("format_version") != PACK_VERSION:
        raise ValueError(f"{path}: pack format version {index.get('format_version')}, this code reads {PACK_VERSION}")
    return index


def _header_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory (8-byte little-endian header length,
    then the JSON header): read from the same bytes that were hashed, not from a second read."""
    try:
        return safetensors_header(data)[0].get("__metadata__") or {}
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable safetensors header ({exc})") from exc


def load_packed(pack_dir: str | os.PathLike, splits: tuple[str, ...] | None = None, size: int | None = None) -> dict[str, GradedArrays]:
    """The splits of a pack written by :func:`pack_graded`, as :func:`load_graded` returns them
    (bit-identical arrays). ``splits`` limits what is read (default: every split in the pack);
    ``size`` refuses a pack at another image side. Every shard is checked against the index (sha256,
    count, shape, dtype) before its images are used: a mismatch raises ValueError naming the file."""
    import safetensors.numpy

    pack_dir = Path(pack_dir)
    index = read_pack_index(pack_dir)
    side = int(index["size"])
    if size is not None and side != size:
        raise ValueError(f"{pack_dir / INDEX_NAME}: packed at {side} px, {size} px needed (pack again with --size {size})")
    wanted = tuple(index["splits"]) if splits is None else splits
    out = {}
    for split in wanted:
        if split not in index["splits"]:
            raise ValueError(f"{pack_dir / INDEX_NAME}: no {split!r} split in this pack (it has {list(index['splits'])})")
        entry = index["splits"][split]
        n = int(entry["count"])
        images = np.empty((n, side, side, 3), dtype=np.uint8)
        grades = np.empty(n, dtype=np.int64)
        names: list[str] = []
        groups: list[str] = []
        source: list[str] = []
        at = 0
        for shard in entry["shards"]:
            path = pack_dir / shard["file"]
            if not path.is_file():
                raise ValueError(f"{path}: shard listed in {INDEX_NAME} is missing")
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest != shard["sha256"]:
                raise ValueError(f"{path}: sha256 {digest[:12]}... differs from the index's {shard['sha256'][:12]}... (corrupt or from another pack)")
            meta = _header_metadata(data, path)
            try:
                tensors = safetensors.numpy.load(data)
            except Exception as exc:  # safetensors raises several types for a bad file
                raise ValueError(f"{path}: unreadable shard ({exc})") from exc
            k = int(shard["count"])
            img, grd = tensors.get("images"), tensors.get("grades")
            if img is None or grd is None or img.dtype != np.uint8 or img.shape != (k, side, side, 3) or grd.shape != (k,):
                got = None if img is None else (img.dtype.name, img.shape)
                raise ValueError(f"{path}: images {got} do not match the index's {k} x {side} x {side} x 3 uint8")
            if at + k > n:
                raise ValueError(f"{path}: the shards of {split!r} hold more than the index's {n} images")
            images[at : at + k] = img
            grades[at : at + k] = grd
            del data, tensors, img  # one shard's bytes at a time
            names += json.loads(meta.get("names", "[]"))
            groups += json.loads(meta.get("groups", "[]"))
            source += json.loads(meta.get("source", "[]"))
            at += k
        if at != n or len(names) != n or len(groups) != n:
            raise ValueError(f"{pack_dir / INDEX_NAME}: split {split!r} lists {n} images, its shards hold {at} ({len(names)} names)")
        out[split] = GradedArrays(images, grades, names, groups, source)
    return out
