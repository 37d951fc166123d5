"""Diseased eyes to isolate lesions from (Koch's first postulate: the microbe is looked for in the sick):
real EyePACS photos of high grade when the data root holds them, else phantoms of high grade, whose
exact lesion masks let every isolated box be checked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DiseasedEyes", "diseased_eyes"]


@dataclass
class DiseasedEyes:
    images: np.ndarray
    """float32 (N, S, S, 3) in [0, 1], prepared like the detector's input."""
    grades: np.ndarray
    """int (N,): the graders' grade (EyePACS) or the grade the phantom's drawn lesions give."""
    names: list[str]
    lesions: list[dict[str, np.ndarray]] | None
    """Per eye, lesion type -> exact bool mask (S, S) for phantoms; None for real photos (no masks)."""
    source: str
    """What they are, in words ("phantoms" or "eyes of the EyePACS validation split")."""

    def __len__(self) -> int:
        return len(self.images)


def diseased_eyes(count: int = 8, size: int = 256, data: str = "auto", root=None, seed: int = 0,
                  min_grade: int = 3) -> DiseasedEyes:
    """``count`` eyes of grade ``min_grade`` or more: drawn with ``seed`` from the EyePACS validation split
    (patients the shipped detector never trained on) when ``data`` is "real", or "auto" and the data root
    holds EyePACS; else ("embedded", "phantom", or no EyePACS) phantoms whose grades cycle from
    ``min_grade`` to 4."""
    from .roots import resolve_data_root

    if data not in ("auto", "real", "embedded", "phantom"):
        raise ValueError(f"data {data!r}: 'auto', 'real', 'embedded' or 'phantom'")
    if not 0 <= min_grade <= 4 or count < 1:
        raise ValueError(f"need count >= 1 and min_grade 0..4, got count={count}, min_grade={min_grade}")
    r = resolve_data_root(root) if data in ("auto", "real") else None
    if r is not None and (r / "EyePACS").is_dir():
        from .graded import graded_eyes

        val = graded_eyes("val", size, root=r, aptos=False)
        sick = np.flatnonzero(val.grades >= min_grade)
        if len(sick) == 0:
            raise ValueError(f"no EyePACS validation eye of grade >= {min_grade}")
        pick = np.sort(np.random.default_rng(seed).choice(sick, size=min(count, len(sick)), replace=False))
        return DiseasedEyes(val.images[pick].astype(np.float32) / 255.0, val.grades[pick].astype(int),
                            [val.names[i] for i in pick], None, "eyes of the EyePACS validation split")
    if data == "real":
        raise FileNotFoundError("data 'real' asks for EyePACS, and the data root (KOCH_DATA, ../shared/data, ./data) holds none")
    from .phantom import generate_phantom, phantom_name, phantom_seed

    eyes = [generate_phantom(phantom_seed(seed, i), size=size, grade=min_grade + i % (5 - min_grade)) for i in range(count)]
    return DiseasedEyes(np.stack([np.clip(p.image, 0, 1) for p in eyes]).astype(np.float32), np.array([p.grade for p in eyes]),
                        [phantom_name(i) for i in range(count)], [dict(p.lesions) for p in eyes], "phantoms")
