"""FOV estimation and crop -> pad -> resize on synthetic and real fundus photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from koch_explore.data.io import FundusReadError, read_image, read_mask
from koch_explore.data.preprocess import (
    crop_to_fov,
    estimate_fov,
    fov_box,
    pad_to_square,
    prepare_fundus,
    prepare_mask,
    resize,
)
from koch_explore.data.roots import resolve_data_root


def _disc(h: int, w: int, cy: float | None = None, cx: float | None = None, r: float | None = None) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy = h / 2 if cy is None else cy
    cx = w / 2 if cx is None else cx
    r = 0.45 * min(h, w) if r is None else r
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def _fundus(h: int = 300, w: int = 400, surround: float = 0.0, **disc) -> tuple[np.ndarray, np.ndarray]:
    """Orange disc with a vignetted rim, a dark vessel and a dark lesion; returns (image, true FOV)."""
    fov = _disc(h, w, **disc)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2) / (0.45 * min(h, w))
    shade = np.clip(1.0 - 0.5 * r**2, 0.3, 1.0)[..., None]
    img = np.full((h, w, 3), surround, np.float32)
    colour = (np.array([0.9, 0.45, 0.2], np.float32) * shade).astype(np.float32)
    img[fov] = colour[fov]
    img[fov & (np.abs(yy - h / 2 - 0.3 * (xx - w / 2)) < 2)] *= 0.2  # a vessel crossing the disc
    img[_disc(h, w, h / 2, w / 2 + 0.2 * min(h, w), 0.05 * min(h, w))] = 0.02  # a very dark lesion
    return img, fov


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_estimate_fov_finds_the_disc_and_fills_dark_holes():
    img, fov = _fundus()
    est = estimate_fov(img)
    assert est.dtype == bool and est.shape == fov.shape
    assert _iou(est, fov) > 0.98
    assert est[150, 200 + 60]  # the dark lesion is inside the FOV


def test_estimate_fov_ignores_burnt_in_text_outside_the_disc():
    img, fov = _fundus()
    img[5:15, 5:60] = 1.0  # a white label in the corner
    assert _iou(estimate_fov(img), fov) > 0.98


def test_estimate_fov_on_grey_surround():
    # Some cameras leave a dark grey, not black, margin; the corners tell its level.
    img, fov = _fundus(surround=0.15)
    assert _iou(estimate_fov(img), fov) > 0.95


def test_estimate_fov_on_grayscale_and_uint8():
    img, fov = _fundus()
    assert _iou(estimate_fov(img[:, :, 0]), fov) > 0.97
    assert _iou(estimate_fov((img * 255).astype(np.uint8)), fov) > 0.98


def test_estimate_fov_on_a_clipped_disc():
    # Kaggle photos often have the circle cut by the top and bottom of the sensor.
    img, fov = _fundus(300, 400, r=170)
    assert fov[0].any() and _iou(estimate_fov(img), fov) > 0.97


def test_estimate_fov_on_a_natural_photo_is_nearly_the_whole_frame():
    rng = np.random.default_rng(0)
    photo = (0.3 + 0.5 * rng.random((240, 320, 3))).astype(np.float32)
    assert estimate_fov(photo).mean() > 0.95


def test_estimate_fov_black_frame_names_the_array_or_path(tmp_path):
    black = np.zeros((100, 120, 3), np.float32)
    with pytest.raises(FundusReadError) as exc:
        estimate_fov(black)
    assert "<array 100x120x3 float32>" in str(exc.value) and "black" in str(exc.value)
    with pytest.raises(FundusReadError) as exc:
        estimate_fov(black, path=tmp_path / "blank.jpg")
    assert "blank.jpg" in str(exc.value)


def test_estimate_fov_constant_frame():
    with pytest.raises(FundusReadError, match="constant"):
        estimate_fov(np.full((50, 50, 3), 0.6, np.float32))


def test_estimate_fov_rejects_wrong_shapes():
    with pytest.raises(FundusReadError, match="shape"):
        estimate_fov(np.zeros((10, 10, 2), np.float32))


def test_crop_to_fov_with_margin_is_a_clipped_view():
    img = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    fov = np.zeros((100, 80), bool)
    fov[20:40, 2:50] = True
    assert fov_box(fov) == (20, 40, 2, 50)
    out = crop_to_fov(img, fov, margin=5)
    assert out.shape == (30, 55)  # the left margin is clipped at the frame edge
    assert np.shares_memory(out, img)


def test_crop_to_fov_rejects_mismatched_or_empty_masks():
    img = np.zeros((10, 10, 3), np.float32)
    with pytest.raises(FundusReadError, match="does not match"):
        crop_to_fov(img, np.ones((9, 10), bool))
    with pytest.raises(FundusReadError, match="empty"):
        crop_to_fov(img, np.zeros((10, 10), bool))


@pytest.mark.parametrize("shape", [(30, 50, 3), (50, 30), (40, 40)])
def test_pad_to_square_centres_and_keeps_dtype(shape):
    img = np.ones(shape, np.float32)
    out = pad_to_square(img)
    side = max(shape[:2])
    assert out.shape[:2] == (side, side) and out.dtype == np.float32
    assert out.sum() == img.sum()
    rows = np.flatnonzero(out.reshape(side, side, -1).any(axis=(1, 2)))
    assert abs(rows[0] - (side - 1 - rows[-1])) <= 1
    mask = pad_to_square(np.ones(shape[:2], bool))
    assert mask.dtype == bool and mask.sum() == shape[0] * shape[1]


def test_resize_area_when_shrinking_cubic_when_enlarging():
    rng = np.random.default_rng(1)
    img = rng.random((64, 64, 3)).astype(np.float32)
    small = resize(img, 16)
    assert small.shape == (16, 16, 3) and small.dtype == np.float32
    assert abs(float(small.mean()) - float(img.mean())) < 1e-3  # area averaging preserves the mean
    big = resize(img, (100, 130))
    assert big.shape == (100, 130, 3)
    assert big.min() >= img.min() and big.max() <= img.max()  # bicubic overshoot clipped


def test_resize_keeps_masks_bool_and_single_channels():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = resize(mask, 20)
    assert out.dtype == bool and out.sum() == 100
    assert resize(np.ones((40, 40, 1), np.float32), 10).shape == (10, 10, 1)
    with pytest.raises(ValueError):
        resize(mask, 0)


def test_prepare_fundus_squares_and_keeps_aspect():
    img, fov = _fundus(300, 400, cx=150)  # off-centre disc
    out, out_fov = prepare_fundus(img, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.float32
    assert out_fov.shape == (128, 128) and out_fov.dtype == bool
    # The disc fills the square: its area is close to pi/4 of the frame.
    assert abs(out_fov.mean() - np.pi / 4) < 0.03
    # Black outside the FOV, apart from the one-pixel rim that resampling blends.
    near_fov = cv2.dilate(out_fov.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert out[~near_fov].max() < 0.05


def test_prepare_fundus_with_given_fov_and_matching_mask():
    img, fov = _fundus(200, 260)
    vessels = img[:, :, 0] < 0.25
    out, out_fov = prepare_fundus(img, 64, fov, margin=3)
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(prepare_mask(fov, fov, 64, margin=3), out_fov)
    assert prepare_mask(vessels, fov, 64, margin=3).shape == (64, 64)


def test_prepare_fundus_black_frame_names_path(tmp_path):
    with pytest.raises(FundusReadError) as exc:
        prepare_fundus(np.zeros((40, 40, 3), np.float32), 32, path=tmp_path / "x.png")
    assert "x.png" in str(exc.value)


def test_a_4000x3000_photo_is_cropped_to_its_fov_and_prepared():
    # its speed is a benchmark (benchmarks/bench_prepare.py), not a wall-clock assertion here
    img = np.zeros((3000, 4000, 3), np.float32)
    cv2.circle(img, (2000, 1500), 1400, (0.8, 0.4, 0.2), thickness=-1)
    out, out_fov = prepare_fundus(img, 512)
    assert out.shape == (512, 512, 3) and out_fov.shape == (512, 512)
    assert abs(out_fov.mean() - np.pi / 4) < 0.02


def _real(name: str):
    root = resolve_data_root()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"{name} not available (set KOCH_DATA)")
    return root / name


@pytest.mark.real_data
def test_real_drive_fov_matches_the_official_masks():
    drive = _real("DRIVE")
    ious = []
    for image_path in sorted(drive.glob("*/images/*.tif")):
        mask_path = image_path.parent.parent / "mask" / image_path.name.replace(".tif", "_mask.gif")
        ious.append(_iou(estimate_fov(read_image(image_path)), read_mask(mask_path)))
    assert len(ious) == 40 and min(ious) > 0.97


@pytest.mark.real_data
@pytest.mark.parametrize(
    "dataset, pattern",
    [("CHASE_DB1", "Image_*.jpg"), ("EyePACS", "images_256/*.jpg"), ("EyePACS", "fullres_sample_512/*.jpg"),
     ("APTOS2019", "*.jpg"), ("IDRiD_lesions", "IDRiD_??.jpg")],
)
def test_real_fov_covers_a_plausible_disc(dataset, pattern):
    files = sorted(_real(dataset).glob(pattern))[:25]
    for f in files:
        img, fov = prepare_fundus(read_image(f), 128, path=f)
        assert 0.5 < fov.mean() < 1.0, f
        assert img.shape == (128, 128, 3)
