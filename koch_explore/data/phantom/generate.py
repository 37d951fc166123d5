"""Draw phantoms (:func:`generate_phantom`), overlay their masks and write phantom datasets."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..io import write_image
from .config import (
    ALL_LESION_TYPES,
    LESION_COLOURS,
    PhantomConfig,
    PhantomFundus,
    grade_from_instances,
)
from .painter import (
    LesionPainter,
    Scene,
    background,
    grow_vessel_tree,
    paint_disc,
    paint_macula,
    paint_vessels,
    photograph,
    sample_counts,
)

# ---------------------------------------------------------------------------------------------
# Public generator
# ---------------------------------------------------------------------------------------------


def generate_phantom(
    seed: int, size: int = 256, grade: int | None = None, config: PhantomConfig | None = None
) -> PhantomFundus:
    """Draw one phantom fundus photograph, deterministically from ``seed``, ``size`` px square (default 256,
    the input size of every shipped model; lengths are set at 512 px and scaled).

    ``grade`` (0..4) fixes the severity; when None it is sampled from ``config.grade_probs``.
    Either way the returned ``grade`` is recomputed from the drawn lesions by
    :data:`GRADE_RULE`; a requested grade that cannot be drawn raises ``RuntimeError``.
    """
    cfg = config or PhantomConfig()
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(size, (int, np.integer)) or size < 64:
        raise ValueError(f"size must be an integer >= 64, got {size!r}")
    if grade is not None and grade not in range(5):
        raise ValueError(f"grade must be 0..4 or None, got {grade!r}")
    size = int(size)
    rng = np.random.default_rng(int(seed))

    # Order of random draws is part of the output: keep the steps in this order.
    scene = Scene.sample(rng, size, cfg)
    target = int(grade) if grade is not None else int(rng.choice(5, p=_normalised(cfg.grade_probs)))
    reflectance = background(rng, scene)
    paint_macula(rng, scene, reflectance)
    paint_disc(rng, scene, reflectance, cfg)
    vessels = grow_vessel_tree(rng, scene, cfg)
    vessel_mask = paint_vessels(rng, scene, reflectance, vessels)

    # Lesions: sample counts for the target grade, draw, derive the grade from what was drawn.
    # Crowded images can lose a lesion or two; redraw (same stream, so still deterministic).
    for _attempt in range(6):
        painter = LesionPainter(rng, scene, cfg, vessel_mask, vessels)
        painter.draw(sample_counts(rng, target, cfg))
        instances = painter.instances()
        derived = grade_from_instances(instances, cfg)
        if derived == target:
            break
    else:
        if grade is not None:
            raise RuntimeError(f"could not draw a grade-{grade} phantom for seed {seed} (got {derived})")
    image = photograph(rng, scene, painter.composite(reflectance), cfg)
    return PhantomFundus(
        image=image,
        vessels=vessel_mask,
        fov=scene.fov,
        lesions={t: painter.masks[t].astype(bool) for t in ALL_LESION_TYPES},
        instances=instances,
        grade=derived,
        seed=int(seed),
        size=size,
        eye="OD" if scene.side < 0 else "OS",
        disc_center=(float(scene.disc[0]), float(scene.disc[1])),
        disc_radius=float(scene.disc_r),
        fovea_center=(float(scene.fovea[0]), float(scene.fovea[1])),
        lesion_counts={t: sum(r["type"] == t for r in instances) for t in ALL_LESION_TYPES},
    )


def overlay_lesions(
    phantom_or_image: PhantomFundus | np.ndarray,
    lesions: Mapping[str, np.ndarray] | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend each lesion mask over the image in its :data:`LESION_COLOURS` colour.

    Accepts a :class:`PhantomFundus` (its own lesions are used when ``lesions`` is None) or
    an RGB image (float in [0, 1] or uint8). Unknown mask types are drawn white. Returns
    float32 RGB in [0, 1]; the input is not modified.
    """
    if isinstance(phantom_or_image, PhantomFundus):
        image = phantom_or_image.image
        lesions = phantom_or_image.lesions if lesions is None else lesions
    else:
        image = np.asarray(phantom_or_image)
    if image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    else:
        out = np.clip(image.astype(np.float32), 0.0, 1.0)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    out = out[:, :, :3].copy()
    for name, mask in (lesions or {}).items():
        m = np.asarray(mask).astype(bool)
        if m.shape != out.shape[:2]:
            raise ValueError(f"mask {name!r} has shape {m.shape}, image has {out.shape[:2]}")
        colour = np.asarray(LESION_COLOURS.get(name, (1.0, 1.0, 1.0)), dtype=np.float32)
        out[m] = (1.0 - alpha) * out[m] + alpha * colour
    return out


# ---------------------------------------------------------------------------------------------
# Dataset writer
# ---------------------------------------------------------------------------------------------


def phantom_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a dataset made with ``seed`` (independent streams per image)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def phantom_name(index: int) -> str:
    return f"phantom_{index:05d}"


def write_phantom_dataset(
    out: str | os.PathLike,
    count: int,
    seed: int,
    size: int = 512,
    grades: int | Sequence[int] | None = None,
    config: PhantomConfig | None = None,
    progress: bool = True,
) -> Path:
    """Write ``count`` phantoms under ``out`` and return ``out``.

    Layout (``<name>`` = ``phantom_00000`` ...)::

        images/<name>.png            RGB
        vessels/<name>.png           0/255
        fov/<name>.png               0/255
        lesions/<TYPE>/<name>.png    0/255, every type in ALL_LESION_TYPES for every image
        labels.csv                   image,level   (level = derived grade)
        instances.json               {name: [lesion records]}

    ``grades``: None samples each grade, an int fixes all, a sequence gives one per image.
    Same arguments give byte-identical files.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if grades is None or isinstance(grades, (int, np.integer)):
        per_image = [grades] * count
    else:
        per_image = list(grades)
        if len(per_image) != count:
            raise ValueError(f"grades has {len(per_image)} entries for {count} images")
    for sub in ("images", "vessels", "fov", *(f"lesions/{t}" for t in ALL_LESION_TYPES)):
        (out / sub).mkdir(parents=True, exist_ok=True)

    labels = ["image,level"]
    instances: dict[str, list[dict[str, Any]]] = {}
    for i in tqdm(range(count), desc="phantoms", unit="img", disable=not progress, file=sys.stderr):
        name = phantom_name(i)
        ph = generate_phantom(phantom_seed(seed, i), size=size, grade=per_image[i], config=config)
        write_image(out / "images" / f"{name}.png", ph.image)
        write_image(out / "vessels" / f"{name}.png", ph.vessels)
        write_image(out / "fov" / f"{name}.png", ph.fov)
        for t in ALL_LESION_TYPES:
            write_image(out / "lesions" / t / f"{name}.png", ph.lesions[t])
        labels.append(f"{name},{ph.grade}")
        instances[name] = ph.instances
    _write_text_atomic(out / "labels.csv", "\n".join(labels) + "\n")
    _write_text_atomic(out / "instances.json", _instances_json(instances))
    return out


def _instances_json(instances: dict[str, list[dict[str, Any]]]) -> str:
    """JSON with one lesion record per line: diffable and still small for thousands of images."""
    blocks = []
    for name in sorted(instances):
        rows = ",\n".join("  " + json.dumps(rec, sort_keys=True) for rec in instances[name])
        blocks.append(f" {json.dumps(name)}: [\n{rows}\n ]" if rows else f" {json.dumps(name)}: []")
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _normalised(p: Sequence[float]) -> np.ndarray:
    a = np.asarray(p, dtype=float)
    return a / a.sum()
