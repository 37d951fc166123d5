"""Postulate 2, the bank: descriptors kept together, selected, placed (relocate / rotate / scale /
count), rendered to per-layer canvases for the synthesizer, saved atomically and loaded strictly."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from ..core.geometry import Box, boxes_overlap, disc_fov
from ..core.weights import resolve_weights
from .descriptor import Descriptor, grid_transform, shift_transform, snapped

FORMAT = "koch-explore/descriptor-bank"
SCHEMA_VERSION = 1
RANK_KEYS = ("integrated", "peak", "score", "severity_share")
"""What :meth:`DescriptorBank.ranked` orders by."""


class BankMismatchError(ValueError):
    """A bank cut with other detector weights than the ones it is being used with."""


class BankFormatError(ValueError):
    """A bank file (tensors or JSON sidecar) that is missing, unreadable or inconsistent."""


# ---------------------------------------------------------------------------------------------
# 4. The bank
# ---------------------------------------------------------------------------------------------


@dataclass
class RenderedLayout:
    """A bank drawn onto an empty canvas: what the synthesizer consumes.

    ``features`` / ``activations``: layer -> float32 (C, h, w) at that layer's grid for a canvas of
    ``size``, zero except under the placed layer masks (a later descriptor overwrites an earlier
    one where they overlap). ``layer_masks``: layer -> bool (h, w). ``mask``: bool (H, W) union of
    placed masks; ``evidence``: float32 (H, W); ``boxes``, ``sources``, ``types``: per placement.
    """

    size: tuple[int, int]
    mask: np.ndarray
    evidence: np.ndarray
    features: dict[str, np.ndarray]
    activations: dict[str, np.ndarray]
    layer_masks: dict[str, np.ndarray]
    boxes: list[Box]
    sources: list[str]
    types: list[str | None]


def _indices(i, n: int) -> list[int]:
    if i is None or (isinstance(i, str) and i == "all"):
        return list(range(n))
    idx = [int(i)] if isinstance(i, (int, np.integer)) else [int(j) for j in i]
    bad = [j for j in idx if not -n <= j < n]
    if bad:
        raise IndexError(f"descriptor indices {bad} out of range for a bank of {n}")
    return [j % n for j in idx]


class DescriptorBank:
    """An ordered collection of :class:`Descriptor` cut with one detector.

    ``DescriptorBank(isolate(...), detector_hash=det.weights_hash())`` takes isolate's
    per-image lists as they are. Every operation returns a new bank; descriptors are frozen and
    shared between banks until a placement op replaces one.
    """

    def __init__(self, descriptors: Iterable = (), detector_hash: str | None = None, info: Mapping[str, Any] | None = None):
        self.descriptors: list[Descriptor] = []
        self.detector_hash = detector_hash
        self.info: dict[str, Any] = dict(info or {})
        self.extend(descriptors)

    # -- collection ------------------------------------------------------------------------

    def add(self, descriptor: Descriptor) -> None:
        if not isinstance(descriptor, Descriptor):
            raise TypeError(f"expected a Descriptor, got {type(descriptor).__name__}")
        self.descriptors.append(descriptor)

    def extend(self, items: Iterable) -> None:
        """Add descriptors, isolate's list of lists, or another bank (same detector)."""
        if isinstance(items, DescriptorBank):
            if self.detector_hash and items.detector_hash and items.detector_hash != self.detector_hash:
                raise BankMismatchError(f"cannot merge banks of different detectors ({self.detector_hash} vs {items.detector_hash})")
            self.detector_hash = self.detector_hash or items.detector_hash
        for item in items:
            if isinstance(item, (list, tuple)):
                for d in item:
                    self.add(d)
            else:
                self.add(item)

    def __len__(self) -> int:
        return len(self.descriptors)

    def __iter__(self) -> Iterator[Descriptor]:
        return iter(self.descriptors)

    def __getitem__(self, i: int) -> Descriptor:
        return self.descriptors[i]

    def __repr__(self) -> str:
        return f"DescriptorBank({len(self)} descriptors, layers={self.layers}, detector={str(self.detector_hash)[:12]})"

    @property
    def layers(self) -> list[str]:
        return sorted({n for d in self for n in d.layers})

    def _new(self, descriptors: Iterable[Descriptor]) -> "DescriptorBank":
        return DescriptorBank(list(descriptors), self.detector_hash, self.info)

    def copy(self) -> "DescriptorBank":
        """A deep copy: every array duplicated."""

        def dup(d: Descriptor) -> Descriptor:
            return replace(
                d, mask=d.mask.copy(), evidence=d.evidence.copy(),
                norm_patch=None if d.norm_patch is None else d.norm_patch.copy(),
                features={k: v.copy() for k, v in d.features.items()},
                activations={k: v.copy() for k, v in d.activations.items()},
                grams={k: v.copy() for k, v in d.grams.items()},
                layer_sizes=dict(d.layer_sizes),
            )

        return DescriptorBank([dup(d) for d in self], self.detector_hash, json.loads(json.dumps(self.info)))

    def select(self, min_area=None, max_area=None, min_score=None, types=None, sources=None, indices=None) -> "DescriptorBank":
        """The descriptors meeting every given condition (``types`` / ``sources``: collections)."""
        keep = set(_indices(indices, len(self))) if indices is not None else None
        types = None if types is None else {types} if isinstance(types, str) else set(types)
        sources = None if sources is None else {sources} if isinstance(sources, str) else set(sources)
        out = []
        for j, d in enumerate(self):
            if (keep is not None and j not in keep) or (min_area is not None and d.area < min_area) \
                    or (max_area is not None and d.area > max_area) or (min_score is not None and not d.score >= min_score) \
                    or (types is not None and d.type not in types) or (sources is not None and d.source not in sources):
                continue
            out.append(d)
        return self._new(out)

    # -- placement ---------------------------------------------------------------------------

    def _replace(self, idx: list[int], new: Sequence[Descriptor]) -> "DescriptorBank":
        out = list(self.descriptors)
        for j, d in zip(idx, new):
            out[j] = d
        return self._new(out)

    def ranked(self, by: str = "integrated") -> "DescriptorBank":
        """A new bank, strongest first by ``by``: "integrated" (the evidence a component holds),
        "peak", "score" (mean evidence) or "severity_share"; nan (not recorded) sorts last."""
        if by not in RANK_KEYS:
            raise ValueError(f"rank by {by!r}: one of {RANK_KEYS}")
        value = lambda d: float(getattr(d, by))  # noqa: E731
        order = sorted(range(len(self)), key=lambda i: (np.isnan(value(self[i])), -np.nan_to_num(value(self[i]))))
        return self._new([self[i] for i in order])

    def relocate(self, i=None, to=(0.0, 0.0), snap: int = 8) -> "DescriptorBank":
        """Move descriptor(s) ``i`` (int, indices, or None = all). ``to``: one (x, y) — for one
        descriptor its new centroid, for several the new mean centroid (the group keeps its
        layout) — or one (x, y) per index. Displacements snap to multiples of ``snap`` px."""
        idx = _indices(i, len(self))
        pts = np.asarray(to, np.float64)
        if pts.ndim == 1:
            mean = np.mean([self[j].centroid for j in idx], axis=0)
            dx, dy = snapped(pts[0] - mean[0], snap), snapped(pts[1] - mean[1], snap)
            return self._replace(idx, [self[j].warped(shift_transform(dx, dy), snap=snap) for j in idx])
        if pts.shape != (len(idx), 2):
            raise ValueError(f"{len(pts)} target points for {len(idx)} descriptors")
        return self._replace(idx, [self[j].relocated(tuple(p), snap) for j, p in zip(idx, pts)])

    def rotate(self, i=None, degrees: float = 0.0) -> "DescriptorBank":
        """Rotate descriptor(s) ``i`` about their own centroids (counter-clockwise on screen)."""
        idx = _indices(i, len(self))
        return self._replace(idx, [self[j].rotated(degrees) for j in idx])

    def scale(self, i=None, factor: float = 1.0) -> "DescriptorBank":
        """Scale descriptor(s) ``i`` about their own centroids by a linear ``factor``."""
        idx = _indices(i, len(self))
        return self._replace(idx, [self[j].scaled(factor) for j in idx])

    def count(self, n: int, seed: int = 0, fov=None, snap: int = 8, tries: int = 200) -> "DescriptorBank":
        """Exactly ``n`` descriptors: a random subset (without replacement, order kept) when
        ``n <= len``; otherwise all of them plus ``n - len`` copies of randomly drawn ones, each
        moved to a random position whose snapped centroid lies inside ``fov`` (bool (H, W); default
        the inscribed disc) and whose box overlaps no other placement, when ``tries`` allow."""
        if n < 0:
            raise ValueError(f"count must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        if n <= len(self):
            return self.select(indices=sorted(rng.choice(len(self), size=n, replace=False).tolist()))
        if not len(self):
            raise ValueError("cannot repeat descriptors from an empty bank")
        out = list(self.descriptors)
        fovs: dict[tuple[int, int], np.ndarray] = {}
        for j in rng.choice(len(self), size=n - len(self), replace=True):
            d = self[int(j)]
            if d.image_size not in fovs:
                fovs[d.image_size] = disc_fov(d.image_size) if fov is None else np.asarray(fov, bool)
                if fovs[d.image_size].shape != d.image_size:
                    raise ValueError(f"FOV mask {fovs[d.image_size].shape} does not match the descriptors' image {d.image_size}")
            f = fovs[d.image_size]
            ys, xs = np.nonzero(f)
            placed = fallback = None
            for _ in range(tries):
                k = rng.integers(len(ys))
                cand = d.relocated((float(xs[k]), float(ys[k])), snap)
                cy, cx = int(round(cand.centroid[1])), int(round(cand.centroid[0]))
                if not (0 <= cy < f.shape[0] and 0 <= cx < f.shape[1] and f[cy, cx]):
                    continue
                fallback = fallback or cand
                if not any(boxes_overlap(cand.bbox, o.bbox) for o in out):
                    placed = cand
                    break
            out.append(placed or fallback or d)
        return self._new(out)

    def render(self, size: int | tuple[int, int] | None = None, layers: Sequence[str] | None = None, fov=None) -> RenderedLayout:
        """Paste every descriptor, masked, onto empty canvases of ``size`` (default: the
        descriptors' image size; another size rescales boxes and layer grids with it)."""
        if size is None:
            if not len(self):
                raise ValueError("render an empty bank with an explicit size")
            size = self[0].image_size
        hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        names = self.layers if layers is None else list(layers)
        unknown = [n for n in names if n not in self.layers]
        if unknown and len(self):
            raise KeyError(f"layers {unknown} are not in the bank; it has {self.layers}")
        mask = np.zeros(hw, bool)
        evidence = np.zeros(hw, np.float32)
        feats: dict[str, np.ndarray] = {}
        acts: dict[str, np.ndarray] = {}
        lmasks: dict[str, np.ndarray] = {}
        boxes, sources, types = [], [], []
        for d in self:
            if d.image_size != hw:
                d = d.warped(grid_transform(hw[0] / d.image_size[0], hw[1] / d.image_size[1]), image_size=hw)
            x0, y0, x1, y1 = d.bbox
            mask[y0:y1, x0:x1] |= d.mask
            evidence[y0:y1, x0:x1][d.mask] = d.evidence[d.mask]
            for n in names:
                if n not in d.layer_sizes:
                    continue
                lm = d.layer_mask(n)
                lx0, ly0, lx1, ly1 = d.layer_box(n)
                for store, patches in ((feats, d.features), (acts, d.activations)):
                    if n not in patches:
                        continue
                    canvas = store.setdefault(n, np.zeros((patches[n].shape[0], *d.layer_sizes[n]), np.float32))
                    if canvas.shape != (patches[n].shape[0], *d.layer_sizes[n]):
                        raise ValueError(f"layer {n}: descriptor from {d.source!r} has grid {d.layer_sizes[n]}, the canvas {canvas.shape[1:]}")
                    canvas[:, ly0:ly1, lx0:lx1][:, lm] = patches[n][:, lm]
                lmasks.setdefault(n, np.zeros(d.layer_sizes[n], bool))[ly0:ly1, lx0:lx1] |= lm
            boxes.append(d.bbox)
            sources.append(d.source)
            types.append(d.type)
        if fov is not None:
            f = np.asarray(fov, bool)
            if f.shape != hw:
                raise ValueError(f"FOV mask {f.shape} does not match the canvas {hw}")
            mask &= f
            evidence *= f
            for n, lm in lmasks.items():
                fl = cv2.resize(f.astype(np.float32), lm.shape[::-1], interpolation=cv2.INTER_AREA) >= 0.5
                lm &= fl
                for store in (feats, acts):
                    if n in store:
                        store[n] *= fl
        return RenderedLayout(hw, mask, evidence, feats, acts, lmasks, boxes, sources, types)

    # -- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (safetensors: ``d{i}/mask``, ``d{i}/evidence``, ``d{i}/feature/<layer>``,
        ``d{i}/activation/<layer>``, ``d{i}/gram/<layer>``, ``d{i}/norm_patch`` when present) and ``path.with_suffix('.json')``
        (schema, detector hash, layers, per-descriptor fields, the tensors' sha256), each atomically.
        The sidecar goes last and names the tensors' checksum, so an interrupted save is detected."""
        from safetensors.numpy import save_file

        p, side = bank_paths(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {}
        records = []
        for i, d in enumerate(self):
            tensors[f"d{i}/mask"] = np.ascontiguousarray(d.mask)
            tensors[f"d{i}/evidence"] = np.ascontiguousarray(d.evidence, dtype=np.float32)
            if d.norm_patch is not None:
                tensors[f"d{i}/norm_patch"] = np.ascontiguousarray(d.norm_patch, dtype=np.float32)
            for kind, patches in (("feature", d.features), ("activation", d.activations), ("gram", d.grams)):
                for n, a in patches.items():
                    tensors[f"d{i}/{kind}/{n}"] = np.ascontiguousarray(a, dtype=np.float32)
            records.append({
                "bbox": list(d.bbox), "centroid": list(d.centroid), "area": d.area, "image_size": list(d.image_size),
                "layer_sizes": {n: list(s) for n, s in d.layer_sizes.items()},
                "features": sorted(d.features), "activations": sorted(d.activations), "grams": sorted(d.grams),
                "source": d.source, "type": d.type, "score": _json_float(d.score), "peak": _json_float(d.peak),
                "severity_share": _json_float(d.severity_share),
                "norm_patch": d.norm_patch is not None,
            })
        tmp = p.with_name(p.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "schema_version": str(SCHEMA_VERSION)})
        sidecar = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "detector_hash": self.detector_hash,
            "feature_layers": sorted({n for d in self for n in d.features}),
            "activation_layers": sorted({n for d in self for n in d.activations}),
            "tensors_file": p.name,
            "tensors_sha256": _sha256(tmp),
            "info": self.info,
            "descriptors_sha256": _records_digest(records),
            "descriptors": records,
        }
        _commit(tmp, p, side, sidecar)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike, detector=None) -> "DescriptorBank":
        """Read a bank written by :meth:`save`. With ``detector``, its ``weights_hash()`` must be
        the one the bank was cut with (:class:`BankMismatchError` otherwise)."""
        from safetensors import safe_open

        p, side = bank_paths(path)
        if not side.is_file():
            raise BankFormatError(f"{side}: descriptor bank sidecar is missing (a bank is {p.name} + {side.name})")
        try:
            meta = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BankFormatError(f"{side}: descriptor bank sidecar is not readable JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise BankFormatError(f"{side}: not a descriptor bank sidecar (format={meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise BankFormatError(f"{side}: schema version {meta.get('schema_version')!r}, this koch-explore reads {SCHEMA_VERSION}")
        if detector is not None and meta.get("detector_hash"):
            have = detector.weights_hash()
            if have != meta["detector_hash"]:
                raise BankMismatchError(
                    f"{p}: descriptors were cut with detector weights {meta['detector_hash']}, "
                    f"but the given detector's weights are {have}; re-isolate with these weights"
                )
        if not p.is_file():
            raise BankFormatError(f"{p}: descriptor bank tensors are missing (sidecar {side.name} is there)")
        if _sha256(p) != meta.get("tensors_sha256"):
            raise BankFormatError(f"{p}: tensors do not match their sidecar {side.name} (checksum differs; interrupted save?)")
        try:
            with safe_open(str(p), framework="numpy") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a bad file
            raise BankFormatError(f"{p}: not a readable safetensors file ({exc})") from exc
        records = meta.get("descriptors")
        if not isinstance(records, list):
            raise BankFormatError(f"{side}: 'descriptors' is not a list (sidecar edited by hand?)")
        if "descriptors_sha256" in meta and _records_digest(records) != meta["descriptors_sha256"]:
            raise BankFormatError(f"{side}: descriptor records do not match their checksum (sidecar edited by hand?); "
                                  f"restore it or re-isolate the bank")
        in_tensors = len({k.split("/", 1)[0] for k in tensors})
        if in_tensors != len(records):
            raise BankFormatError(f"{side}: lists {len(records)} descriptors, {p.name} holds {in_tensors} (sidecar edited by hand?)")
        descs = []
        try:
            for i, r in enumerate(records):
                get = lambda k: tensors[f"d{i}/{k}"]  # noqa: E731
                _check_record(side, i, r, get("mask"))
                descs.append(Descriptor(
                    bbox=tuple(int(v) for v in r["bbox"]), centroid=tuple(float(v) for v in r["centroid"]), area=int(r["area"]),
                    mask=get("mask").astype(bool), evidence=get("evidence"), image_size=tuple(r["image_size"]),
                    features={n: get(f"feature/{n}") for n in r["features"]},
                    activations={n: get(f"activation/{n}") for n in r["activations"]},
                    grams={n: get(f"gram/{n}") for n in r["grams"]},
                    layer_sizes={n: tuple(s) for n, s in r["layer_sizes"].items()},
                    source=r["source"], type=r["type"],
                    score=_float(r["score"]), severity_share=_float(r["severity_share"]),
                    peak=_float(r.get("peak")),  # banks saved before peaks were recorded: nan
                    # banks saved before norm patches existed have no such field: None
                    norm_patch=get("norm_patch") if r.get("norm_patch") else None,
                ))
        except KeyError as exc:
            raise BankFormatError(f"{p}: descriptor {len(descs)} lacks {exc} (tensor or sidecar field)") from exc
        except BankFormatError:
            raise
        except (TypeError, ValueError) as exc:
            raise BankFormatError(f"{p}: descriptor {len(descs)} is inconsistent ({exc})") from exc
        return cls(descs, meta.get("detector_hash"), meta.get("info"))


def bank_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".json":
        raise ValueError(f"{p}: give the bank's tensors file; its JSON sidecar sits beside it")
    return p, p.with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _records_digest(records: list) -> str:
    """sha256 of the descriptor records as JSON: the sidecar names it, so a hand edit is caught on load."""
    return hashlib.sha256(json.dumps(records, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_record(side: Path, i: int, r: dict, mask: np.ndarray) -> None:
    """A record must agree with its mask tensor (banks saved before records had a checksum are read
    through this check alone): box size, area, box inside the image, centroid inside the box."""
    x0, y0, x1, y1 = (int(v) for v in r["bbox"])
    h, w = (int(v) for v in r["image_size"])
    problem = None
    if mask.shape != (y1 - y0, x1 - x0):
        problem = f"bbox {[x0, y0, x1, y1]} is {x1 - x0}x{y1 - y0} px but its mask is {mask.shape[1]}x{mask.shape[0]}"
    elif int(r["area"]) != int(mask.astype(bool).sum()):
        problem = f"area {r['area']} but its mask has {int(mask.astype(bool).sum())} pixels"
    elif not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        problem = f"bbox {[x0, y0, x1, y1]} lies outside its {w}x{h} image"
    elif not (x0 <= float(r["centroid"][0]) <= x1 and y0 <= float(r["centroid"][1]) <= y1):
        problem = f"centroid {r['centroid']} lies outside its bbox {[x0, y0, x1, y1]}"
    if problem:
        raise BankFormatError(f"{side}: descriptor {i}: {problem} (sidecar edited by hand?)")


def _commit(tmp: Path, p: Path, side: Path, sidecar: dict) -> None:
    """Put a bank's written tensors file ``tmp`` and its ``sidecar`` in place, each atomically, the
    sidecar last: it names the tensors' checksum, so an interrupted write is detected on load."""
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps(sidecar, indent=1))
    os.chmod(tmp, side_tmp.stat().st_mode & 0o777)  # safetensors writes 0600; follow the umask like the sidecar
    os.replace(tmp, p)
    os.replace(side_tmp, side)


def _json_float(v: float):
    return None if v is None or not math.isfinite(v) else float(v)


def _float(v) -> float:
    return float("nan") if v is None else float(v)




def merge_bank_files(parts: Sequence[str | os.PathLike], out: str | os.PathLike, info: dict | None = None) -> int:
    """Concatenate saved banks (same detector) into ``out`` in the given order, streaming: tensors are
    copied file to file, so memory holds one tensor at a time whatever the banks' size. ``info``
    updates the first bank's. Loading ``out`` gives the descriptors of ``parts``, in order; written
    atomically like :meth:`DescriptorBank.save`. Returns the number of descriptors."""
    import struct

    from ..core.weights import safetensors_header

    p, side = bank_paths(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    layout, records, metas = [], [], []  # layout: (part file, data start, new name, dtype, shape, begin, end)
    for part in parts:
        pp, ps = bank_paths(part)
        meta = json.loads(ps.read_text())
        if metas and meta["detector_hash"] != metas[0]["detector_hash"]:
            raise BankMismatchError(f"{pp}: cut with another detector ({meta['detector_hash']}) than {parts[0]}")
        with open(pp, "rb") as fh:
            head = fh.read(8)
            head += fh.read(int.from_bytes(head, "little"))
        header, data_start = safetensors_header(head)
        header.pop("__metadata__", None)
        base = len(records)
        for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            i, rest = name[1:].split("/", 1)
            layout.append((pp, data_start, f"d{base + int(i)}/{rest}", t["dtype"], t["shape"], *t["data_offsets"]))
        records += meta["descriptors"]
        metas.append(meta)
    offset, entries = 0, {"__metadata__": {"format": FORMAT, "schema_version": str(SCHEMA_VERSION)}}
    for _, _, name, dtype, shape, begin, end in layout:
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + end - begin]}
        offset += end - begin
    head = json.dumps(entries, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # safetensors aligns the data to 8 bytes
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as fo:
        fo.write(struct.pack("<Q", len(head)) + head)
        for src, data_start, _, _, _, begin, end in layout:
            with open(src, "rb") as fi:
                fi.seek(data_start + begin)
                fo.write(fi.read(end - begin))
    first = metas[0] if metas else {"detector_hash": None, "info": {}}
    sidecar = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "detector_hash": first["detector_hash"],
        "feature_layers": sorted({n for m in metas for n in m.get("feature_layers", [])}),
        "activation_layers": sorted({n for m in metas for n in m.get("activation_layers", [])}),
        "tensors_file": p.name, "tensors_sha256": _sha256(tmp), "info": {**first["info"], **(info or {})},
        "descriptors_sha256": _records_digest(records), "descriptors": records,
    }
    _commit(tmp, p, side, sidecar)
    return len(records)


def load_bank(name_or_path: str | os.PathLike | None = None, detector=None) -> "DescriptorBank":
    """A descriptor bank by shipped name ("real", the default; "deconvnet"; "phantom": each the bank its
    synthesizer was trained with) or from a user's file. With ``detector`` the bank must have been cut
    with those weights (:class:`BankMismatchError` otherwise)."""
    return DescriptorBank.load(resolve_weights("bank", name_or_path), detector=detector)
