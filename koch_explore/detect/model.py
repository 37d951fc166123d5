"""Postulate 1, part 1: the DR detector (o_O "net B", 4x4 kernels) that every later stage explains.

Read top to bottom: ``DetectorConfig`` (the layer plan as data), ``FundusNorm`` (the input
normalisation that lets enhanced EyePACS, natural photos, DRIVE and synthetic images share one
path), ``ConvBlock`` / ``DenseMaxout`` (the two layer kinds), ``Detector`` (the stack, addressable
by stable layer names), and the weight I/O (safetensors + JSON metadata, strict loading).

Stable layer names, in forward order (the ``o_O-512`` preset; ``o_O-256`` is identical)::

    norm                      input normalisation (local-average subtraction, FOV standardisation)
    conv1 (s2), conv2         n channels
    pool1                     max-pool 3x3 / 2
    conv3 (s2), conv4, conv5  2n
    pool2
    conv6, conv7, conv8       4n      (AAAI's "#9" feature layer is conv6)
    pool3
    conv9, conv10, conv11     8n
    pool4
    conv12                    16n
    rmspool                   sqrt(avgpool(x^2)), 3x3/2 (o_O) or global
    dense1, dense2            dropout -> dense 1024 -> leaky ReLU -> maxout 2 -> 512
    out                       linear severity (grade regression)

Deviations from o_O, each for a reason measured here:

* BatchNorm after every conv (from scratch on ~5k images the plain stack stayed at kappa ~ 0);
  :meth:`Detector.fold_batchnorm` folds it into the convs so the deconvnet sees plain convs.
* Even (4x4) kernels need asymmetric "same" padding. Always padding (1 before, 2 after) drifts
  every feature map half a pixel per layer toward one corner, which shows up as a fixed spatial
  bias in projected maps; we alternate (1,2) and (2,1) between consecutive stride-1 convs so the
  drift cancels.
* The ``o_O-256`` preset pools the last conv globally (RMS over all positions) instead of 3x3/2,
  so the dense head cannot weight positions: a lesion counts the same wherever it is, and the
  evidence maps do not inherit a fixed spatial weighting.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.geometry import gaussian_blur
from ..core.weights import (
    JsonConfig,
    load_model,
    load_state_strict,
    resolve_weights,
    save_model,
)

FORMAT = "koch-explore/detector"
FORMAT_VERSION = 1
GRADE_NAMES = ["No DR", "Mild", "Moderate", "Severe NPDR", "Proliferative DR"]


@dataclass
class DetectorConfig(JsonConfig):
    """Architecture of one detector. Saved with the weights; loading checks it field by field."""

    n: int = 32
    """Base width; conv widths are n, 2n, 4n, 8n, 16n (o_O used 32)."""
    input_size: int = 256
    """Side of the square input the network is trained on (o_O-512 trains on 448 crops)."""
    blocks: tuple[tuple[int, int], ...] = ((2, 1), (3, 2), (3, 4), (3, 8), (1, 16))
    """(number of convs, width multiple of n) per block; a max-pool follows every block but the last."""
    head_pool: str = "global"
    """"o_O": RMS pool 3x3 stride 2 then dense (published); "global": RMS over all positions."""
    dense_units: int = 1024
    """Units of each dense layer before maxout (maxout 2 halves them)."""
    dropout: float = 0.5
    """Dropout before each dense layer."""
    leak: float = 0.01
    """Leaky ReLU slope after every conv and dense layer."""
    batch_norm: bool = True
    """BatchNorm after each conv (foldable into the conv in eval mode)."""
    norm_sigma: float = 1 / 30
    """Gaussian sigma of the local average, as a fraction of the input side (Graham, Kaggle 2015)."""

    @classmethod
    def from_json(cls, text: str) -> "DetectorConfig":
        d = json.loads(text)
        d["blocks"] = tuple(tuple(b) for b in d["blocks"])
        return cls(**d)


PRESETS: dict[str, DetectorConfig] = {
    # The published o_O 512 layout: 512 px images, random 448 crops, RMS pool 3x3/2 before the head.
    "o_O-512": DetectorConfig(n=32, input_size=448, head_pool="o_O"),
    # CPU preset: 256 px (the EyePACS images staged here), position-invariant head.
    "o_O-256": DetectorConfig(n=32, input_size=256, head_pool="global"),
    # The 256 px photos upsampled 1.5x: the same weights (global head), small lesions over more
    # pixels of the 4x4 convs. Warm-started from o_O-256 it gained QWK, not referable AUC (README).
    "o_O-384": DetectorConfig(n=32, input_size=384, head_pool="global"),
}


def layer_names(cfg: DetectorConfig) -> list[str]:
    """The stable names of every layer in forward order (see the module docstring)."""
    names = ["norm"]
    conv = 0
    for b, (count, _) in enumerate(cfg.blocks):
        for _ in range(count):
            conv += 1
            names.append(f"conv{conv}")
        if b < len(cfg.blocks) - 1:
            names.append(f"pool{b + 1}")
    return names + ["rmspool", "dense1", "dense2", "out"]


# ---------------------------------------------------------------------------------------------
# Input normalisation
# ---------------------------------------------------------------------------------------------


class FundusNorm(nn.Module):
    """Local-average subtraction + per-image standardisation inside the field of view.

    Why in the model: enhanced EyePACS, natural photos (DRIVE, IDRiD) and synthetic fundus images
    differ mostly in low-frequency colour and illumination. Subtracting a wide local average keeps
    lesions and vessels and drops those differences, and it is differentiable, so the deconvnet and
    the GAN's losses pass through exactly what the convs see.

    The local average is a *normalised* convolution (blur(x*fov) / blur(fov)) so the black frame
    outside the FOV does not leak a bright ring into the border. The FOV is taken from the input
    (max channel above a small threshold) and treated as a constant mask.
    """

    def __init__(self, sigma_fraction: float, fov_threshold: float = 0.04):
        super().__init__()
        self.sigma_fraction = sigma_fraction
        self.fov_threshold = fov_threshold

    def fov(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            m = (x.amax(dim=1, keepdim=True) > self.fov_threshold).to(x.dtype)
            # Erode a little: the FOV rim is a sharp edge that would dominate the high-pass.
            return -F.max_pool2d(-m, 5, 1, 2)

    def local_average(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        # A wide blur at full resolution costs more than the first convs; the local average is
        # smooth, so blur at 1/d resolution and upsample (d keeps >= 2 px of sigma).
        d = max(1, int(sigma // 2))
        if d == 1:
            return gaussian_blur(x, sigma)
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(max(1, h // d), max(1, w // d)), mode="area")
        small = gaussian_blur(small, sigma / d)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)

    def highpass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(high-pass inside the FOV (B, C, H, W), its per-image, per-channel RMS (B, C, 1, 1)):
        the two halves of :meth:`forward`, which returns their ratio. The Koch test's transplant
        control uses them to paste a lesion at the contrast the detector saw it with."""
        # Always in float32 and contiguous: the statistics are what the whole stack depends on.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float().contiguous()
            sigma = max(1.0, self.sigma_fraction * x.shape[-1])
            m = self.fov(x)
            num = self.local_average(x * m, sigma)
            den = self.local_average(m, sigma).clamp_min(1e-3)
            hp = (x - num / den) * m
            area = m.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
            var = (hp**2).sum(dim=(2, 3), keepdim=True) / area
            return hp, torch.sqrt(var + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hp, scale = self.highpass(x)
        return hp / scale


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


class RectifiedLeakyReLU(torch.autograd.Function):
    """Leaky ReLU forward; backward passes ``relu(grad_output)`` (the deconvnet rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        return F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output.clamp_min(0), None


class GuidedLeakyReLU(torch.autograd.Function):
    """Leaky ReLU forward; backward passes ``relu(grad_output)`` where the forward input was
    positive (guided backpropagation, Springenberg et al. 2015: the gradient rule and the
    deconvnet rule at once)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output.clamp_min(0) * (x > 0).to(grad_output.dtype), None


RECTIFIERS = {"guided": GuidedLeakyReLU, "deconvnet": RectifiedLeakyReLU}
"""Backward rules a leaky ReLU can be given for one call (see :meth:`Detector.rectified`)."""


def leaky_rectify(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The leaky ReLU of a :class:`ConvBlock` or :class:`DenseMaxout`. An explanation may set the
    module's ``rectifier`` (an autograd Function ``f.apply(x, slope)`` with the same forward and
    another backward rule) for the span of one call; the forward values never change."""
    rectifier = getattr(module, "rectifier", None)
    return F.leaky_relu(x, module.leak) if rectifier is None else rectifier.apply(x, module.leak)


class ConvBlock(nn.Module):
    """4x4 conv with explicit padding -> (BatchNorm) -> leaky ReLU.

    ``pad`` is (left, right, top, bottom) as for ``F.pad``; explicit so the deconvnet can apply
    the exact transpose.
    """

    rectifier = None

    def __init__(self, cin: int, cout: int, stride: int, pad: tuple[int, int, int, int], cfg: DetectorConfig):
        super().__init__()
        self.stride = stride
        self.pad = pad
        self.leak = cfg.leak
        self.conv = nn.Conv2d(cin, cout, 4, stride=stride, padding=0, bias=not cfg.batch_norm)
        self.bn = nn.BatchNorm2d(cout) if cfg.batch_norm else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, a=cfg.leak, nonlinearity="leaky_relu")

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.pad(x, self.pad)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaky_rectify(self, self.pre_activation(x))


class DenseMaxout(nn.Module):
    """Dropout -> dense -> leaky ReLU -> maxout over consecutive pairs (o_O's feature pool 2)."""

    rectifier = None

    def __init__(self, cin: int, units: int, cfg: DetectorConfig):
        super().__init__()
        self.leak = cfg.leak
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cin, units)
        nn.init.kaiming_normal_(self.fc.weight, a=cfg.leak, nonlinearity="leaky_relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = leaky_rectify(self, self.fc(self.drop(x)))
        return y.view(y.shape[0], -1, 2).amax(dim=-1)


class RMSPool(nn.Module):
    """sqrt(avgpool(x^2)): o_O's last pooling. ``kernel=None`` pools over all positions."""

    def __init__(self, kernel: int | None = 3, stride: int = 2):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = x.float() ** 2
        if self.kernel is None:
            pooled = sq.mean(dim=(2, 3), keepdim=True)
        else:
            pooled = F.avg_pool2d(sq, self.kernel, self.stride, padding=self.kernel // 2, count_include_pad=False)
        return torch.sqrt(pooled + 1e-8).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------


class Detector(nn.Module):
    """o_O-style DR severity regressor with named, addressable layers.

    ``forward(x)`` takes RGB in [0, 1], shape (B, 3, S, S), and returns severity (B,). Grades come
    from :meth:`grade`, cutting severity at ``thresholds`` (optimised for quadratic weighted kappa
    on validation and saved with the weights).
    """

    def __init__(self, cfg: DetectorConfig | str = "o_O-256"):
        super().__init__()
        if isinstance(cfg, str):
            if cfg not in PRESETS:
                raise ValueError(f"unknown detector preset {cfg!r}; choose one of {sorted(PRESETS)}")
            cfg = copy.deepcopy(PRESETS[cfg])
        self.cfg = cfg
        self.norm = FundusNorm(cfg.norm_sigma)
        self.layers = nn.ModuleDict()
        cin, conv, flip = 3, 0, False
        for b, (count, mult) in enumerate(cfg.blocks):
            cout = cfg.n * mult
            for i in range(count):
                conv += 1
                # The first conv of the first three blocks is strided, as in o_O; stride-2 4x4
                # convs pad symmetrically (1,1), stride-1 ones alternate (1,2)/(2,1).
                stride = 2 if (i == 0 and b in (0, 1)) else 1
                if stride == 2:
                    pad = (1, 1, 1, 1)
                else:
                    pad = (2, 1, 2, 1) if flip else (1, 2, 1, 2)
                    flip = not flip
                self.layers[f"conv{conv}"] = ConvBlock(cin, cout, stride, pad, cfg)
                cin = cout
            if b < len(cfg.blocks) - 1:
                self.layers[f"pool{b + 1}"] = nn.MaxPool2d(3, 2, padding=1)
        self.layers["rmspool"] = RMSPool(None) if cfg.head_pool == "global" else RMSPool(3, 2)
        flat = cin * self.head_positions(cfg)
        half = cfg.dense_units // 2
        self.layers["dense1"] = DenseMaxout(flat, cfg.dense_units, cfg)
        self.layers["dense2"] = DenseMaxout(half, cfg.dense_units, cfg)
        self.out_drop = nn.Dropout(cfg.dropout)
        self.layers["out"] = nn.Linear(half, 1)
        nn.init.normal_(self.layers["out"].weight, std=1e-3)
        nn.init.constant_(self.layers["out"].bias, 1.0)  # start near the mean grade
        self.register_buffer("thresholds", torch.tensor([0.5, 1.5, 2.5, 3.5]))

    @staticmethod
    def head_positions(cfg: DetectorConfig) -> int:
        if cfg.head_pool == "global":
            return 1
        s = cfg.input_size
        for b, (count, _) in enumerate(cfg.blocks):
            for i in range(count):
                if i == 0 and b in (0, 1):
                    s = (s + 2 - 4) // 2 + 1
            if b < len(cfg.blocks) - 1:
                s = (s + 2 - 3) // 2 + 1
        s = (s + 2 - 3) // 2 + 1
        return s * s

    # -- the grader protocol (koch_explore.detect.adapter): what every postulate asks of a model --

    default_start = "dense2"
    """Where the deconvnet starts by default: the paper's (the last hidden layer)."""
    embedding_layer = "dense1"
    """The features the Fréchet distance compares (512 values per image)."""

    @property
    def input_size(self) -> int:
        return self.cfg.input_size

    @property
    def layer_names(self) -> list[str]:
        return ["norm", *self.layers.keys()]

    def layer(self, name: str) -> nn.Module:
        """The layer called ``name`` (one of :attr:`layer_names`)."""
        if name == "norm":
            return self.norm
        if name not in self.layers:
            raise ValueError(f"unknown layer {name!r}; choose one of {self.layer_names}")
        return self.layers[name]

    def conv_strides(self) -> dict[str, int]:
        """conv name -> image pixels per cell of its output grid (strided convs and max-pools
        multiply), in forward order."""
        stride, out = 1, {}
        for name, layer in self.layers.items():
            if isinstance(layer, ConvBlock):
                stride *= layer.stride
                out[name] = stride
            elif isinstance(layer, nn.MaxPool2d):
                stride *= layer.stride if isinstance(layer.stride, int) else layer.stride[0]
        return out

    @property
    def cam_layer(self) -> str:
        """Grad-CAM's layer: the last conv on a grid of at most 32 px per cell (``conv11`` in both
        presets: 8x8 cells at 256 px). o_O's last conv sits on a 4x4 grid at 256 px, where one cell
        spans a sixteenth of the image and no single lesion can be pointed at."""
        return [n for n, s in self.conv_strides().items() if s <= 32][-1]

    @property
    def feature_layers(self) -> tuple[str, str]:
        """The descriptors' feature layers: the last conv on the 1/2 grid and the last on the 1/8
        grid (``conv2``, ``conv5`` in both presets)."""
        last = {stride: name for name, stride in self.conv_strides().items()}  # the last conv wins
        if 2 not in last or 8 not in last:
            raise ValueError(f"detector has no conv on the 1/2 and 1/8 grids (grids: {sorted(last)})")
        return last[2], last[8]

    @contextlib.contextmanager
    def rectified(self, rule: str, method: str = "guided-backprop"):
        """Every leaky ReLU passes its gradient back by ``rule`` (:data:`RECTIFIERS`) for the block
        only; the forward values never change and nothing is left on the layers afterwards."""
        rectifier = RECTIFIERS[rule]
        layers = [m for m in self.modules() if isinstance(m, (ConvBlock, DenseMaxout))]
        for m in layers:
            m.rectifier = rectifier
        try:
            yield
        finally:
            for m in layers:
                del m.rectifier  # back to the class default: the plain leaky ReLU

    @property
    def num_blocks(self) -> int:
        return len(self.cfg.blocks)

    def randomization_targets(self, blocks: int) -> list[nn.Module]:
        """The dense head and the top ``blocks`` conv blocks: what the randomisation check re-initialises."""
        counts = [c for c, _ in self.cfg.blocks]
        first_random_conv = sum(counts[: len(counts) - blocks]) + 1
        return [m for n, m in self.layers.items()
                if (n.startswith("conv") and int(n[4:]) >= first_random_conv) or n.startswith("dense") or n == "out"]

    def forward_features(self, x: torch.Tensor, keep: set[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the stack; return severity and the outputs of the layers named in ``keep``.

        Conv outputs are after the leaky ReLU; ``dense1``/``dense2`` after maxout.
        """
        acts: dict[str, torch.Tensor] = {}
        h = self.norm(x)
        if keep and "norm" in keep:
            acts["norm"] = h
        for name, layer in self.layers.items():
            if name == "dense1":
                h = h.flatten(1)
            if name == "out":
                h = self.out_drop(h)
            h = layer(h)
            if keep and name in keep:
                acts[name] = h
        return h.squeeze(1), acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    @torch.no_grad()
    def grade(self, severity: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(severity.float(), self.thresholds.to(severity.device).float())

    # -- BatchNorm folding ---------------------------------------------------------------------

    def fold_batchnorm(self) -> "Detector":
        """A copy in eval mode whose convs absorb their BatchNorm: same outputs, plain convs."""
        folded = copy.deepcopy(self).eval()
        for name, layer in folded.layers.items():
            if isinstance(layer, ConvBlock) and isinstance(layer.bn, nn.BatchNorm2d):
                bn, conv = layer.bn, layer.conv
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                new = nn.Conv2d(conv.in_channels, conv.out_channels, 4, stride=conv.stride, padding=0, bias=True)
                new.weight.data = conv.weight.data * scale.view(-1, 1, 1, 1)
                bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
                new.bias.data = (bias - bn.running_mean) * scale + bn.bias.data
                layer.conv = new.to(conv.weight.device)
                layer.bn = nn.Identity()
        return folded

    # -- weights -------------------------------------------------------------------------------

    def weights_hash(self) -> str:
        """sha256 over every parameter and buffer (names, shapes, values): identifies these weights."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            t = v.detach().cpu().contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.float().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike, metadata: dict | None = None, half: bool = True) -> Path:
        """Write safetensors atomically. ``half`` stores float tensors as fp16 (inference-exact
        enough, halves the file; the grade cuts stay fp32); they are loaded back as float32."""
        return save_model(path, self.state_dict(), fmt=FORMAT, version=FORMAT_VERSION, config=self.cfg, half=half,
                          keep_fp32=("thresholds",), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", expect: DetectorConfig | str | None = None) -> "Detector":
        """Load weights saved by :meth:`save`; strict: any architecture mismatch is an error
        (:func:`~koch_explore.core.weights.load_model`)."""
        model, meta = load_model(path, fmt=FORMAT, version=FORMAT_VERSION, what="detector", config_cls=DetectorConfig,
                                 build=cls, expect=PRESETS[expect] if isinstance(expect, str) else expect)
        model.metadata = {k: v for k, v in meta.items() if k != "config"}
        model.source_path = Path(path)  # where side files (e.g. the healthy baseline) are looked up
        return model.to(map_location).eval()

    def load_state_strict(self, tensors: dict[str, torch.Tensor], source: str | os.PathLike = "<state>") -> None:
        load_state_strict(self, tensors, source, "detector")


def conv_strides(model) -> dict[str, int]:
    """conv name -> image pixels per cell of its output grid, in forward order, of any grader
    (a :class:`Detector` or an adapted model). Layers are chosen by grid, not by name, so another
    layer plan gets the right ones."""
    return model.conv_strides()


def load_detector(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Detector:
    """A detector by shipped name ("eyepacs", the default; "phantom") or from a user's safetensors
    file (see :data:`koch_explore.core.weights.SHIPPED`). Loading is strict (see :meth:`Detector.load`);
    ``device`` is checked first (:func:`~koch_explore.core.runtime.resolve_device`)."""
    from ..core.runtime import resolve_device

    return Detector.load(resolve_weights("detector", name_or_path), map_location=resolve_device(device))
