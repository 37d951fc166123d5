"""Graded fundus photos as arrays: EyePACS (split by patient), APTOS 2019 (per image), or phantoms.

The detector trains on these splits and every later measurement (sanity checks, held-out Koch hosts,
model cards) reads the same ones, so a validation eye is never a training eye anywhere in the kit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class GradedData:
    """Which graded eyes, split how. The detector's ``TrainConfig`` carries the same fields, so either
    can be passed wherever a ``GradedData`` is asked for."""

    data: str = "eyepacs"
    """"eyepacs" (EyePACS + APTOS photos under the data root) or "phantom" (generated)."""
    root: str | None = None
    """Data root (default: KOCH_DATA, ../shared/data, ./data)."""
    val_fraction: float = 0.15
    """Share of *patients* held out for validation."""
    split_seed: int = 0
    """Seed of the patient split (the same seed gives the same validation patients)."""
    aptos: bool = True
    """Add APTOS 2019 (train part) to the training split; its validation part is always there."""
    seed: int = 0
    """Phantom seeds start from this."""
    phantom_count: int = 400
    """Images generated for data="phantom" (the first val_fraction of them are the validation split)."""
    phantom_size: int = 256
    """Side the phantoms are drawn at (resized to the requested size when it differs)."""


@dataclass
class GradedArrays:
    images: np.ndarray  # uint8 (N, S, S, 3)
    grades: np.ndarray  # int64 (N,)
    names: list[str]
    groups: list[str]  # patient ids (split and split-half QWK are by patient)
    source: list[str] = field(default_factory=list)


def _load_uint8(paths, size: int, desc: str) -> np.ndarray:
    from tqdm.auto import tqdm

    from .io import check_photo_size, read_raw

    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, leave=False, mininterval=2)):
        arr = read_raw(p)
        check_photo_size(arr, p)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        arr = arr[:, :, :3]
        if arr.dtype != np.uint8:
            arr = (arr.astype(np.float32) / np.iinfo(arr.dtype).max * 255).astype(np.uint8)
        if arr.shape[0] != size or arr.shape[1] != size:
            interp = cv2.INTER_AREA if arr.shape[0] > size else cv2.INTER_CUBIC
            arr = cv2.resize(arr, (size, size), interpolation=interp)
        out[i] = arr
    return out


def graded_split(dataset: str, cfg: GradedData):
    """(items, train names, validation names) of ``dataset`` ("EyePACS" or "APTOS2019") as training
    splits it: EyePACS by patient, APTOS per image (its ids carry no patient). Raises
    FileNotFoundError when the dataset is not under the data root."""
    from .datasets import index_graded_images, patient_split
    from .roots import dataset_dir

    d = dataset_dir(dataset, cfg.root)
    if dataset == "EyePACS":
        items = index_graded_images(d / "images_256", d / "trainLabels.csv")
        train, val = patient_split([it.name for it in items], cfg.val_fraction, cfg.split_seed)
    elif dataset == "APTOS2019":
        items = index_graded_images(d, d / "labels.csv")
        train, val = patient_split([it.name for it in items], cfg.val_fraction, cfg.split_seed, patient_id=lambda n: n)
    else:
        raise ValueError(f"graded dataset {dataset!r}: EyePACS or APTOS2019")
    return items, train, val


def load_graded(cfg: GradedData, size: int, splits: tuple[str, ...] = ("train", "val", "aptos_val")) -> dict[str, GradedArrays]:
    """Train / validation arrays: {"train", "val"} (+ "aptos_val" when APTOS is present).

    ``splits`` limits what is decoded (evaluation needs no training images)."""
    if cfg.data == "phantom":
        return _load_phantom(cfg, size, splits)
    if cfg.data != "eyepacs":
        raise ValueError(f"unknown training data {cfg.data!r} (eyepacs or phantom)")
    items, train_names, val_names = graded_split("EyePACS", cfg)
    by_name = {it.name: it for it in items}
    out = {}
    for split, names in (("train", train_names), ("val", val_names)):
        if split not in splits:
            continue
        its = [by_name[n] for n in names]
        out[split] = GradedArrays(
            _load_uint8([it.path for it in its], size, f"EyePACS {split}"),
            np.array([it.grade for it in its], dtype=np.int64),
            names,
            [n.split("_")[0] for n in names],
            ["eyepacs"] * len(names),
        )
    try:
        a_items, a_train, a_val = graded_split("APTOS2019", cfg)
    except FileNotFoundError:
        a_items = None
    if a_items is not None:
        a_by = {it.name: it for it in a_items}
        if "aptos_val" in splits:
            out["aptos_val"] = GradedArrays(
                _load_uint8([a_by[n].path for n in a_val], size, "APTOS val"),
                np.array([a_by[n].grade for n in a_val]),
                a_val,
                a_val,
                ["aptos"] * len(a_val),
            )
        if cfg.aptos and "train" in splits:
            tr = out["train"]
            out["train"] = GradedArrays(
                np.concatenate([tr.images, _load_uint8([a_by[n].path for n in a_train], size, "APTOS train")]),
                np.concatenate([tr.grades, np.array([a_by[n].grade for n in a_train])]),
                tr.names + a_train,
                tr.groups + a_train,
                tr.source + ["aptos"] * len(a_train),
            )
    return {k: _drop_partial_frames(v) for k, v in out.items()}


def _drop_partial_frames(arr: GradedArrays, min_fov: float = 0.3) -> GradedArrays:
    """Drop frames whose field of view covers < 30% of the square: a few staged EyePACS images
    are thin strips of a fundus (e.g. 15222_left), and their grade is not visible in them."""
    frac = (arr.images.max(axis=3) > 10).mean(axis=(1, 2))
    keep = np.flatnonzero(frac >= min_fov)
    if len(keep) == len(frac):
        return arr
    dropped = [arr.names[i] for i in np.flatnonzero(frac < min_fov)]
    print(f"dropping {len(dropped)} partial frames (FOV < {min_fov:.0%}): {', '.join(dropped[:8])}", flush=True)
    pick = lambda xs: [xs[i] for i in keep]
    return GradedArrays(arr.images[keep], arr.grades[keep], pick(arr.names), pick(arr.groups), pick(arr.source))


def _load_phantom(cfg: GradedData, size: int, splits: tuple[str, ...] = ("train", "val")) -> dict[str, GradedArrays]:
    """The phantom splits in ``splits``: image i is drawn from its own seed, so a split is generated alone (the
    validation split is the first ``val_fraction``; grading it costs 60 phantoms, not 400)."""
    from .phantom import generate_phantom

    n = cfg.phantom_count
    n_val = max(1, int(round(n * cfg.val_fraction)))
    out = {}
    for split, (lo, hi) in (("train", (n_val, n)), ("val", (0, n_val))):
        if split not in splits:
            continue
        imgs = np.zeros((hi - lo, size, size, 3), dtype=np.uint8)
        grades = np.zeros(hi - lo, dtype=np.int64)
        for j, i in enumerate(range(lo, hi)):
            ph = generate_phantom(seed=cfg.seed * 1_000_003 + i, size=cfg.phantom_size)
            im = ph.image if ph.image.shape[0] == size else cv2.resize(ph.image, (size, size), interpolation=cv2.INTER_AREA)
            imgs[j] = (np.clip(im, 0, 1) * 255 + 0.5).astype(np.uint8)
            grades[j] = ph.grade
        names = [f"phantom_{i:05d}" for i in range(lo, hi)]
        out[split] = GradedArrays(imgs, grades, names, list(names), ["phantom"] * len(names))
    return out


def graded_eyes(split: str = "val", size: int = 256, data: str = "eyepacs", root: str | None = None, aptos: bool = True) -> GradedArrays:
    """One split ("train", "val" or "aptos_val") of the graded eyes the shipped detector was trained and
    validated on, as uint8 arrays at ``size`` (see :class:`GradedArrays`)."""
    cfg = GradedData(data=data, root=root, aptos=aptos)
    out = load_graded(cfg, size, splits=(split,))
    if split not in out:
        raise FileNotFoundError(f"no {split!r} split of {data!r} under the data root (APTOS 2019 missing?)")
    return out[split]
