"""Grad-CAM, guided backprop, guided Grad-CAM and gradient x input against Captum's counterparts.

Two parts:

* **Real models** — the shipped phantom detector and a seeded ResNet (``examples/resnet_dr.py``,
  adapted with :func:`koch_explore.adapt`), on two phantom eyes at 256 px. Both sides attribute the
  same scalar: our methods back-propagate the grader's severity (B,) (the detector's regression
  output; the adapted ResNet's expected grade under its softmax), which is Captum's ``target=None``
  on the same module (Captum differentiates each image's output, our ``severity.sum()`` does the
  same for independent images). Both maps are reduced as our ``attribute`` reduces them, divided by
  their maximum, and must correlate (Pearson, per image) >= 0.99.
* **Hand-computed cases** — where Captum's definition differs from ours, a two-layer net with fixed
  weights whose maps are computed by hand below shows what each library produces; the real-model
  comparison aligns exactly that one documented difference:

  =====================  ========================================  ================================
  method                 Captum (default)                          ours
  =====================  ========================================  ================================
  Grad-CAM               no ReLU (``relu_attributions=False``),    ReLU, then bilinear
                         nearest upsampling                        (``align_corners=False``)
  guided backprop        overrides ``nn.ReLU`` modules only (the   every leaky ReLU gated by its
                         detector's functional leaky ReLUs pass    input > 0 and clamped >= 0;
                         the plain gradient); on a leaky ReLU      |.| averaged over RGB
                         exposed as one: ``relu(slope * g)`` on
                         its negative side; signed RGB
  guided Grad-CAM        guided backprop x CAM (product, signed    sqrt(mean_RGB |guided| x CAM)
                         RGB), nearest upsampling                  (geometric mean), bilinear
  gradient x input       raw RGB x d/d(raw RGB), signed RGB        |n x d/dn| summed over channels,
                                                                   n the model's normalised input
  =====================  ========================================  ================================

Captum is a dev dependency: the module skips without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import koch_explore as ke
from koch_explore.core.images import as_image_batch
from koch_explore.detect.adapter import resolve_factory
from koch_explore.detect.model import ConvBlock, Detector, DetectorConfig
from koch_explore.evidence.alignment import after_norm, captum_view, pearson_per_image
from koch_explore.evidence.base import find_layer
from koch_explore.evidence.methods import (
    GradCam,
    GradientXInput,
    GuidedBackprop,
    GuidedGradCam,
)

captum_attr = pytest.importorskip("captum.attr")

pytestmark = pytest.mark.filterwarnings("ignore:.*(require gradients|backward hooks on ReLU).*:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 256
MIN_R = 0.99


# -- shared helpers ------------------------------------------------------------------------------


# -- (a) the real models ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eyes() -> torch.Tensor:
    """Two diseased phantom eyes at the models' input size, (2, 3, 256, 256) in [0, 1]."""
    return as_image_batch(np.stack([np.clip(ke.generate_phantom(seed, size=SIZE, grade=g).image, 0, 1)
                                    for seed, g in ((1, 3), (2, 4))]))


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    return ke.load_detector("phantom")


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """examples/resnet_dr.py, seeded, adapted with ImageNet normalisation and its 5-class softmax read
    as the expected grade; BatchNorm given random affines and running statistics from four other
    phantoms, so no layer is the identity (its zero-initialised residual BNs would be)."""
    torch.manual_seed(0)
    net = resolve_factory(f"{ROOT / 'examples' / 'resnet_dr.py'}:resnet_dr")()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative: the statistics are those of the batch below
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.2)
    model = ke.adapt(net, input_size=SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), output="softmax")
    calib = as_image_batch(np.stack([np.clip(ke.generate_phantom(seed, size=SIZE).image, 0, 1) for seed in range(20, 24)]))
    model.train()
    with torch.no_grad():
        model(calib)
    return model.eval()


@pytest.fixture(params=["detector", "resnet"])
def case(request, eyes):
    return request.getfixturevalue(request.param), eyes


def cam_module(model: nn.Module) -> nn.Module:
    """The module our Grad-CAM reads (``conv11`` of the detector, ``layer4`` of the ResNet)."""
    return find_layer(model, GradCam(model).used_layer)


def test_gradcam_matches_captum(case):
    model, x = case
    ours = GradCam(model)(x).maps
    layer_cam = captum_attr.LayerGradCam(model, cam_module(model)).attribute(x.clone(), target=None, relu_attributions=True)
    theirs = captum_attr.LayerAttribution.interpolate(layer_cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    r = pearson_per_image(ours, theirs[:, 0].detach().numpy())
    assert min(r) >= MIN_R, r


def test_guided_backprop_matches_captum(case):
    model, x = case
    ours = GuidedBackprop(model)(x).maps
    theirs = captum_attr.GuidedBackprop(captum_view(model)).attribute(x.clone(), target=None)
    r = pearson_per_image(ours, theirs.detach().abs().mean(dim=1).numpy())
    assert min(r) >= MIN_R, r


def test_guided_gradcam_matches_captum(case):
    model, x = case
    ours = GuidedGradCam(model)(x).maps
    view = captum_view(model)
    theirs = captum_attr.GuidedGradCam(view, cam_module(view)).attribute(x.clone(), target=None, interpolate_mode="bilinear")
    # Captum's product guided x CAM, reduced as ours reduces guided backprop (|.| averaged over RGB;
    # the CAM is >= 0 and shared by the channels), then our geometric mean: the square root.
    r = pearson_per_image(ours, theirs.detach().abs().mean(dim=1).sqrt().numpy())
    assert min(r) >= MIN_R, r


def test_gradient_x_input_matches_captum(case):
    model, x = case
    ours = GradientXInput(model)(x).maps
    with torch.no_grad():
        n = model.norm(x)
    theirs = captum_attr.InputXGradient(after_norm(model)).attribute(n.clone(), target=None)
    r = pearson_per_image(ours, theirs.detach().abs().sum(dim=1).numpy())
    assert min(r) >= MIN_R, r


# -- (b) hand-computed two-layer cases: where the definitions differ ----------------------------

# Bilinear 2 -> 4 upsampling with align_corners=False, by hand: output pixel i samples the 2-pixel
# source at (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1].
UP_BILINEAR = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
UP_NEAREST = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])

# One 2x2 image (channels R, G, B) and the two-layer net's weights, shared by the ReLU and leaky cases.
R = np.array([[0.9, 0.1], [0.5, 0.3]])
G = np.array([[0.2, 0.8], [0.6, 0.1]])
B = np.full((2, 2), 0.3)
MIX = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -0.5]])  # channel mixing of the first layer
BIAS = np.array([0.0, -0.25])
W = np.array([[[0.4, -0.2], [0.2, 0.0]],  # second layer (linear to one output), per channel and cell
              [[-1.0, -0.6], [0.2, -0.2]]])
# First-layer pre-activations: Z0 = R = [[.9, .1], [.5, .3]] (all > 0), Z1 = G - 0.5 B - 0.25 = G - 0.4.
Z = np.stack([R, G - 0.4])  # Z1 = [[-.2, .4], [.2, -.3]]


def _set_weights(conv: nn.Conv2d, fc: nn.Linear, taps: torch.Tensor, w: np.ndarray) -> None:
    """conv.weight = MIX (out, in) times ``taps`` (the kernel's spatial weights), conv.bias = BIAS, fc = w."""
    with torch.no_grad():
        conv.weight[:] = torch.tensor(MIX, dtype=torch.float32)[:, :, None, None] * taps
        conv.bias[:] = torch.tensor(BIAS, dtype=torch.float32)
        fc.weight[:] = torch.tensor(np.asarray(w).reshape(1, -1), dtype=torch.float32)


class TwoLayerReLU(nn.Module):
    """2x2-stride-2 conv (3 -> 2, each tap MIX / 4: on a 4x4 image constant on 2x2 patches it is MIX on
    the 2x2 image) -> ReLU -> linear (8 -> 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 2, stride=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 1, bias=False)
        _set_weights(self.conv, self.fc, torch.full((2, 2), 0.25), W)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def two_layer_relu():
    """The ReLU net adapted (no normalisation, regression output, Grad-CAM at the ReLU) and its input:
    the 2x2 image blown up to 4x4 (each pixel a 2x2 patch)."""
    model = ke.adapt(TwoLayerReLU().eval(), input_size=4, output="regression", cam_layer="relu")
    x = torch.tensor(np.kron(np.stack([R, G, B]), np.ones((2, 2))), dtype=torch.float32)[None]
    return model, x


def test_hand_gradcam_relu_and_upsampling(two_layer_relu):
    """Two defaults differ: Captum's LayerGradCam keeps negative cells unless ``relu_attributions=True``
    and LayerAttribution.interpolate is nearest unless told ``bilinear``; ours is ReLU, then bilinear
    (``align_corners=False``, as Captum's bilinear)."""
    model, x = two_layer_relu
    # By hand: d out / d A = W (A feeds the linear layer); alpha_k = mean of W_k = 0.1, -0.4;
    # A0 = Z0, A1 = relu(Z1) = [[0, .4], [.2, 0]]; cam = 0.1 A0 - 0.4 A1.
    alpha = W.mean(axis=(1, 2))
    np.testing.assert_allclose(alpha, [0.1, -0.4])
    cam = alpha[0] * Z[0] + alpha[1] * np.maximum(Z[1], 0)
    np.testing.assert_allclose(cam, [[0.09, -0.15], [-0.03, 0.03]], atol=1e-12)
    ours_expected = UP_BILINEAR @ np.maximum(cam, 0) @ UP_BILINEAR.T

    ours = GradCam(model)(x).maps[0]
    np.testing.assert_allclose(ours, ours_expected, rtol=1e-5, atol=1e-7)

    gc = captum_attr.LayerGradCam(model, model.layer("relu"))
    signed = gc.attribute(x.clone())  # Captum's default: no ReLU
    np.testing.assert_allclose(signed[0, 0].detach().numpy(), cam, rtol=1e-5, atol=1e-7)
    nearest = captum_attr.LayerAttribution.interpolate(signed, (4, 4))  # Captum's default: nearest
    np.testing.assert_allclose(nearest[0, 0].detach().numpy(), UP_NEAREST @ cam @ UP_NEAREST.T, rtol=1e-5, atol=1e-7)

    aligned = captum_attr.LayerAttribution.interpolate(gc.attribute(x.clone(), relu_attributions=True), (4, 4), "bilinear")
    np.testing.assert_allclose(aligned[0, 0].detach().numpy(), ours_expected, rtol=1e-5, atol=1e-7)
    assert min(pearson_per_image(ours[None], aligned[:, 0].detach().numpy())) >= MIN_R


def test_hand_guided_gradcam_product_and_reduction(two_layer_relu):
    """The one difference: Captum multiplies signed per-channel guided backprop by the CAM; ours is the
    geometric mean of |guided| averaged over RGB and the CAM."""
    model, x = two_layer_relu
    # Guided backprop by hand: at the ReLU, relu(W * [Z > 0]): Z0 > 0 everywhere, Z1 > 0 at (0,1), (1,0).
    g_z = np.maximum(W * (Z > 0), 0)
    np.testing.assert_allclose(g_z, [[[0.4, 0], [0.2, 0]], [[0, 0], [0.2, 0]]])
    guided_rgb = np.einsum("oc,oij->cij", MIX, g_z)  # back through the mixing: B gets -0.5 g_z1 (signed)
    guided_rgb = np.kron(guided_rgb, np.ones((2, 2))) / 4  # each 2x2 patch shares its cell's gradient
    cam = W.mean(axis=(1, 2))[0] * Z[0] + W.mean(axis=(1, 2))[1] * np.maximum(Z[1], 0)  # as in the Grad-CAM case
    cam_up = UP_BILINEAR @ np.maximum(cam, 0) @ UP_BILINEAR.T
    ours_expected = np.sqrt(np.abs(guided_rgb).mean(axis=0) * cam_up)
    captum_expected = guided_rgb * cam_up  # (3, 4, 4), negative in B where the mixing weight is

    np.testing.assert_allclose(GuidedBackprop(model)(x).maps[0], np.abs(guided_rgb).mean(axis=0), rtol=1e-5, atol=1e-7)
    ours = GuidedGradCam(model)(x).maps[0]
    np.testing.assert_allclose(ours, ours_expected, rtol=1e-5, atol=1e-7)
    theirs = captum_attr.GuidedGradCam(model, model.layer("relu")).attribute(x.clone(), interpolate_mode="bilinear")[0]
    np.testing.assert_allclose(theirs.detach().numpy(), captum_expected, rtol=1e-5, atol=1e-7)
    assert (theirs < 0).any()

    aligned = theirs.detach().abs().mean(dim=0).sqrt().numpy()
    np.testing.assert_allclose(aligned, ours, rtol=1e-5, atol=1e-7)
    assert min(pearson_per_image(ours[None], aligned[None])) >= MIN_R


SLOPE = 0.1  # larger than the detector's 0.01 so the negative side shows
W_LEAKY = W.copy()
W_LEAKY[1, 0, 0], W_LEAKY[1, 1, 1] = 1.0, 0.5  # positive weights on the cells where Z1 < 0


class TwoLayerLeaky(nn.Module):
    """The detector's own leaky-ReLU block (a :class:`ConvBlock`: 4x4 kernel, explicit padding, whose
    only non-zero tap MIX makes it a 1x1 conv) -> linear (8 -> 1), with the grader calls guided
    backprop makes: ``fold_batchnorm`` (nothing to fold) and the detector's own ``rectified``."""

    rectified = Detector.rectified

    def __init__(self):
        super().__init__()
        cfg = DetectorConfig(leak=SLOPE, batch_norm=False)
        self.block = ConvBlock(3, 2, 1, (1, 2, 1, 2), cfg)  # padded 1 before: tap (1, 1) is the pixel itself
        self.fc = nn.Linear(8, 1, bias=False)
        _set_weights(self.block.conv, self.fc, torch.eye(4)[1].outer(torch.eye(4)[1]), W_LEAKY)

    def fold_batchnorm(self):
        return self

    def forward(self, x):
        return self.fc(self.block(x).flatten(1)).squeeze(1)


def test_hand_guided_backprop_through_leaky_relu():
    """Two differences, one aligned: Captum rewrites only ``nn.ReLU`` modules, so through the detector's
    functional leaky ReLU its guided backprop is the plain gradient (aligned in the real-model test by
    exposing the activation as a module, :func:`captum_view`); on the exposed leaky ReLU Captum passes
    ``relu(grad_input) = relu(g * slope)`` on the negative side where ours passes 0 (not aligned there:
    at the detector's slope of 0.01 it leaves r >= 0.999)."""
    model = TwoLayerLeaky().eval()
    x = torch.tensor(np.stack([R, G, B]), dtype=torch.float32)[None]
    positive = Z > 0
    leaky_grad = np.where(positive, 1.0, SLOPE)

    def to_rgb(g_z):  # back through the first layer's channel mixing (its only tap is the pixel itself)
        return np.einsum("oc,oij->cij", MIX, g_z)

    ours_z = np.maximum(W_LEAKY, 0) * positive  # our GuidedLeakyReLU: relu(g), gated by input > 0
    plain_z = W_LEAKY * leaky_grad  # the plain gradient of the leaky ReLU
    captum_z = np.maximum(W_LEAKY * leaky_grad, 0)  # Captum's rule on an exposed leaky ReLU
    np.testing.assert_allclose(ours_z[1], [[0, 0], [0.2, 0]])
    np.testing.assert_allclose(captum_z[1], [[0.1, 0], [0.2, 0.05]])

    ours = GuidedBackprop(model)(x).maps[0]
    np.testing.assert_allclose(ours, np.abs(to_rgb(ours_z)).mean(axis=0), rtol=1e-5, atol=1e-7)
    functional = captum_attr.GuidedBackprop(model).attribute(x.clone())[0].detach().numpy()
    np.testing.assert_allclose(functional, to_rgb(plain_z), rtol=1e-5, atol=1e-7)
    exposed = captum_attr.GuidedBackprop(captum_view(model)).attribute(x.clone())[0].detach().numpy()
    np.testing.assert_allclose(exposed, to_rgb(captum_z), rtol=1e-5, atol=1e-7)

    # The whole gap is the negative side's slope term: removed, Captum's map is ours.
    aligned = exposed - to_rgb(np.maximum(W_LEAKY, 0) * SLOPE * ~positive)
    np.testing.assert_allclose(np.abs(aligned).mean(axis=0), ours, rtol=1e-5, atol=1e-7)
    assert min(pearson_per_image(ours[None], np.abs(aligned).mean(axis=0)[None])) >= MIN_R


class TwoLayerNormed(nn.Module):
    """conv 1x1 (3 -> 1: R - G + 0.5 B) -> ReLU -> linear (4 -> 1), behind the adapter's (x - mean) / std."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
            self.fc.weight[:] = torch.tensor([[0.5, 2.0, -1.0, 3.0]])

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


def test_hand_gradient_x_input_on_the_normalised_image():
    """The one difference: Captum's InputXGradient multiplies by the raw RGB it is given (signed, per
    channel); ours by n = (x - mean) / std, the image conv1 sees, |.| summed over channels. Given n
    (the model after its norm), Captum's is ours."""
    mean, std = np.array([0.5, 0.5, 0.5]), np.array([0.25, 0.5, 1.0])
    model = ke.adapt(TwoLayerNormed().eval(), input_size=2, mean=tuple(mean), std=tuple(std), output="regression")
    rgb = np.stack([[[0.9, 0.1], [0.7, 0.5]], [[0.5, 0.5], [0.3, 0.9]], [[0.2, 0.8], [0.5, 0.5]]])
    x = torch.tensor(rgb, dtype=torch.float32)[None]
    # By hand: n_R = [[1.6, -1.6], [.8, 0]], n_G = [[0, 0], [-.4, .8]], n_B = [[-.3, .3], [0, 0]];
    # z = n_R - n_G + .5 n_B = [[1.45, -1.45], [1.2, -.8]]; d out / d n_c = w_c * fc * [z > 0].
    n = (rgb - mean[:, None, None]) / std[:, None, None]
    z = n[0] - n[1] + 0.5 * n[2]
    np.testing.assert_allclose(z, [[1.45, -1.45], [1.2, -0.8]], atol=1e-12)
    g_n = np.array([1.0, -1.0, 0.5])[:, None, None] * (np.array([[0.5, 2.0], [-1.0, 3.0]]) * (z > 0))
    ours_expected = np.abs(g_n * n).sum(axis=0)
    np.testing.assert_allclose(ours_expected, [[0.875, 0], [1.2, 0]], atol=1e-12)
    captum_expected = rgb * g_n / std[:, None, None]  # d/dx = d/dn / std

    ours = GradientXInput(model)(x).maps[0]
    np.testing.assert_allclose(ours, ours_expected, rtol=1e-5, atol=1e-7)
    raw = captum_attr.InputXGradient(model).attribute(x.clone())[0].detach().numpy()
    np.testing.assert_allclose(raw, captum_expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.abs(raw).sum(axis=0) / np.abs(raw).sum(), ours / ours.sum(), atol=1e-2)

    with torch.no_grad():
        n_t = model.norm(x)
    aligned = captum_attr.InputXGradient(after_norm(model)).attribute(n_t.clone())[0].detach().abs().sum(dim=0).numpy()
    np.testing.assert_allclose(aligned, ours, rtol=1e-5, atol=1e-7)
    assert min(pearson_per_image(ours[None], aligned[None])) >= MIN_R


def test_the_folded_copy_is_reused_until_the_weights_change(detector, eyes):
    """guided backprop keeps the BatchNorm-folded copy between calls (it was a deep copy per call) and makes it
    again as soon as a weight changes in place (an optimiser step)."""
    from koch_explore.evidence.deconvnet import folded_copy, guided_gradient

    first = folded_copy(detector)
    assert folded_copy(detector) is first
    before = guided_gradient(detector, eyes)
    weight = next(detector.parameters())
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.5)  # what a training step does: an in-place change
    try:
        again = folded_copy(detector)
        assert again is not first
        assert not torch.allclose(guided_gradient(detector, eyes), before)
    finally:
        with torch.no_grad():
            weight.copy_(kept)
