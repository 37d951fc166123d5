"""The vessel segmenter: geometry round trip, stored threshold, strict weights, metrics, eval CLI, training."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from koch_explore.cli import main
from koch_explore.core.stats import roc_auc
from koch_explore.core.weights import WeightsMismatchError
from koch_explore.data.io import write_image
from koch_explore.data.phantom import generate_phantom
from koch_explore.data.roots import resolve_data_root
from koch_explore.detect.model import Detector, DetectorConfig
from koch_explore.vessels import (
    PatchSampler,
    PixelScores,
    VesselConfig,
    VesselSegmenter,
    VesselTrainConfig,
    best_f1_threshold,
    split_items,
    vessel_loss,
)
from koch_explore.vessels.train import train

# A few thousand parameters at a 96 px working scale: every test runs in about a second.
TINY = VesselConfig(base=4, depth=2, fov_diameter=96, lcn_sigma=2.0, lcn_std_sigma=4.0, dropblock_size=3)


def disc_image(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB texture inside an off-centre ellipse on black, like a fundus photo; and its FOV."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    fov = ((yy - 0.52 * h) / (0.45 * h)) ** 2 + ((xx - 0.48 * w) / (0.42 * w)) ** 2 < 1
    img = (0.25 + 0.5 * rng.random((h, w, 3))).astype(np.float32) * fov[:, :, None]
    return img, fov


def phantom_items(n: int, size: int = 128, seed: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        ph = generate_phantom(seed * 100 + i, size)
        out.append({"image": ph.image, "vessels": ph.vessels, "fov": ph.fov, "name": f"p{i:02d}"})
    return out


@pytest.fixture(scope="module")
def tiny_model() -> VesselSegmenter:
    torch.manual_seed(0)
    model = VesselSegmenter(TINY)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics, so probabilities are not all alike
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64), torch.ones(4, 1, 64, 64))
    return model.eval()


@pytest.mark.parametrize("h, w", [(333, 517), (600, 401)])
def test_maps_have_the_input_geometry_and_vanish_outside_the_fov(tiny_model, h, w):
    from koch_explore.data.preprocess import estimate_fov

    img, true_fov = disc_image(h, w)
    for given, fov in ((true_fov, true_fov), (None, estimate_fov(img))):  # given and estimated FOV
        prob, binary = tiny_model.segment(img, given)
        assert prob.shape == binary.shape == (h, w)
        assert prob.dtype == np.float32 and binary.dtype == bool
        assert 0 <= prob.min() and prob.max() <= 1
        assert not prob[~fov].any() and not binary[~fov].any()
        assert prob[fov].mean() > 0
    fov = true_fov
    # uint8 input is the same image
    prob8, _ = tiny_model.segment((img * 255 + 0.5).astype(np.uint8), fov)
    assert np.abs(prob8 - tiny_model.segment(img, fov)[0]).max() < 0.05


def test_forward_is_fully_convolutional_on_odd_tensors(tiny_model):
    with torch.no_grad():
        out = tiny_model(torch.rand(2, 3, 37, 61))
    assert out.shape == (2, 1, 37, 61)


def test_tta_average_is_equivariant_and_differs_from_one_pass(tiny_model):
    """8x TTA averages over all symmetries of the square, so a transposed or rotated input gives
    the transposed/rotated map exactly (up to float order); a single pass does not."""
    img, fov = disc_image(96, 96, seed=2)
    work = np.ascontiguousarray(img * fov[:, :, None])
    p8 = tiny_model.probability_working(work, fov, tta=8)
    p8_t = tiny_model.probability_working(np.ascontiguousarray(work.transpose(1, 0, 2)), np.ascontiguousarray(fov.T), tta=8)
    p8_r = tiny_model.probability_working(np.ascontiguousarray(np.rot90(work)), np.ascontiguousarray(np.rot90(fov)), tta=8)
    assert np.abs(p8_t - p8.T).max() < 1e-5
    assert np.abs(p8_r - np.rot90(p8)).max() < 1e-5
    p1 = tiny_model.probability_working(work, fov, tta=1)
    p1_t = tiny_model.probability_working(np.ascontiguousarray(work.transpose(1, 0, 2)), np.ascontiguousarray(fov.T), tta=1)
    assert np.abs(p1_t - p1.T).max() > 1e-4  # the untrained net is not symmetric by itself
    with pytest.raises(ValueError, match="tta"):
        tiny_model.probability_working(work, fov, tta=3)


def test_stored_threshold_is_what_segment_uses(tiny_model, tmp_path):
    tiny_model = copy.deepcopy(tiny_model)
    img, fov = disc_image(150, 170, seed=1)
    prob, _ = tiny_model.segment(img, fov)
    t1 = float(np.quantile(prob[fov], 0.3))
    tiny_model.set_threshold(t1)
    path = tiny_model.save(tmp_path / "v.safetensors")
    loaded = VesselSegmenter.load(path)
    assert float(loaded.threshold) == pytest.approx(t1)
    assert float(loaded.metadata["threshold"]) == pytest.approx(t1)
    prob2, binary = loaded.segment(img, fov)
    assert np.array_equal(prob2, prob)
    assert np.array_equal(binary, prob > np.float32(t1))
    loaded.set_threshold(float(np.quantile(prob[fov], 0.8)))
    _, binary2 = loaded.segment(img, fov)
    assert binary2.sum() < binary.sum()
    with pytest.raises(ValueError):
        loaded.set_threshold(0.0)  # 0 would switch on every pixel outside the FOV


def test_save_load_round_trip_and_strict_errors(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "tiny.safetensors", metadata={"note": "x", "figures": {"auc": 0.5}})
    loaded = VesselSegmenter.load(path, expect=TINY)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.metadata["note"] == "x" and json.loads(loaded.metadata["figures"]) == {"auc": 0.5}
    assert loaded.cfg == TINY

    with pytest.raises(WeightsMismatchError, match=r"tiny\.safetensors.*architecture differs.*base=4"):
        VesselSegmenter.load(path, expect=VesselConfig())
    other = VesselSegmenter(VesselConfig(base=8, depth=2, fov_diameter=96))
    from safetensors.torch import load_file

    with pytest.raises(WeightsMismatchError, match=r"tiny\.safetensors.*shape mismatch"):
        other.load_state_strict(load_file(str(path)), source=path)
    detector = Detector(DetectorConfig(n=4, input_size=64, dense_units=8)).save(tmp_path / "detector.safetensors")
    with pytest.raises(WeightsMismatchError, match=r"detector\.safetensors.*not koch-explore vessel segmenter weights"):
        VesselSegmenter.load(detector)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"definitely not weights")
    with pytest.raises(WeightsMismatchError, match="garbage.safetensors"):
        VesselSegmenter.load(garbage)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        VesselSegmenter.load(tmp_path / "missing.safetensors")


def test_pixel_auc_and_best_threshold_are_exact():
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.15
    scores = np.round(np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 1), 2).astype(np.float32)  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    collected = PixelScores()
    collected.add(scores, labels, np.ones_like(labels))
    assert collected.report(0.5)["auc"] == pytest.approx(pairs / (pos.size * neg.size), abs=1e-12)
    assert collected.report(0.5)["auc"] == roc_auc(labels, scores)
    t, f1 = best_f1_threshold(labels, scores)
    brute = []
    for cut in np.unique(scores)[:-1]:
        pred = scores > cut
        tp, fp, fn = (pred & labels).sum(), (pred & ~labels).sum(), (~pred & labels).sum()
        brute.append(2 * tp / (2 * tp + fp + fn))
    assert f1 == pytest.approx(max(brute))
    pred = scores > t
    assert 2 * (pred & labels).sum() / (pred.sum() + labels.sum()) == pytest.approx(f1)


def test_training_crops_reproduce_the_full_image_normalisation():
    """Train and inference see the same preprocessing: a context crop, normalised and trimmed by
    the margin, equals the same window of the normalised full image."""
    items = phantom_items(1, 128)
    cfg = VesselTrainConfig(patch=32, model=TINY)
    model = VesselSegmenter(TINY)
    sampler = PatchSampler(items, cfg, model.lcn.margin)
    c = sampler.crop
    # Zeros beyond the image edge are what the sampler reads there (no FOV, no vessel).
    src = torch.nn.functional.pad(sampler.images[0][0], (0, c, 0, c))
    crop = sampler.sample(np.random.default_rng(0), 0, identity=True, top_left=(20, 30))
    assert torch.allclose(crop, src[:, 20:20 + c, 30:30 + c], atol=1e-4)
    m = model.lcn.margin
    full = model.lcn(src[None, :3], src[None, 3:4])[0, :, 20 + m:20 + m + 32, 30 + m:30 + m + 32]
    part = model.lcn(crop[None, :3], crop[None, 3:4])[0, :, m:m + 32, m:m + 32]
    assert torch.allclose(full, part, atol=1e-4)
    x, fov, target = sampler.batch(0)
    assert x.shape == (cfg.batch_size, 3, c, c) and fov.shape == target.shape == (cfg.batch_size, 1, c, c)
    assert float(x.max()) <= 1 and not (x * (1 - fov)).any() and not (target * (1 - fov)).any()


def test_loss_is_low_for_the_truth_and_ignores_outside_the_fov():
    target = (torch.rand(2, 1, 16, 16) > 0.8).float()
    fov = torch.ones_like(target)
    fov[..., :4] = 0
    good = vessel_loss((target * 2 - 1) * 20, target, fov, 1.0)
    bad = vessel_loss((1 - target * 2) * 20, target, fov, 1.0)
    assert good < 0.01 < 10 < bad
    noisy = (target * 2 - 1) * 20
    noisy[..., :4] = -noisy[..., :4]  # wrong only outside the FOV
    assert vessel_loss(noisy, target, fov, 1.0) == pytest.approx(float(good), abs=1e-6)


def write_fake_drive(root: Path, items: list[dict], split: str = "test") -> Path:
    """The DRIVE layout (TIFF photos, GIF manual trees and FOV masks) filled with phantoms."""
    from PIL import Image

    d = root / "DRIVE" / split
    for sub in ("images", "1st_manual", "mask"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{i + 1:02d}" if split == "test" else f"{i + 21}" for i in range(len(items))]
    for sid, it in zip(ids, items):
        write_image(d / "images" / f"{sid}_{split}.tif", it["image"])
        Image.fromarray(it["vessels"].astype(np.uint8) * 255).save(d / "1st_manual" / f"{sid}_manual1.gif")
        Image.fromarray(it["fov"].astype(np.uint8) * 255).save(d / "mask" / f"{sid}_{split}_mask.gif")
    return root


def test_eval_cli_on_a_fake_drive(tiny_model, tmp_path, capsys):
    root = write_fake_drive(tmp_path / "data", phantom_items(3, 128, seed=3))
    weights = tiny_model.save(tmp_path / "w.safetensors")
    for where in (root, root / "DRIVE"):  # the data root or the dataset folder itself
        assert main(["vessels", "eval", "--root", str(where), "--weights", str(weights), "--json"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert {"auc", "f1", "accuracy", "sensitivity", "specificity", "n"} <= set(rep)
        assert rep["n"] == 3 and rep["dataset"] == "DRIVE" and rep["split"] == "test"
        assert 0 <= rep["auc"] <= 1 and rep["threshold"] == pytest.approx(float(tiny_model.threshold))
    assert main(["vessels", "eval", "--root", str(tmp_path / "nowhere"), "--weights", str(weights)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_segment_cli_writes_binary_and_probability(tiny_model, tmp_path, capsys):
    img, _ = disc_image(90, 110)
    photo = write_image(tmp_path / "eye.png", img)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    weights = tiny_model.save(tmp_path / "w.safetensors")
    code = main(["vessels", "segment", str(photo), str(broken), "--out", str(tmp_path / "out"), "--weights", str(weights)])
    assert code == 1 and "broken.png" in capsys.readouterr().err
    from koch_explore.data.io import read_mask, read_raw

    assert read_mask(tmp_path / "out" / "eye_vessels.png").shape == (90, 110)
    assert read_raw(tmp_path / "out" / "eye_vessels_prob.png").dtype == np.uint8


def test_short_training_lowers_the_loss_fits_a_threshold_and_resumes(tmp_path):
    data = split_items(phantom_items(4, 128, seed=5), val_images=1)
    assert [it["name"] for it in data["val"]] == ["p03"]
    # One thread: on a busy machine two threads of a tiny net mostly wait for each other.
    cfg = VesselTrainConfig(out=str(tmp_path / "run"), steps=80, eval_every=40, batch_size=8, patch=32, lr=1e-2,
                            warmup_steps=5, amp=False, num_threads=1, model=TINY)
    result = train(cfg, data, progress_bar=False)
    losses = result["losses"]
    assert len(losses) == 80 and np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10])
    best = VesselSegmenter.load(tmp_path / "run" / "best.safetensors")
    assert float(best.threshold) == pytest.approx(result["best"]["threshold"], abs=1e-6)
    assert json.loads(best.metadata["held_out"]) == ["p03"]
    assert result["best"]["auc"] > 0.7
    assert [h["step"] for h in result["history"]] == [40, 80]
    again = train(VesselTrainConfig(**{**cfg.__dict__, "steps": 90}), data, resume=True, progress_bar=False)
    assert len(again["losses"]) == 90 and [h["step"] for h in again["history"]] == [40, 80, 90]
    assert again["losses"][:80] == losses


def test_train_cli_is_one_command(tmp_path, capsys):
    root = write_fake_drive(tmp_path / "data", phantom_items(3, 128, seed=7), split="training")
    export = tmp_path / "weights" / "v.safetensors"
    args = ["vessels", "train", "--root", str(root), "--out", str(tmp_path / "run"), "--steps", "4", "--eval-every", "4",
            "--batch-size", "2", "--patch", "32", "--val-images", "1", "--no-amp", "--base", "4", "--depth", "2",
            "--fov-diameter", "96", "--lcn-sigma", "2", "--lcn-std-sigma", "4", "--dropblock-size", "3",
            "--num-threads", "1", "--export", str(export)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["held_out"] == ["23_training"]
    assert VesselSegmenter.load(export).cfg == TINY


def _drive_root() -> Path:
    root = resolve_data_root()
    if root is None or not (root / "DRIVE").is_dir():
        pytest.skip("DRIVE not available (set KOCH_DATA)")
    return root


@pytest.mark.real_data
def test_real_drive_geometry_and_shipped_weights():
    from koch_explore.data.datasets import VesselSegmentation
    from koch_explore.vessels import load_vessels
    from koch_explore.vessels.evaluate import evaluate

    ds = VesselSegmentation("DRIVE", "test", root=_drive_root())
    item = ds[0]
    prob, binary = VesselSegmenter(TINY).segment(item["image"], item["fov"])
    assert prob.shape == binary.shape == item["fov"].shape == (584, 565)
    assert not prob[~item["fov"]].any()
    rep = evaluate(load_vessels(), [ds[i] for i in range(2)])
    assert rep["auc"] > 0.95 and rep["f1"] > 0.7
