"""Graded, vessel and lesion loaders on toy layouts built in tmp_path, and on the staged data."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from koch_explore.data.datasets import (
    GradedImages,
    LesionSegmentation,
    VesselSegmentation,
    eyepacs_patient_id,
    index_graded_images,
    patient_split,
    read_grade_table,
)
from koch_explore.data.io import FundusReadError, write_image
from koch_explore.data.roots import resolve_data_root


def _fundus(h: int = 60, w: int = 80, tint: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float32)
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
    img[disc] = (0.8, 0.4 + tint, 0.2)
    return img


# --------------------------------------------------------------------------- label tables


def test_read_grade_table_both_conventions(tmp_path):
    eyepacs = tmp_path / "trainLabels.csv"
    eyepacs.write_text("image,level\n10_left,0\n10_right,3\n")
    assert read_grade_table(eyepacs) == {"10_left": 0, "10_right": 3}
    aptos = tmp_path / "labels.csv"
    aptos.write_text("\ufeffid_code,diagnosis\n001639a390f0.png,4\n")  # BOM and extension
    assert read_grade_table(aptos) == {"001639a390f0": 4}


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,grade\na,1\n", "expected columns"),
        ("image,level\na,mild\n", "line 2: level 'mild' is not an integer"),
        ("image,level\na,1\na,2\n", "line 3: a graded 2 but earlier 1"),
        ("image,level\n", "no rows"),
    ],
)
def test_bad_label_tables_name_the_file(tmp_path, text, message):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    with pytest.raises(FundusReadError) as exc:
        read_grade_table(p)
    assert str(p) in str(exc.value) and message in str(exc.value)


# --------------------------------------------------------------------------- graded images


@pytest.fixture
def graded(tmp_path) -> Path:
    """EyePACS-like: images in a subfolder with mixed extensions, labels one level up."""
    d = tmp_path / "images_256"
    write_image(d / "10_left.jpg", _fundus(tint=0.0))
    write_image(d / "10_right.png", _fundus(tint=0.1))
    write_image(d / "11_left.tif", _fundus(tint=0.2))
    (d / "notes.txt").write_text("not an image")
    (tmp_path / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,1\n11_left,4\n99_left,2\n")
    return d


def test_graded_images_match_by_stem_and_ignore_extra_rows(graded):
    ds = GradedImages(graded)
    assert ds.names == ["10_left", "10_right", "11_left"] and ds.grades == [0, 1, 4]
    item = ds[2]
    assert item["image"].dtype == np.float32 and item["image"].shape == (60, 80, 3)
    assert item["grade"] == 4 and item["name"] == "11_left"


def test_graded_image_without_label_names_it(graded):
    write_image(graded / "12_left.png", _fundus())
    with pytest.raises(FundusReadError) as exc:
        GradedImages(graded)
    assert "12_left.png" in str(exc.value) and "no label row" in str(exc.value)


def test_graded_duplicate_stems_are_ambiguous(graded):
    write_image(graded / "10_left.png", _fundus())
    with pytest.raises(FundusReadError, match="ambiguous"):
        index_graded_images(graded)


def test_graded_names_subset_size_and_dataloader(graded):
    ds = GradedImages(graded, graded.parent / "trainLabels.csv", size=32, names=["11_left", "10_left"])
    assert ds.names == ["11_left", "10_left"]
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert isinstance(batch["image"], torch.Tensor) and tuple(batch["image"].shape) == (2, 32, 32, 3)
    assert batch["grade"].tolist() == [4, 0] and batch["name"] == ["11_left", "10_left"]
    with pytest.raises(KeyError):
        GradedImages(graded, names=["nobody"])


# --------------------------------------------------------------------------- patient split


def test_eyepacs_patient_id():
    assert eyepacs_patient_id("10_left") == "10"
    assert eyepacs_patient_id("images_256/10_right.jpg") == "10"
    with pytest.raises(ValueError):
        eyepacs_patient_id("001639a390f0")


def test_patient_split_keeps_eyes_together_and_is_deterministic():
    names = [f"{p}_{eye}" for p in range(1, 101) for eye in ("left", "right")][:-1]  # patient 100: left only
    train, val = patient_split(names, 0.2, seed=3)
    assert sorted(train + val) == sorted(names) and not set(train) & set(val)
    assert not {eyepacs_patient_id(n) for n in train} & {eyepacs_patient_id(n) for n in val}
    assert len({eyepacs_patient_id(n) for n in val}) == 20
    assert patient_split(list(reversed(names)), 0.2, seed=3)[1] == list(reversed(val))  # order-independent
    assert patient_split(names, 0.2, seed=4)[1] != val
    assert patient_split(names, 0.0)[1] == []
    with pytest.raises(ValueError):
        patient_split(names, 1.0)


def test_patient_split_per_image_for_aptos():
    names = ["a1", "b2", "c3", "d4", "e5"]
    train, val = patient_split(names, 0.4, seed=0, patient_id=lambda n: n)
    assert len(val) == 2 and len(train) == 3


# --------------------------------------------------------------------------- vessel maps


def _write_gif(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, mask.astype(np.uint8) * 255)


@pytest.fixture
def drive_root(tmp_path) -> Path:
    d = tmp_path / "DRIVE"
    img = _fundus(64, 60)
    fov = img.max(axis=2) > 0
    vessels = np.zeros((64, 60), bool)
    vessels[30:33, 10:50] = True
    for split, ids in (("training", ["21", "22"]), ("test", ["01"])):
        for i in ids:
            write_image(d / split / "images" / f"{i}_{split}.tif", img)
            _write_gif(d / split / "1st_manual" / f"{i}_manual1.gif", vessels)
            _write_gif(d / split / "mask" / f"{i}_{split}_mask.gif", fov)
    return tmp_path


def test_vessels_drive_layout_and_split(drive_root):
    ds = VesselSegmentation("DRIVE", "training", root=drive_root)
    assert ds.names == ["21_training", "22_training"]
    item = ds[0]
    assert item["image"].shape == (64, 60, 3) and item["image"].dtype == np.float32
    assert item["vessels"].dtype == bool and item["vessels"].sum() == 120
    assert item["fov"].dtype == bool and item["fov"].shape == (64, 60)
    assert len(VesselSegmentation("DRIVE", None, root=drive_root)) == 3
    with pytest.raises(ValueError, match="splits"):
        VesselSegmentation("DRIVE", "validation", root=drive_root)


def test_vessels_resized_with_the_same_geometry(drive_root):
    item = VesselSegmentation("DRIVE", "test", root=drive_root, size=32)[0]
    assert item["image"].shape == (32, 32, 3) and item["vessels"].shape == item["fov"].shape == (32, 32)
    assert not (item["vessels"] & ~item["fov"]).any()


def test_vessels_missing_mask_names_the_image(drive_root):
    (drive_root / "DRIVE/training/1st_manual/22_manual1.gif").unlink()
    with pytest.raises(FundusReadError) as exc:
        VesselSegmentation("DRIVE", "training", root=drive_root)
    assert "22_training.tif" in str(exc.value) and "no vessel mask" in str(exc.value)


def test_vessels_mask_of_wrong_size_names_the_mask(drive_root):
    _write_gif(drive_root / "DRIVE/test/1st_manual/01_manual1.gif", np.ones((10, 10), bool))
    with pytest.raises(FundusReadError) as exc:
        VesselSegmentation("DRIVE", "test", root=drive_root)[0]
    assert "01_manual1.gif" in str(exc.value)


def test_vessels_chase_estimates_the_fov(tmp_path):
    d = tmp_path / "CHASE_DB1"
    img = _fundus(80, 84)
    for child in ("01L", "11R"):
        write_image(d / f"Image_{child}.jpg", img)
        write_image(d / f"Image_{child}_1stHO.png", img[:, :, 0] > 0.5)
        write_image(d / f"Image_{child}_2ndHO.png", img[:, :, 0] > 0.5)
    ds = VesselSegmentation("CHASE_DB1", "test", root=tmp_path)
    assert ds.names == ["Image_11R"]
    item = ds[0]
    truth = img.max(axis=2) > 0
    assert (item["fov"] & truth).sum() / (item["fov"] | truth).sum() > 0.9


# --------------------------------------------------------------------------- lesions


def test_lesions_idrid_flat_layout(tmp_path):
    d = tmp_path / "IDRiD_lesions"
    img = _fundus(64, 64)
    ma = np.zeros((64, 64), bool)
    ma[30:32, 30:32] = True
    for name in ("IDRiD_01", "IDRiD_02"):
        write_image(d / f"{name}.jpg", img)
        for t in ("MA", "HE", "EX"):
            write_image(d / f"{name}_{t}.png", ma)
    write_image(d / "IDRiD_02_SE.png", ma)
    ds = LesionSegmentation(d)
    assert ds.names == ["IDRiD_01", "IDRiD_02"]
    first, second = ds[0], ds[1]
    assert set(first["lesions"]) == {"MA", "HE", "EX", "SE"}
    assert first["present"] == {"MA", "HE", "EX"} and not first["lesions"]["SE"].any()
    assert second["present"] == {"MA", "HE", "EX", "SE"}
    assert first["lesions"]["MA"].sum() == 4 and first["image"].shape == (64, 64, 3)
    resized = LesionSegmentation(d, size=32)[0]
    assert resized["lesions"]["MA"].shape == (32, 32) and resized["image"].shape == (32, 32, 3)


def test_lesions_phantom_layout(tmp_path):
    d = tmp_path / "phantom"
    img = _fundus(48, 48)
    he = np.zeros((48, 48), bool)
    he[10:20, 10:20] = True
    write_image(d / "images" / "ph_0.png", img)
    write_image(d / "vessels" / "ph_0.png", np.zeros((48, 48), bool))
    write_image(d / "fov" / "ph_0.png", img.max(axis=2) > 0)
    write_image(d / "lesions" / "HE" / "ph_0.png", he)
    write_image(d / "lesions" / "MA" / "ph_0.png", np.zeros((48, 48), bool))  # written but empty
    (d / "labels.csv").write_text("image,level\nph_0,2\n")
    item = LesionSegmentation(d)[0]
    assert item["name"] == "ph_0" and item["present"] == {"HE"}
    assert item["lesions"]["HE"].sum() == 100
    assert GradedImages(d / "images").grades == [2]


def test_lesions_unknown_layout(tmp_path):
    write_image(tmp_path / "x.png", _fundus())
    with pytest.raises(ValueError, match="neither"):
        LesionSegmentation(tmp_path)


# --------------------------------------------------------------------------- real data


def _real(name: str) -> Path:
    root = resolve_data_root()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"{name} not available (set KOCH_DATA)")
    return root


@pytest.mark.real_data
def test_real_drive_and_chase():
    root = _real("DRIVE")
    assert len(VesselSegmentation("DRIVE", "training", root=root)) == 20
    test = VesselSegmentation("DRIVE", "test", root=root)
    assert len(test) == 20 and test.names[0] == "01_test"
    item = test[0]
    assert item["image"].shape == (584, 565, 3) and 0.05 < item["vessels"].mean() < 0.2
    root = _real("CHASE_DB1")
    chase = VesselSegmentation("CHASE_DB1", root=root, size=256)
    assert len(chase) == 28
    item = chase[0]
    assert item["name"] == "Image_01L" and 0.6 < item["fov"].mean() < 0.95


@pytest.mark.real_data
def test_real_idrid_lesions():
    ds = LesionSegmentation(root=_real("IDRiD_lesions"))
    assert len(ds) == 14
    se = [n for n, (_, _, masks) in zip(ds.names, ds.samples) if masks["SE"] is not None]
    assert len(se) == 5
    item = ds[ds.names.index("IDRiD_17")]
    assert item["present"] == {"MA", "HE", "EX", "SE"} and item["image"].shape == (512, 512, 3)


@pytest.mark.real_data
def test_real_graded_sets_and_patient_split():
    eyepacs = GradedImages.from_dataset("EyePACS", root=_real("EyePACS"))
    assert len(eyepacs) == 5394 and set(eyepacs.grades) == {0, 1, 2, 3, 4}
    assert len(GradedImages.from_dataset("EyePACS", root=_real("EyePACS"), role="images_512")) == 103
    train, val = patient_split(eyepacs.names, 0.2, seed=0)
    assert not {eyepacs_patient_id(n) for n in train} & {eyepacs_patient_id(n) for n in val}
    assert 0.15 < len(val) / len(eyepacs) < 0.25
    aptos = GradedImages(_real("APTOS2019") / "APTOS2019", size=64)
    assert len(aptos) == 2930 and aptos[0]["image"].shape == (64, 64, 3)
