"""The o_O detector: layer plan, BN folding, strict weight I/O, training and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from koch_explore.cli import main
from koch_explore.core import stats as metrics
from koch_explore.core.training import read_checkpoint
from koch_explore.core.weights import WeightsMismatchError
from koch_explore.data.phantom.generate import write_phantom_dataset
from koch_explore.detect.model import PRESETS, Detector, DetectorConfig, layer_names
from koch_explore.detect.train import (
    TrainConfig,
    augment,
    sampling_probabilities,
    severity_loss,
    train,
)

SMALL = DetectorConfig(n=8, input_size=128, dense_units=64)


def fundus_batch(b: int, s: int) -> torch.Tensor:
    """A disc of texture on black, like a fundus photo (the norm estimates the FOV from it)."""
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(b, 3, s, s, generator=g)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    fov = ((yy - s / 2) ** 2 + (xx - s / 2) ** 2 < (0.45 * s) ** 2).float()
    return x * fov


@pytest.mark.parametrize(
    "preset, shapes",
    [
        ("o_O-256", {"conv1": (32, 128, 128), "pool1": (32, 64, 64), "conv3": (64, 32, 32), "conv6": (128, 16, 16),
                     "conv9": (256, 8, 8), "conv12": (512, 4, 4), "rmspool": (512, 1, 1), "dense2": (512,), "out": (1,)}),
        ("o_O-512", {"conv1": (32, 224, 224), "pool1": (32, 112, 112), "conv3": (64, 56, 56), "conv6": (128, 28, 28),
                     "conv9": (256, 14, 14), "conv12": (512, 7, 7), "rmspool": (512, 4, 4), "dense2": (512,), "out": (1,)}),
    ],
)
def test_layer_names_and_shapes(preset, shapes):
    model = Detector(preset).eval()
    names = ["norm"] + [f"conv{i}" for i in (1, 2)] + ["pool1"] + [f"conv{i}" for i in (3, 4, 5)] + ["pool2"]
    names += [f"conv{i}" for i in (6, 7, 8)] + ["pool3"] + [f"conv{i}" for i in (9, 10, 11)] + ["pool4", "conv12"]
    names += ["rmspool", "dense1", "dense2", "out"]
    assert model.layer_names == names == layer_names(model.cfg)
    s = model.cfg.input_size
    with torch.no_grad():
        sev, acts = model.forward_features(fundus_batch(1, s), keep=set(names))
    assert sev.shape == (1,)
    for name, shape in shapes.items():
        assert tuple(acts[name].shape[1:]) == shape, name


def test_stride1_padding_alternates_so_drift_cancels():
    model = Detector("o_O-256")
    pads = [layer.pad for name, layer in model.layers.items() if name.startswith("conv") and layer.stride == 1]
    # left/right pads alternate: the half-pixel shift of one layer is undone by the next
    assert pads[0] == (1, 2, 1, 2) and pads[1] == (2, 1, 2, 1)
    total_shift = sum(p[1] - p[0] for p in pads)
    assert abs(total_shift) <= 1


def test_fold_batchnorm_keeps_outputs():
    model = Detector(SMALL)
    model.train()
    with torch.no_grad():  # populate BN running stats with something non-trivial
        for _ in range(3):
            model(fundus_batch(4, 128))
    model.eval()
    folded = model.fold_batchnorm()
    x = fundus_batch(2, 128)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_norm_is_invariant_to_global_brightness():
    """The in-model normalisation makes a darker/brighter photo of the same eye look alike."""
    model = Detector(SMALL).eval()
    x = fundus_batch(1, 128) * 0.6
    a = model.norm(x)
    b = model.norm(x * 1.5)
    assert torch.allclose(a, b, atol=1e-3)


def test_save_load_round_trip(tmp_path):
    model = Detector(SMALL).eval()
    model.thresholds.copy_(torch.tensor([0.7, 1.4, 2.6, 3.2]))
    exact = model.save(tmp_path / "d.safetensors", metadata={"note": "x"}, half=False)
    loaded = Detector.load(exact)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.metadata["note"] == "x"
    assert loaded.weights_hash() == model.weights_hash()
    half = Detector.load(model.save(tmp_path / "h.safetensors"))
    x = fundus_batch(2, 128)
    with torch.no_grad():
        assert torch.allclose(model(x), half(x), atol=2e-2)
    assert torch.equal(half.thresholds, model.thresholds)


def test_mismatched_weights_are_rejected(tmp_path):
    path = Detector(SMALL).save(tmp_path / "small.safetensors")
    with pytest.raises(WeightsMismatchError, match="small.safetensors.*architecture differs"):
        Detector.load(path, expect="o_O-256")
    other = Detector(DetectorConfig(n=16, input_size=128, dense_units=64))
    from safetensors.torch import load_file

    with pytest.raises(WeightsMismatchError, match="shape mismatch"):
        other.load_state_strict(load_file(str(path)), source=path)
    bad = tmp_path / "notweights.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsMismatchError, match="notweights.safetensors"):
        Detector.load(bad)


def test_metrics_known_values():
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    assert metrics.quadratic_weighted_kappa(y, y) == pytest.approx(1.0)
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    sev = y + np.linspace(-0.3, 0.3, len(y))
    t = metrics.fit_thresholds(sev, y)
    assert metrics.quadratic_weighted_kappa(y, metrics.apply_thresholds(sev, t)) == pytest.approx(1.0)


def test_sampling_anneals_from_balanced_to_natural():
    grades = np.array([0] * 90 + [4] * 10)
    cfg = TrainConfig(balance_epochs=10, final_class_weights=(1, 1, 1, 1, 1))
    p0 = sampling_probabilities(grades, 0, cfg)
    p_end = sampling_probabilities(grades, 10, cfg)
    assert p0[grades == 4].sum() == pytest.approx(0.5)
    assert p_end[grades == 4].sum() == pytest.approx(0.1)


def test_augment_keeps_black_frame_and_range():
    x = fundus_batch(4, 64)
    y = augment(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    corners = y[:, :, :3, :3]
    assert float(corners.abs().max()) == 0.0


def test_bicubic_augmentation_keeps_more_fine_detail_than_bilinear():
    import cv2
    from skimage.data import retina

    img = cv2.resize(retina(), (256, 256), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).repeat(8, 1, 1, 1)
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)

    def fine_detail(y):  # mean |Laplacian| well inside the FOV, where no frame edge is
        inner = y[:, :, 96:160, 96:160]
        return float(torch.nn.functional.conv2d(inner, lap, groups=3).abs().mean())

    same = lambda: torch.Generator().manual_seed(3)  # identical rotations, zooms and shifts
    bilinear, bicubic = augment(x, same(), "bilinear"), augment(x, same(), "bicubic")
    assert float(bicubic.min()) >= 0 and float(bicubic.max()) <= 1
    assert float(bicubic[:, :, :3, :3].abs().max()) == 0.0
    assert fine_detail(bicubic) > 1.15 * fine_detail(bilinear)
    assert fine_detail(bicubic) < fine_detail(x)  # still a resampling, not a sharpening


@pytest.fixture(scope="module")
def phantom_graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom_graded")
    write_phantom_dataset(root, count=10, seed=5, size=256, progress=False)
    return root


def test_referable_term_pulls_across_the_referable_cut_only():
    def grad(pred: float, grade: float, w: float) -> float:
        p = torch.tensor([pred], requires_grad=True)
        severity_loss(p, torch.tensor([grade]), w).backward()
        return p.grad.item()

    assert severity_loss(torch.tensor([0.3, 2.9]), torch.tensor([0.0, 4.0])).item() == pytest.approx((0.09 + 1.21) / 2)
    # A grade-2 eye predicted just below the cut: MSE alone pulls it up by 2 x 0.6; the term adds more.
    assert grad(1.4, 2.0, 1.0) < grad(1.4, 2.0, 0.0) - 0.5
    # A grade-0 eye just above the cut is pushed down harder too.
    assert grad(1.6, 0.0, 1.0) > grad(1.6, 0.0, 0.0) + 0.5
    # An eye already well on its side (grade 4 at 3.5) feels almost only the MSE.
    assert abs(grad(3.5, 4.0, 1.0) - grad(3.5, 4.0, 0.0)) < 0.05


def test_autocast_default_follows_native_bf16():
    from koch_explore.core.runtime import bf16_is_native, resolve_amp

    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else None
    if flags is not None and "flags" in flags:  # Linux on x86: the kernel names the bf16 units
        assert bf16_is_native("cpu") == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert resolve_amp(None, "cpu") == bf16_is_native("cpu")
    if torch.cuda.is_available():
        assert resolve_amp(None, "cuda") == torch.cuda.is_bf16_supported()
    assert resolve_amp(False, "cuda") is False and resolve_amp(True, "cpu") is True  # an explicit request wins


def test_short_training_lowers_loss_and_resumes(tmp_path):
    from koch_explore.data.graded import _load_phantom
    from koch_explore.detect.predict import predict_arrays

    PRESETS["test-small"] = SMALL  # a small architecture keeps this test in seconds
    try:
        cfg = TrainConfig(data="phantom", phantom_count=112, phantom_size=128, preset="test-small", epochs=6,
                          batch_size=8, lr=1e-3, out=str(tmp_path / "run"), balance_epochs=0, amp=False)
        data = _load_phantom(cfg, SMALL.input_size)
        tr = data["train"]
        torch.manual_seed(cfg.seed)
        before = Detector("test-small").eval()
        mse = lambda m: float(np.mean((predict_arrays(m, tr.images, "cpu") - tr.grades) ** 2))
        mse_before = mse(before)
        best = train(cfg, data=data)
        trained = Detector.load(tmp_path / "run" / "best.safetensors")
        assert json.loads(trained.metadata["train_config"])["amp"] is False
        mse_after = mse(trained)
        assert mse_after < 0.9 * mse_before, (mse_before, mse_after)
        hist = json.loads((tmp_path / "run" / "history.json").read_text())
        assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5, 6] and best["epoch"] >= 1
        assert hist[-1]["train_loss"] < hist[0]["train_loss"]
        # resume: one more epoch continues from the checkpoint, not from scratch
        cfg.epochs = 7
        train(cfg, data=data, resume=True)
        hist = json.loads((tmp_path / "run" / "history.json").read_text())
        assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5, 6, 7]
        assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 7 * (len(tr.grades) // 8)
    finally:
        PRESETS.pop("test-small", None)


def test_warm_start_from_another_input_size(tmp_path):
    from dataclasses import replace

    from koch_explore.detect.train import warm_start

    torch.manual_seed(3)
    src = Detector(SMALL).eval()
    path = src.save(tmp_path / "small128.safetensors", half=False)
    bigger = warm_start(Detector(replace(SMALL, input_size=192)), path).eval()
    for (k, a), b in zip(src.state_dict().items(), bigger.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.rand(1, 3, 192, 192)
    assert torch.isfinite(bigger(x)).all()  # the global head takes the larger grid
    with pytest.raises(WeightsMismatchError, match="small128.safetensors.*n=8"):
        warm_start(Detector(replace(SMALL, n=4)), path)  # a different width is not a warm start


def test_eval_and_predict_cli(tmp_path, phantom_graded, capsys):
    weights = Detector(SMALL).eval().save(tmp_path / "w.safetensors")
    assert main(["detector", "eval", "--images", str(phantom_graded / "images"), "--labels",
                 str(phantom_graded / "labels.csv"), "--weights", str(weights), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"n", "qwk", "accuracy", "auc_referable", "confusion"} <= set(rep)
    assert rep["n"] == 10 and np.array(rep["confusion"]).shape == (5, 5) and np.array(rep["confusion"]).sum() == 10
    images = sorted((phantom_graded / "images").glob("*.png"))[:2]
    assert main(["detector", "predict", *map(str, images), "--weights", str(weights), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(p) for p in images] and all(0 <= r["grade"] <= 4 for r in rows)


def test_eval_names_an_image_without_label(tmp_path, phantom_graded, capsys):
    images = tmp_path / "imgs"
    shutil.copytree(phantom_graded / "images", images)
    shutil.copy(images / "phantom_00000.png", images / "stray_eye.png")
    weights = Detector(SMALL).save(tmp_path / "w.safetensors")
    code = main(["detector", "eval", "--images", str(images), "--labels", str(phantom_graded / "labels.csv"),
                 "--weights", str(weights), "--json"])
    assert code == 2
    assert "stray_eye.png" in capsys.readouterr().err


def test_eval_accepts_aptos_columns(tmp_path, phantom_graded, capsys):
    rows = (phantom_graded / "labels.csv").read_text().splitlines()[1:]
    csv = tmp_path / "aptos.csv"
    csv.write_text("id_code,diagnosis\n" + "\n".join(rows) + "\nnot_in_folder,3\n")
    weights = Detector(SMALL).save(tmp_path / "w.safetensors")
    assert main(["detector", "eval", "--images", str(phantom_graded / "images"), "--labels", str(csv),
                 "--weights", str(weights), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_the_same_checkpoint_format(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "koch_explore", "detector", "train",
           "--data", "phantom", "--phantom-count", "24", "--phantom-size", "256", "--epochs", "1",
           "--batch-size", "8", "--out", str(out), "--no-amp"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert {"model", "ema", "opt", "gen", "step", "minutes", "state", "config"} <= set(ck)
    assert [h["epoch"] for h in read_checkpoint(out / "last.pt")["history"]] == [1]
    model = Detector.load(out / "best.safetensors")
    assert model.cfg == PRESETS["o_O-256"]


def test_paired_eye_blend_borrows_from_the_fellow_eye_only():
    from koch_explore.core.stats import fellow_eye_index, paired_eye_blend

    names = ["10_left", "10_right", "13_left", "aptos_abc", "15_right", "15_left"]
    assert fellow_eye_index(names).tolist() == [1, 0, 2, 3, 5, 4]
    s = np.array([0.0, 2.0, 1.0, 3.0, 4.0, 0.0], np.float32)
    out = paired_eye_blend(s, names, 0.25)
    assert np.allclose(out, [0.5, 1.5, 1.0, 3.0, 3.0, 1.0])
    assert np.array_equal(paired_eye_blend(s, names, 0.0), s)
    with pytest.raises(ValueError, match="pair blend"):
        paired_eye_blend(s, names, 0.7)


def test_fellow_eye_weight_is_fit_where_the_fellow_eye_carries_the_disease():
    from koch_explore.core.stats import fit_pair_blend

    rng = np.random.default_rng(0)
    patients = 400
    disease = rng.choice([0, 0, 0, 1, 2, 3], size=patients)  # both eyes of a patient share it
    names = [f"{p}_{side}" for p in range(patients) for side in ("left", "right")]
    grades = np.repeat(disease, 2)
    noisy = grades + rng.normal(0, 1.0, size=grades.size)  # each eye's own view is noisy
    w, aucs = fit_pair_blend(noisy, names, grades)
    assert w >= 0.3 and aucs[w] > aucs[0.0] + 0.03
    # Fellow eyes that share nothing (patients shuffled): borrowing from them only adds noise.
    shuffled = [names[i] for i in rng.permutation(len(names))]
    w_bad, aucs_bad = fit_pair_blend(noisy, shuffled, grades)
    assert w_bad <= 0.1 and aucs_bad[w_bad] >= aucs_bad[0.5]


def test_model_card_renders_the_fit_check_from_the_shipped_figures():
    import json
    from pathlib import Path

    from koch_explore.detect.card import model_card

    fig = json.loads((Path(__file__).parents[1] / "koch_explore/weights/detector_eyepacs_256.json").read_text())
    card = model_card(fig, "cmd", "hw")  # JSON keys are strings: the card must still find the weight's AUC
    fit = fig["fit"]
    assert "## Fit, and the fellow eye" in card
    assert f"| EyePACS training eyes | {fit['train_n']} |" in card and f"{fit['train_auc_single']:.3f}" in card
    assert f"W = {fit['pair_weight']:.2f}" in card and f"{fit['val_pair']['auc_referable']:.3f}" in card
    assert "None" not in card.split("## Fit")[1].split("DRIVE")[0]
