"""Every way a fundus file can be bad must raise FundusReadError naming that file."""

from __future__ import annotations

from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from koch_explore.data.io import (
    FundusReadError,
    read_image,
    read_mask,
    read_raw,
    write_image,
)
from koch_explore.data.roots import resolve_data_root


def _fundus(h: int = 120, w: int = 160) -> np.ndarray:
    """Orange disc with dark 'vessels' on a black surround, float32 RGB."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
    img = np.zeros((h, w, 3), np.float32)
    img[disc] = (0.85, 0.45, 0.2)
    img[disc & (np.abs(yy - xx * h / w) < 2)] *= 0.5
    return img


def _jpeg_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", (img[:, :, ::-1] * 255).astype(np.uint8))
    assert ok
    return buf.tobytes()


def _assert_names(exc: pytest.ExceptionInfo[FundusReadError], path: Path, *words: str) -> None:
    assert exc.value.path == path
    assert str(path) in str(exc.value)
    for word in words:
        assert word in str(exc.value)


def test_missing_file_names_it(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(FundusReadError) as exc:
        read_image(p)
    _assert_names(exc, p, "does not exist")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(FundusReadError) as exc:
        read_raw(tmp_path)
    _assert_names(exc, tmp_path, "not a regular file")


def test_empty_file_names_it(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(FundusReadError) as exc:
        read_image(p)
    _assert_names(exc, p, "empty")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_jpeg_names_it(tmp_path, keep):
    data = _jpeg_bytes(_fundus(200, 240))
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(FundusReadError) as exc:
        read_image(p)
    _assert_names(exc, p)


def test_jpeg_missing_only_its_end_marker_is_truncated(tmp_path):
    # libjpeg decodes this to a full image and only warns: the EOI check is what catches it.
    p = tmp_path / "noeoi.jpg"
    p.write_bytes(_jpeg_bytes(_fundus())[:-2])
    with pytest.raises(FundusReadError) as exc:
        read_raw(p)
    _assert_names(exc, p, "truncated")


def test_truncated_png_names_it(tmp_path):
    ok, buf = cv2.imencode(".png", (_fundus() * 255).astype(np.uint8))
    assert ok
    p = tmp_path / "cut.png"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(FundusReadError) as exc:
        read_image(p)
    _assert_names(exc, p, "not a readable image")


def test_text_renamed_jpg_names_it(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("patient 10, left eye: moderate NPDR\n" * 20)
    with pytest.raises(FundusReadError) as exc:
        read_image(p)
    _assert_names(exc, p, "not a readable image")


def test_all_black_frame_names_it(tmp_path):
    p = write_image(tmp_path / "black.png", np.zeros((64, 64, 3), np.float32))
    with pytest.raises(FundusReadError) as exc:
        read_image(p)
    _assert_names(exc, p, "black")
    assert read_image(p, allow_black=True).max() == 0.0


def test_constant_frame_names_it(tmp_path):
    p = write_image(tmp_path / "grey.png", np.full((64, 64, 3), 0.5, np.float32))
    with pytest.raises(FundusReadError) as exc:
        read_image(p)
    _assert_names(exc, p, "constant")


def test_16bit_tiff_is_scaled(tmp_path):
    arr = np.zeros((32, 48, 3), np.uint16)
    arr[..., 0] = 65535  # written as BGR: blue full
    arr[..., 2] = 32768  # red half
    p = tmp_path / "deep.tif"
    assert cv2.imwrite(str(p), arr)
    img = read_image(p)
    assert img.dtype == np.float32 and img.shape == (32, 48, 3)
    np.testing.assert_allclose(img[0, 0], [32768 / 65535, 0.0, 1.0], atol=1e-6)


def test_grayscale_reads_to_three_equal_channels(tmp_path):
    gray = (_fundus()[:, :, 0] * 255).astype(np.uint8)
    p = tmp_path / "gray.png"
    assert cv2.imwrite(str(p), gray)
    img = read_image(p)
    assert img.shape == gray.shape + (3,)
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_allclose(img[..., 2], gray / 255.0, atol=1e-6)


def test_gif_mask_reads_as_bool(tmp_path):
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 5:25] = 255
    p = tmp_path / "21_training_mask.gif"
    iio.imwrite(p, mask)
    m = read_mask(p)
    assert m.dtype == bool and m.shape == (40, 50)
    np.testing.assert_array_equal(m, mask > 0)


def test_empty_mask_rejected_only_when_asked(tmp_path):
    p = write_image(tmp_path / "none.png", np.zeros((16, 16), bool))
    assert not read_mask(p).any()
    with pytest.raises(FundusReadError) as exc:
        read_mask(p, allow_empty=False)
    _assert_names(exc, p, "empty")


def test_rgba_drops_alpha_and_keeps_rgb_order(tmp_path):
    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[..., 2] = 200  # red
    bgra[..., 1] = 100  # green
    bgra[..., 3] = 7  # nearly transparent: must not matter
    p = tmp_path / "rgba.png"
    assert cv2.imwrite(str(p), bgra)
    img = read_image(p)
    assert img.shape == (20, 30, 3)
    np.testing.assert_allclose(img[0, 0], [200 / 255, 100 / 255, 0.0], atol=1e-6)


def test_write_image_round_trip_keeps_rgb_order(tmp_path):
    img = _fundus()
    p = write_image(tmp_path / "sub" / "x.png", img)
    back = read_image(p)
    np.testing.assert_allclose(back, img, atol=1 / 255)
    assert not list(p.parent.glob("*.tmp"))


def test_error_is_a_value_error_with_fields(tmp_path):
    err = FundusReadError(tmp_path / "a.jpg", "broken")
    assert isinstance(err, ValueError)
    assert err.problem == "broken" and err.path.name == "a.jpg"


@pytest.mark.real_data
def test_real_drive_gif_masks_read():
    root = resolve_data_root()
    if root is None or not (root / "DRIVE").is_dir():
        pytest.skip("DRIVE not available (set KOCH_DATA)")
    mask = read_mask(root / "DRIVE/training/mask/21_training_mask.gif")
    vessels = read_mask(root / "DRIVE/training/1st_manual/21_manual1.gif")
    image = read_image(root / "DRIVE/training/images/21_training.tif")
    assert mask.shape == vessels.shape == image.shape[:2] == (584, 565)
    assert 0.6 < mask.mean() < 0.8 and 0.05 < vessels.mean() < 0.2
