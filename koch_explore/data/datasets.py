"""Loaders for graded photos, vessel maps and lesion masks, plus thin torch ``Dataset`` wrappers.

The indexing and splitting functions are plain Python (no torch) so notebooks and ``data check``
can use them cheaply; the three ``Dataset`` classes only add ``__len__``/``__getitem__``.

``__getitem__`` returns a dict of **numpy** arrays: images float32 (H, W, 3) in [0, 1], masks bool
(H, W), plus the sample ``name``. The detector converts to tensors itself (channels first,
normalised its own way). torch's default collate turns numpy arrays into tensors (B, H, W, C)
and keeps names as a list, so a ``DataLoader`` works when ``size`` makes every image the same
shape; ``LesionSegmentation``'s ``present`` set does not collate - use ``batch_size=None`` or
your own ``collate_fn`` there.
"""

from __future__ import annotations

import csv
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from torch.utils.data import Dataset

from .io import FundusReadError, read_image, read_mask
from .manifests import DatasetManifest, get_manifest
from .preprocess import estimate_fov, prepare_fundus, prepare_mask
from .roots import dataset_dir

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".ppm"})
LESION_TYPES = ("MA", "HE", "EX", "SE")
# (id column, grade column) of the label tables we know: EyePACS and the phantom, then APTOS.
GRADE_CONVENTIONS = (("image", "level"), ("id_code", "diagnosis"))
LABEL_FILE_NAMES = ("trainLabels.csv", "labels.csv")
_EYEPACS_NAME = re.compile(r"^(?P<patient>\d+)_(?P<eye>left|right)$")


# --------------------------------------------------------------------------- graded photos


@dataclass(frozen=True)
class GradedItem:
    """One graded photo: ``name`` is the file stem, which is what label tables refer to."""

    name: str
    path: Path
    grade: int


def _label_id(raw: str) -> str:
    """Label tables name images with or without extension; match on the stem either way."""
    value = raw.strip()
    suffix = Path(value).suffix.lower()
    return value[: -len(suffix)] if suffix in IMAGE_SUFFIXES else value


def read_grade_table(labels_csv: str | os.PathLike) -> dict[str, int]:
    """``{image stem: grade}`` from an EyePACS (``image,level``) or APTOS (``id_code,diagnosis``) CSV.

    Strict on purpose: a non-integer grade or one image graded twice differently would silently
    change what the detector learns, so both raise :class:`FundusReadError` naming the line.
    """
    path = Path(labels_csv)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            columns = next(((i, g) for i, g in GRADE_CONVENTIONS if i in header and g in header), None)
            if columns is None:
                known = " or ".join(",".join(c) for c in GRADE_CONVENTIONS)
                raise FundusReadError(path, f"expected columns {known}, found {','.join(header) or 'no header'}")
            reader.fieldnames = header
            id_col, grade_col = columns
            grades: dict[str, int] = {}
            for row in reader:
                line = reader.line_num
                name = _label_id(row.get(id_col) or "")
                raw = (row.get(grade_col) or "").strip()
                if not name:
                    raise FundusReadError(path, f"line {line}: empty {id_col}")
                try:
                    grade = int(raw)
                except ValueError:
                    raise FundusReadError(path, f"line {line}: {grade_col} {raw!r} is not an integer grade") from None
                if grades.get(name, grade) != grade:
                    raise FundusReadError(path, f"line {line}: {name} graded {grade} but earlier {grades[name]}")
                grades[name] = grade
    except FileNotFoundError:
        raise FundusReadError(path, "file does not exist") from None
    except UnicodeDecodeError:
        raise FundusReadError(path, "not a UTF-8 text table") from None
    if not grades:
        raise FundusReadError(path, "label table has no rows")
    return grades


def _images_by_stem(images_dir: Path) -> dict[str, Path]:
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    out: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if p.stem in out:
                raise FundusReadError(p, f"ambiguous: {out[p.stem].name} has the same name stem")
            out[p.stem] = p
    return out


def find_labels_csv(images_dir: str | os.PathLike) -> Path:
    """The grade table for a folder of images: a known label file beside the images or one level up."""
    d = Path(images_dir)
    for folder in (d, d.parent):
        for name in LABEL_FILE_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"no {' or '.join(LABEL_FILE_NAMES)} in {d} or {d.parent}; pass labels_csv")


def index_graded_images(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    names: Iterable[str] | None = None,
) -> list[GradedItem]:
    """Pair each image in ``images_dir`` with its grade, matching by file stem whatever the extension.

    Label rows without an image are ignored (a folder may hold a subset of the table, e.g. one
    EyePACS subfolder); an image without a label row raises :class:`FundusReadError` naming it,
    because training on it would need a guessed grade. ``names`` restricts to those stems, in order.
    """
    d = Path(images_dir)
    table_path = Path(labels_csv) if labels_csv is not None else find_labels_csv(d)
    grades = read_grade_table(table_path)
    images = _images_by_stem(d)
    if names is not None:
        wanted = list(names)
        unknown = [n for n in wanted if n not in images]
        if unknown:
            raise KeyError(f"{len(unknown)} names have no image in {d}, e.g. {unknown[:3]}")
        images = {n: images[n] for n in wanted}
    items = []
    for stem, path in images.items():
        if stem not in grades:
            raise FundusReadError(path, f"no label row for {stem!r} in {table_path}")
        items.append(GradedItem(stem, path, grades[stem]))
    return items


def eyepacs_patient_id(name: str) -> str:
    """``"10_left"`` (or ``"10_left.jpg"``) -> ``"10"``: both eyes of a patient share the number."""
    stem = _label_id(Path(name).name)
    m = _EYEPACS_NAME.match(stem)
    if m is None:
        raise ValueError(f"{name!r} is not an EyePACS name <patient>_<left|right>")
    return m.group("patient")


def patient_split(
    names: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    patient_id: Callable[[str], str] = eyepacs_patient_id,
) -> tuple[list[str], list[str]]:
    """Split image names into (train, validation) with every patient wholly on one side.

    A patient's two eyes are strongly correlated; letting one eye train and the other validate
    inflates validation accuracy. Patients are sorted (numerically when they are numbers, as the
    EyePACS holdout was drawn), shuffled with ``random.Random(seed)`` and the first
    ``round(val_fraction * n_patients)`` go to validation, so the split depends only on the set of
    patients and the seed, not on the order of ``names``. Both lists keep the order of ``names``.
    For APTOS, whose ids carry no patient, pass ``patient_id=lambda n: n`` (per-image split).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = list(names)
    owner = {n: patient_id(n) for n in names}
    patients = sorted(set(owner.values()), key=lambda p: (0, int(p), p) if p.isdecimal() else (1, 0, p))
    random.Random(seed).shuffle(patients)
    n_val = round(val_fraction * len(patients))
    if val_fraction > 0 and n_val == 0 and len(patients) > 1:
        n_val = 1
    val_patients = set(patients[:n_val])
    train = [n for n in names if owner[n] not in val_patients]
    val = [n for n in names if owner[n] in val_patients]
    return train, val


class GradedImages(Dataset):
    """Graded fundus photos (EyePACS ``image,level``, APTOS ``id_code,diagnosis``, phantom).

    ``images_dir`` is a folder of images (a dataset root such as APTOS2019/, or a subfolder such
    as EyePACS/images_256/); the label table is found beside it or one level up when not given.
    Items are ``{"image": float32 (H, W, 3), "grade": int, "name": str}``; with ``size`` the image is
    cropped to its estimated FOV, padded square and resized (:func:`prepare_fundus`).
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        labels_csv: str | os.PathLike | None = None,
        size: int | None = None,
        *,
        names: Iterable[str] | None = None,
    ):
        self.items = index_graded_images(images_dir, labels_csv, names)
        self.size = size

    @classmethod
    def from_dataset(
        cls,
        dataset: str = "EyePACS",
        root: str | os.PathLike | None = None,
        role: str = "images",
        size: int | None = None,
        *,
        names: Iterable[str] | None = None,
    ) -> "GradedImages":
        """Open a manifest-described graded dataset, e.g. ``("EyePACS", role="images_512")``."""
        manifest = get_manifest(dataset)
        if manifest.labels.file is None or role not in manifest.roles:
            raise ValueError(f"{manifest.name} has no graded role {role!r}")
        folder = dataset_dir(manifest.folder, root)
        images_dir = folder / Path(manifest.roles[role].patterns[0]).parent
        return cls(images_dir, folder / manifest.labels.file, size, names=names)

    @property
    def names(self) -> list[str]:
        return [it.name for it in self.items]

    @property
    def grades(self) -> list[int]:
        return [it.grade for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image = read_image(item.path)
        if self.size is not None:
            image, _ = prepare_fundus(image, self.size, path=item.path)
        return {"image": image, "grade": item.grade, "name": item.name}


# --------------------------------------------------------------------------- vessel maps


def _check_same_frame(mask: np.ndarray, image: np.ndarray, path: Path) -> np.ndarray:
    if mask.shape != image.shape[:2]:
        raise FundusReadError(path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}")
    return mask


def _role_index(manifest: DatasetManifest, folder: Path, role: str) -> dict[str, Path]:
    """``{sample id: file}`` for a role, empty when the dataset has no such role."""
    return manifest.roles[role].index(folder) if role in manifest.roles else {}


class _PairedFiles(Dataset):
    """Shared by the datasets whose ``samples`` are tuples starting with the image path."""

    samples: list[tuple]

    @property
    def names(self) -> list[str]:
        return [sample[0].stem for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)


class VesselSegmentation(_PairedFiles):
    """Fundus photos with their manual vessel tree: DRIVE (observer 1) or CHASE_DB1 (``1stHO``).

    Items are ``{"image", "vessels", "fov", "name"}``. DRIVE's FOV comes from its GIF masks;
    CHASE_DB1 ships none, so its FOV is estimated from the photo. ``split`` selects the manifest's
    ``training``/``test`` ids (DRIVE's official split; for CHASE_DB1 the usual first 20 / last 8,
    which keeps both eyes of a child together); ``None`` gives all images.
    """

    def __init__(
        self,
        dataset: str = "DRIVE",
        split: str | None = None,
        root: str | os.PathLike | None = None,
        size: int | None = None,
    ):
        self.manifest = get_manifest(dataset)
        if "vessels" not in self.manifest.roles:
            raise ValueError(f"{self.manifest.name} has no vessel masks")
        self.folder = dataset_dir(self.manifest.folder, root)
        images = self.manifest.roles["images"].index(self.folder)
        if split is not None:
            if split not in self.manifest.splits:
                raise ValueError(f"{self.manifest.name} splits are {sorted(self.manifest.splits)}, not {split!r}")
            keep = set(self.manifest.splits[split])
            images = {i: p for i, p in images.items() if i in keep}
        vessels = self.manifest.roles["vessels"].index(self.folder)
        fovs = _role_index(self.manifest, self.folder, "fov")
        self.samples: list[tuple[Path, Path, Path | None]] = []
        for sample_id, image_path in images.items():
            if sample_id not in vessels:
                raise FundusReadError(image_path, f"no vessel mask ({self.manifest.roles['vessels'].patterns[0]})")
            if "fov" in self.manifest.roles and sample_id not in fovs:
                raise FundusReadError(image_path, f"no FOV mask ({self.manifest.roles['fov'].patterns[0]})")
            self.samples.append((image_path, vessels[sample_id], fovs.get(sample_id)))
        self.size = size

    def __getitem__(self, index: int) -> dict:
        image_path, vessel_path, fov_path = self.samples[index]
        image = read_image(image_path)
        vessels = _check_same_frame(read_mask(vessel_path), image, vessel_path)
        if fov_path is not None:
            fov = _check_same_frame(read_mask(fov_path, allow_empty=False), image, fov_path)
        else:
            fov = estimate_fov(image, path=image_path)
        if self.size is not None:
            vessels = prepare_mask(vessels, fov, self.size)
            image, fov = prepare_fundus(image, self.size, fov, path=image_path)
        return {"image": image, "vessels": vessels, "fov": fov, "name": image_path.stem}


# --------------------------------------------------------------------------- lesion masks


class LesionSegmentation(_PairedFiles):
    """Photos with per-type lesion masks (MA, HE, EX, SE): IDRiD_lesions or a phantom folder.

    Both layouts are read through their manifests: IDRiD's flat ``<name>_<TYPE>.png`` beside
    ``<name>.jpg``, and the phantom's ``images/<name>.png`` with ``lesions/<TYPE>/<name>.png``.
    A missing mask file means the type is absent; it becomes an all-False mask so every item has
    all four keys. With ``size``, the phantom's own FOV masks are used, IDRiD's FOV is estimated. ``present`` holds the types with at least one lesion pixel (a phantom may write
    empty masks). Items are ``{"image", "lesions": {type: bool mask}, "present": set, "name"}``.
    """

    LAYOUTS = ("IDRiD_lesions", "phantom")

    def __init__(
        self,
        folder: str | os.PathLike | None = None,
        size: int | None = None,
        *,
        root: str | os.PathLike | None = None,
    ):
        self.folder = Path(folder) if folder is not None else dataset_dir("IDRiD_lesions", root)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"lesion folder {self.folder} does not exist")
        manifests = [get_manifest(name) for name in self.LAYOUTS]
        self.manifest = next((m for m in manifests if m.recognises(self.folder)), None)
        if self.manifest is None:
            raise ValueError(
                f"{self.folder} is neither the IDRiD_lesions layout (<name>.jpg + <name>_<TYPE>.png) "
                "nor the phantom layout (images/, lesions/<TYPE>/, vessels/, fov/, labels.csv)"
            )
        images = self.manifest.roles["images"].index(self.folder)
        masks = {t: _role_index(self.manifest, self.folder, f"lesions_{t}") for t in LESION_TYPES}
        fovs = _role_index(self.manifest, self.folder, "fov")
        self.samples = [(p, fovs.get(i), {t: masks[t].get(i) for t in LESION_TYPES}) for i, p in images.items()]
        self.size = size

    def __getitem__(self, index: int) -> dict:
        image_path, fov_path, mask_paths = self.samples[index]
        image = read_image(image_path)
        lesions = {}
        for t, p in mask_paths.items():
            lesions[t] = np.zeros(image.shape[:2], bool) if p is None else _check_same_frame(read_mask(p), image, p)
        if self.size is not None:
            if fov_path is not None:
                fov = _check_same_frame(read_mask(fov_path, allow_empty=False), image, fov_path)
            else:
                fov = estimate_fov(image, path=image_path)
            lesions = {t: prepare_mask(m, fov, self.size) for t, m in lesions.items()}
            image, _ = prepare_fundus(image, self.size, fov, path=image_path)
        present = {t for t, m in lesions.items() if m.any()}
        return {"image": image, "lesions": lesions, "present": present, "name": image_path.stem}
