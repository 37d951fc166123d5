"""Evidence-map methods on the shipped phantom detector: size, finiteness, response to a planted
lesion, no hooks left behind; the healthy baseline's file round trip; the sanity figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from koch_explore.core.stats import spearman
from koch_explore.core.weights import WeightsMismatchError, resolve_weights
from koch_explore.data.phantom.generate import generate_phantom
from koch_explore.detect.model import Detector
from koch_explore.evidence.base import METHODS, explain
from koch_explore.evidence.baseline import HealthyBaseline
from koch_explore.evidence.sanity import input_dependence, randomized_copy

PHANTOM_WEIGHTS = resolve_weights("detector", "phantom")  # a path: tests load it fresh


# Measured: Grad-CAM (8x8 cells) and the plain gradient move little on this phantom; the others at
# least double (see the test below).
COARSE = {"gradcam", "gradient"}


@pytest.fixture(scope="module")
def detector():
    torch.set_num_threads(2)
    return Detector.load(PHANTOM_WEIGHTS)


def _healthy_and_planted():
    """A grade-3 phantom (``planted``) and the same photo with every lesion filled by its blurred
    surroundings (``healthy``); ``where`` is the lesions' union, dilated by 3 px."""
    import cv2

    ph = generate_phantom(seed=7, size=256, grade=3)
    planted = np.clip(ph.image, 0, 1).astype(np.float32)
    union = np.logical_or.reduce([m for m in ph.lesions.values()])
    where = cv2.dilate(union.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    keep = (~where & ph.fov).astype(np.float32)
    fill = cv2.GaussianBlur(planted * keep[..., None], (0, 0), 6) / np.maximum(cv2.GaussianBlur(keep, (0, 0), 6), 1e-6)[..., None]
    healthy = np.where(where[..., None], fill, planted).astype(np.float32)
    return healthy, planted, ph.fov, where


def _share(m: np.ndarray, fov: np.ndarray, where: np.ndarray) -> float:
    return float(m[where & fov].sum() / max(m[fov].sum(), 1e-12))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_is_finite_input_sized_and_sees_a_planted_lesion(detector, method):
    healthy, planted, fov, where = _healthy_and_planted()
    x = torch.from_numpy(np.stack([healthy, planted])).permute(0, 3, 1, 2).contiguous()
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    ev = explain(detector, x, method)
    assert ev.maps.shape == (2, 256, 256) and ev.maps.dtype == np.float32
    assert np.isfinite(ev.maps).all() and (ev.maps >= 0).all()
    # Nothing left behind: no hooks, same weights, same mode.
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in detector.modules())
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())
    assert not detector.training
    if method == "random":
        return
    with torch.no_grad():
        sev = detector(x)
    assert sev[1] > sev[0] + 0.5, "the planted lesions must raise the phantom detector's severity"
    share_h, share_p = _share(ev.maps[0], fov, where), _share(ev.maps[1], fov, where)
    msg = f"{method}: evidence share on the planted lesions {share_h:.3f} -> {share_p:.3f}"
    assert share_p > share_h, msg
    if method not in COARSE:
        # Localising methods: at least 1.5x more mass on the lesions, and more than their area.
        assert share_p > 1.5 * share_h and share_p > 1.3 * where[fov].mean(), msg


def test_healthy_baseline_round_trip_and_wrong_weights(detector, tmp_path):
    imgs = np.stack([(generate_phantom(seed=100 + i, size=256, grade=0).image * 255).astype(np.uint8) for i in range(4)])
    base = HealthyBaseline.compute(detector, imgs, "dense2", batch_size=2)
    assert base.mean.shape == (512,) and base.n_images == 4 and (base.mean >= -0.1).all()
    path = base.save(tmp_path / "b.safetensors")
    back = HealthyBaseline.load(path, detector)
    assert torch.equal(back.mean, base.mean) and back.layer == "dense2" and back.detector_hash == detector.weights_hash()
    other = Detector(detector.cfg)
    with pytest.raises(WeightsMismatchError, match="other detector weights"):
        HealthyBaseline.load(path, other)
    # The excess projection of an image equal to the baseline population is small.
    fresh = Detector.load(PHANTOM_WEIGHTS)
    fresh.source_path = tmp_path / "nothing.safetensors"
    with pytest.raises(FileNotFoundError, match="isolate baseline"):
        explain(fresh, imgs[:1], "deconvnet-excess")


def test_sanity_figures_tell_a_constant_map_from_an_input_dependent_one():
    rng = np.random.default_rng(0)
    fov = np.ones((5, 32, 32), bool)
    constant = np.stack([np.outer(np.arange(32), np.ones(32)) + 0.01 * rng.random((32, 32)) for _ in range(5)])
    varied = rng.random((5, 32, 32))
    assert input_dependence(constant, fov) > 0.99
    assert input_dependence(varied, fov) < 0.5
    a = rng.random(200)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert abs(spearman(a, rng.random(200))) < 0.25


def test_randomized_copy_keeps_the_bottom_and_changes_the_top(detector):
    r = randomized_copy(detector, blocks=2)
    sd, rd = detector.state_dict(), r.state_dict()
    assert torch.equal(sd["layers.conv1.conv.weight"], rd["layers.conv1.conv.weight"])
    assert not torch.equal(sd["layers.dense1.fc.weight"], rd["layers.dense1.fc.weight"])
    last = [n for n in detector.layers.keys() if n.startswith("conv")][-1]
    assert not torch.equal(sd[f"layers.{last}.conv.weight"], rd[f"layers.{last}.conv.weight"])


def test_sanity_report_runs_every_kind_of_method_on_a_fresh_detector():
    from koch_explore.evidence.sanity import sanity_report

    det = Detector.load(PHANTOM_WEIGHTS)  # fresh: no baseline cached yet
    eyes = np.stack([(generate_phantom(seed=200 + i, size=256).image * 255).astype(np.uint8) for i in range(4)])
    rep = sanity_report(det, eyes, None, ["deconvnet-excess", "guided-gradcam", "random"], n_random=2, batch=2, progress=False,
                        cascade=True)
    assert rep["default"] == "guided-gradcam" and rep["n_eyes"] == 4 and rep["n_randomized"] == 2
    for m, r in rep["methods"].items():
        assert -1 <= r["input_dependence"] <= 1
        assert (r["randomization_similarity"] is None) == (m == "random")
        if m != "random":  # the cascade: 1 ... all 5 conv blocks re-initialised, block 2 is the headline figure
            assert list(r["randomization_cascade"]) == ["1", "2", "3", "4", "5"]
            assert r["randomization_cascade"]["2"] == pytest.approx(r["randomization_similarity"])


@pytest.mark.parametrize("preset", ["o_O-256", "o_O-512"])
def test_cam_layer_is_the_last_conv_with_cells_of_at_most_32_px(preset):
    from koch_explore.evidence.methods import cam_layer

    det = Detector(preset)
    assert cam_layer(det) == "conv11" and cam_layer(det, "conv5") == "conv5" and cam_layer(det, "dense2") == "conv11"
    _, acts = det.eval().forward_features(torch.zeros(1, 3, det.cfg.input_size, det.cfg.input_size), keep={"conv11", "conv12"})
    assert det.cfg.input_size / acts["conv11"].shape[-1] == 32 and det.cfg.input_size / acts["conv12"].shape[-1] == 64


@pytest.mark.parametrize("method", METHODS)
def test_each_method_explains_a_frozen_detector_under_no_grad(detector, method):
    # The synthesizer's trainer freezes the detector (requires_grad off) and cultures its bank inside
    # training code: every method must give the same map there as on a detector that takes gradients.
    _, planted, _, _ = _healthy_and_planted()
    x = torch.from_numpy(planted[None]).permute(0, 3, 1, 2).contiguous()
    start = "conv8" if "gradcam" in method else "dense2"  # a finer Grad-CAM layer too; baselines exist for dense2
    want = explain(detector, x, method, start=start).maps
    try:
        for p in detector.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            got = explain(detector, x, method, start=start).maps
    finally:
        for p in detector.parameters():
            p.requires_grad_(True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_is_a_class_that_leaves_no_hook_and_restores_the_mode(detector, name):
    from koch_explore.evidence import EvidenceMethod, get_method

    cls = get_method(name)
    assert issubclass(cls, EvidenceMethod) and cls.name == name
    ph = generate_phantom(seed=3, size=128, grade=3)
    detector.train()  # the caller's mode must come back
    try:
        ev = cls(detector, "conv8" if name in ("gradcam", "guided-gradcam") else None)(ph.image)
    finally:
        training = detector.training
        detector.eval()
    assert training and _hooks(detector) == 0
    assert ev.method == name and ev.maps.shape == (1, 128, 128) and np.isfinite(ev.maps).all() and (ev.maps >= 0).all()
    assert ev.start == ("conv8" if name in ("gradcam", "guided-gradcam") else "dense2" if name.startswith("deconvnet") else None)


def test_layer_capture_removes_its_hook_even_when_the_call_fails(detector):
    from koch_explore.evidence import LayerCapture

    with pytest.raises(RuntimeError):
        with LayerCapture(detector, "conv11"):
            raise RuntimeError("boom")
    assert _hooks(detector) == 0
    with pytest.raises(ValueError, match="unknown layer 'conv99'"):
        LayerCapture(detector, "conv99")


def test_gradcam_works_on_any_module_given_a_layer():
    from koch_explore.evidence import GradCam

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 1), torch.nn.Flatten(0))
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, 4:8, 4:8] = 1.0  # the only structure: the map must be zero away from it and its border
    ev = GradCam(net, layer="1")(x)
    assert ev.maps.shape == (2, 16, 16) and ev.start == "1" and _hooks(net) == 0
    with pytest.raises(ValueError, match="needs a layer"):
        GradCam(net)(x)


def test_explain_is_the_registry_call_and_matches_the_class(detector):
    from koch_explore.evidence import GuidedGradCam

    ph = generate_phantom(seed=5, size=128, grade=2)
    a = explain(detector, ph.image, "guided-gradcam", start="conv8").maps
    b = GuidedGradCam(detector, layer="conv8")(ph.image).maps
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown evidence method 'nope'"):
        explain(detector, ph.image, "nope")
