"""The activation network (Zeiler–Fergus deconvnet): the explicit walk against two references.

* an independent autograd formulation (:func:`rectified_gradient`) on the detector itself, BN
  folded, both head pools, from the dense, conv and output layers;
* Captum's ``Deconvolution`` on a pure-ReLU conv/max-pool/linear model (Captum only hooks
  ``nn.ReLU``, so it cannot check the leaky-ReLU detector directly, but it checks the generic walk).

Then the contract: shapes, no hooks left behind, channel selection, zero in -> zero out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from koch_explore.detect.model import Detector, DetectorConfig
from koch_explore.evidence.deconvnet import (
    ActivationNetwork,
    Deconvnet,
    rectified_gradient,
    sequential_steps,
)

SMALL = DetectorConfig(n=8, input_size=128, dense_units=64)
# At 128 px the o_O head pools a 2x2 conv12 map to a single position; at 192 px it pools 3x3 to
# 2x2, so the RMS pool's window overlap and its count_include_pad=False border are exercised.
SMALL_O_O = replace(SMALL, head_pool="o_O", input_size=192)
STARTS = ["dense2", "conv12", "conv7", "out"]


def fundus_batch(b: int, s: int, seed: int = 0) -> torch.Tensor:
    """A disc of texture on black, like a fundus photo (the norm estimates the FOV from it)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(b, 3, s, s, generator=g)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    fov = ((yy - s / 2) ** 2 + (xx - s / 2) ** 2 < (0.45 * s) ** 2).float()
    return x * fov


def populated_detector(cfg: DetectorConfig) -> Detector:
    """A detector whose BatchNorm is not the identity: random affine, running stats from data."""
    torch.manual_seed(0)
    det = Detector(cfg)
    for m in det.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the stats are those of the batches below
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.2)
    det.train()
    with torch.no_grad():
        for seed in range(3):
            det(fundus_batch(4, cfg.input_size, seed) * (0.6 + 0.3 * seed))
    return det.eval()


@pytest.fixture(scope="module", params=[SMALL, SMALL_O_O], ids=["global", "o_O"])
def case(request):
    cfg = request.param
    return populated_detector(cfg), fundus_batch(2, cfg.input_size, seed=7)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- (a) explicit walk == rectified autograd gradient ------------------------------------------


@pytest.mark.parametrize("start", STARTS)
def test_walk_equals_rectified_autograd(case, start):
    det, x = case
    with ActivationNetwork(det) as net:
        p = net.project(x, start=start)
        below = [n for n in ("norm", "conv1", "conv6") if net.layer_names.index(n) < net.layer_names.index(start)]
    q = rectified_gradient(det, x, start=start, layers=below)
    assert torch.allclose(p.output, q.output, rtol=1e-5, atol=1e-6)
    assert torch.equal(p.signal, q.signal)
    for name in ["input", *below]:
        assert q[name].abs().max() > 0, name
        assert rel_diff(p[name], q[name]) < 1e-5, name


def test_walk_is_not_a_plain_gradient(case):
    """The rectification matters: without it the same walk would be the input gradient."""
    det, x = case
    with ActivationNetwork(det) as net:
        p = net.project(x, start="out")
    xg = x.clone().requires_grad_(True)
    severity = det(xg)
    (grad,) = torch.autograd.grad(severity, xg, severity.detach())
    assert rel_diff(p.input, grad) > 0.1


@pytest.mark.parametrize("channels", [3, [0, 5, 11]])
def test_walk_equals_rectified_autograd_with_channel_selection(case, channels):
    det, x = case
    with ActivationNetwork(det) as net:
        p = net.project(x, start="conv12", channels=channels)
    q = rectified_gradient(det, x, start="conv12", channels=channels)
    assert torch.equal(p.mask, q.mask)
    assert rel_diff(p.input, q.input) < 1e-5


# -- (b) the generic walk == Captum's Deconvolution on a pure-ReLU model ------------------------


@pytest.mark.filterwarnings("ignore:.*(require gradients|backward hooks on ReLU).*:UserWarning")
def test_generic_walk_matches_captum_deconvolution():
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 6, 3, stride=2, padding=1),  # 32 -> 16: the transpose needs output_padding
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(3, 2, padding=1),  # overlapping windows share switches
            conv2=nn.Conv2d(6, 8, 4, padding=2),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flat=nn.Flatten(),
            fc=nn.Linear(8 * 4 * 4, 16),
            relu3=nn.ReLU(),
            drop=nn.Dropout(0.5),
            logits=nn.Linear(16, 4),
        )
    ).eval()
    x = torch.rand(3, 3, 32, 32)
    target = torch.tensor([0, 2, 3])
    expected = captum_attr.Deconvolution(model).attribute(x, target=target)
    with Deconvnet(sequential_steps(model)) as net:
        p = net.project(x, start="logits", signal=nn.functional.one_hot(target, 4).float())
    assert p.input.shape == x.shape
    assert expected.abs().max() > 0
    assert rel_diff(p.input, expected) < 1e-5
    assert torch.allclose(p.output, model(x))


# -- (c) shapes ---------------------------------------------------------------------------------


def test_maps_have_forward_shapes_and_are_finite(case):
    det, x = case
    with ActivationNetwork(det) as net:
        names = net.layer_names
        p = net.project(x, start="out")
    severity, acts = det.forward_features(x, keep=set(names))
    assert list(p.maps) == names[::-1]
    for name in names:
        assert p.maps[name].shape == acts[name].shape, name
        assert torch.isfinite(p.maps[name]).all(), name
    assert p.input.shape == x.shape and torch.isfinite(p.input).all()
    assert p.activation.shape == acts["out"].shape
    assert torch.allclose(p.output, severity, rtol=1e-5, atol=1e-6)


# -- (d) nothing left behind --------------------------------------------------------------------


def assert_no_hooks(*models: nn.Module) -> None:
    for model in models:
        for m in model.modules():
            for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
                assert not getattr(m, attr, {}), f"{type(m).__name__}.{attr}"
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"):
        assert not getattr(nn.modules.module, attr, {}), attr


def test_no_hooks_survive_the_context_manager(case):
    det, x = case
    with ActivationNetwork(det) as net:
        folded = net.detector
        net.project(x, start="conv7")
    assert_no_hooks(det, folded)
    with pytest.raises(RuntimeError, match="closed"):
        net.project(x)

    with pytest.raises(KeyError):
        with ActivationNetwork(det) as net:
            folded = net.detector
            net.project(x, start="dense2")
            raise KeyError("boom")
    assert_no_hooks(det, folded)
    assert net.steps is None and net.detector is None


# -- (e) channel selection ----------------------------------------------------------------------


def test_channel_selection(case):
    det, x = case
    with ActivationNetwork(det) as net:
        every = net.project(x, start="conv12")
        n_channels = every.activation.shape[1]
        assert torch.equal(net.project(x, start="conv12", channels=n_channels).input, every.input)
        assert torch.equal(net.project(x, start="conv12", channels=10 * n_channels).input, every.input)
        top = net.project(x, start="conv12", channels=3)
        picked = net.project(x, start="conv12", channels=[0, 5])
        with pytest.raises(ValueError):
            net.project(x, start="conv12", channels=[n_channels])
        with pytest.raises(ValueError, match="unknown start"):
            net.project(x, start="conv99")

    assert every.mask.all()
    assert (top.mask.sum(1) == 3).all()
    energy = every.activation.pow(2).sum(dim=(2, 3))
    assert torch.equal(top.mask, energy >= energy.topk(3, dim=1).values[:, -1:])
    assert (picked.mask[:, [0, 5]]).all() and picked.mask.sum() == 2 * x.shape[0]
    assert torch.equal(picked.signal[:, 1], torch.zeros_like(picked.signal[:, 1]))
    for sub in (top, picked):
        assert rel_diff(sub.input, every.input) > 1e-3
    assert rel_diff(top.input, picked.input) > 1e-3


# -- (f) nothing fired -> nothing projected -----------------------------------------------------


def test_zero_activation_gives_zero_map():
    det = populated_detector(SMALL)
    conv7 = det.layers["conv7"]
    with torch.no_grad():
        conv7.conv.weight.zero_()
        conv7.bn.bias.zero_()
        conv7.bn.running_mean.zero_()
    x = fundus_batch(2, SMALL.input_size)
    with ActivationNetwork(det) as net:
        p = net.project(x, start="conv7")
    assert not p.activation.any()
    assert not p.input.any()
    assert not any(m.any() for m in p.maps.values())


# -- differentiable evidence (what the synthesizer's evidence term trains toward) --------------


@pytest.mark.parametrize("method", ["deconvnet", "guided-backprop"])
def test_differentiable_evidence_equals_explain_and_carries_gradient_to_the_images(case, method):
    from koch_explore.evidence.base import explain
    from koch_explore.evidence.deconvnet import DifferentiableEvidence

    det, x = case
    ev = DifferentiableEvidence(det, method)
    img = x.clone().requires_grad_(True)
    maps = ev(img)
    ref = torch.from_numpy(explain(det, x, method).maps)
    assert maps.shape == ref.shape and rel_diff(maps.detach(), ref) < 1e-5
    # A map that changes with the image: the gradient of a local patch's evidence is not zero and
    # reaches the images only (the detector stays frozen, the caller's detector untouched).
    maps[:, 40:60, 40:60].sum().backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    assert all(p.grad is None for p in det.parameters())
    with pytest.raises(ValueError, match="differentiable"):
        DifferentiableEvidence(det, "gradcam")
    with pytest.raises(ValueError, match="start layer"):
        DifferentiableEvidence(det, "deconvnet", start="conv99")
