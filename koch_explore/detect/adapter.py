"""Any PyTorch DR classifier as a grader the kit can audit: :func:`adapt` wraps it.

The kit asks a few things of a model (the *grader protocol*; :class:`~.model.Detector` answers them
natively, :class:`AdaptedModel` for any ``nn.Module``):

* ``forward(x)``: RGB in [0, 1], (B, 3, S, S) -> severity (B,) on the 0-4 ICDR scale;
* ``input_size``, ``thresholds`` (grade cuts) and ``grade(severity)``;
* ``norm``: the module the model's input passes first (``norm.fov(x)`` gives the field of view);
* ``layer_names`` and ``forward_features(x, keep)``: severity and the named layers' outputs;
* ``conv_strides()``: conv layer -> image pixels per cell of its grid, in forward order;
* ``cam_layer`` / ``feature_layers``: Grad-CAM's layer and the early/mid layers of the descriptors;
* ``rectified(rule)``: a context in which every ReLU passes its gradient back by ``rule``
  (guided backprop, the deconvnet) and is plain again afterwards;
* ``randomization_targets(blocks)``: the head and top conv blocks the sanity check re-initialises;
* ``weights_hash()``: what ties banks and baselines to these weights.

What the adapter must be told, and what it finds itself::

    graded = adapt(my_resnet, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), output="softmax")
    graded(x)                      # expected grade under the softmax, (B,)
    graded.cam_layer               # "layer3": the last conv whose cells span <= 32 px
    ke.explain(graded, image)      # every evidence method, the Koch test, the sanity checks ...

Output readings (``output``): ``"regression"`` (B,) or (B, 1) is the severity itself; ``"softmax"``
(B, 5) logits -> the expected grade sum_k k p_k; ``"referable"`` (B,) or (B, 1) logit of grade >= 2 ->
4 sigmoid(logit), so p = 0.5 sits on the referable cut (severity 2); ``"auto"`` reads the shape of a
probe's output ((B, 5) softmax, (B,)/(B, 1) regression). Anything else is an :class:`AdapterError`
naming the shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

OUTPUTS = ("auto", "regression", "softmax", "referable")
"""How a model's output becomes a severity (see the module docstring)."""

CAM_STRIDE = 32
"""Grad-CAM's default layer: the last conv on a grid of at most this many pixels per cell."""

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
"""Activations whose backward rule guided backprop and the deconvnet can rectify."""

SMOOTH_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish, nn.Softplus, nn.Hardswish,
                      nn.Tanh, nn.Sigmoid, nn.PReLU, nn.Hardsigmoid)
"""Activations with no gate to rectify: guided backprop and the deconvnet refuse them by name."""


@dataclass
class AdapterConfig:
    """What the kit must be told about a model (each field is a ``--flag`` of the CLI's ``--model``)."""

    input_size: int = 256
    """Side of the square RGB input the model takes; photos are prepared (FOV-cropped, padded) at it.
    The shipped synthesizer serves 256 px images, so the Koch test needs 256."""
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    """Per-channel mean subtracted from RGB in [0, 1] before the model (ImageNet: 0.485 0.456 0.406)."""
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    """Per-channel standard deviation dividing it (ImageNet: 0.229 0.224 0.225)."""
    output: str = "auto"
    """How the output is a severity: regression, softmax (5 grade logits -> expected grade), referable
    (one logit of grade >= 2 -> 4 sigmoid), or auto (read from the output's shape)."""
    cam_layer: str | None = None
    """Grad-CAM's layer, a dotted module path (default: the block of the last conv with cells <= 32 px)."""
    feature_layers: tuple[str, ...] = ()
    """The descriptors' early and mid feature layers, dotted module paths (default: the last blocks on
    the 1/4 and 1/8 grids)."""
    thresholds: tuple[float, ...] = (0.5, 1.5, 2.5, 3.5)
    """Severity cuts between grades 0|1|2|3|4."""


class AdapterError(ValueError):
    """A model the adapter cannot read: its output, a layer name, an input size or an activation."""


class InputNorm(nn.Module):
    """The model's input normalisation, ``(x - mean) / std``, as a module the evidence methods can
    hook (gradient x input reads its output) and that knows the field of view."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else (1.0, 1.0, 1.0)).view(1, 3, 1, 1))

    @staticmethod
    def fov(x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float mask of the field of view: pixels brighter than the black frame."""
        return (x.amax(dim=1, keepdim=True) > 0.04).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class _RuleHook:
    """A backward hook on one ReLU-like module that rewrites the gradient it passes down."""

    def __init__(self, rule: str):
        self.rule = rule

    def __call__(self, module, grad_input, grad_output):
        if self.rule == "guided":  # the ReLU's own gate (grad_input) and the deconvnet's clamp
            return (grad_input[0].clamp_min(0),)
        return (grad_output[0].clamp_min(0),)  # deconvnet: the signal rectified, the forward gate ignored


class AdaptedModel(nn.Module):
    """A DR classifier ``model`` behind the grader protocol (module docstring). Build it with
    :func:`adapt`; the wrapped module stays reachable as ``.model`` and is not copied."""

    def __init__(self, model: nn.Module, input_size: int = 256, mean=None, std=None, output: str = "auto",
                 cam_layer: str | None = None, feature_layers: Sequence[str] | None = None,
                 thresholds: Sequence[float] = (0.5, 1.5, 2.5, 3.5)):
        super().__init__()
        if len(thresholds) != 4 or list(thresholds) != sorted(thresholds):
            raise AdapterError(f"thresholds {tuple(thresholds)}: four increasing severity cuts between grades 0-4")
        if output not in OUTPUTS:
            raise AdapterError(f"output={output!r}: choose one of {OUTPUTS}")
        if not isinstance(model, nn.Module):
            raise AdapterError(f"adapt() needs a torch.nn.Module, got {type(model).__name__}")
        for name, v in (("mean", mean), ("std", std)):
            if v is not None and len(v) != 3:
                raise AdapterError(f"{name}={tuple(v)}: one value per RGB channel")
        if std is not None and min(std) <= 0:
            raise AdapterError(f"std={tuple(std)}: every value must be > 0")
        self.model = model
        self.norm = InputNorm(mean, std)
        self.input_size = int(input_size)
        self.register_buffer("thresholds", torch.tensor([float(t) for t in thresholds]))
        self.output = self._probe_output() if output == "auto" else output
        self._check_output(self.output)
        self._strides: dict[str, int] | None = None
        self.cam_layer = self._check_layer(cam_layer) if cam_layer else self._default_cam_layer()
        self.feature_layers = (tuple(self._check_layer(n) for n in feature_layers) if feature_layers
                               else self._default_feature_layers())
        self.metadata: dict[str, str] = {}

    # -- the severity ----------------------------------------------------------------------------

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.norm(x))

    def _probe(self) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                x = torch.full((2, 3, self.input_size, self.input_size), 0.5, device=_device_of(self.model))
                return self._raw(x)
        except RuntimeError as exc:
            raise AdapterError(f"{type(self.model).__name__} fails on a (2, 3, {self.input_size}, {self.input_size}) input: {exc}") from exc
        finally:
            self.model.train(was)

    def _probe_output(self) -> str:
        out = self._probe()
        if not isinstance(out, torch.Tensor):
            raise AdapterError(f"{type(self.model).__name__} returns {type(out).__name__}, not a tensor: "
                               "wrap it so it returns the logits or the severity")
        if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
            return "regression"
        if out.dim() == 2 and out.shape[1] == 5:
            return "softmax"
        raise AdapterError(f"{type(self.model).__name__} returns shape {tuple(out.shape)}: not a severity the adapter can "
                           "read (expected (B,) or (B, 1) regression / referable logit, or (B, 5) grade logits)")

    def _check_output(self, output: str) -> None:
        out = self._probe()
        ok = {"regression": out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1),
              "referable": out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1),
              "softmax": out.dim() == 2 and out.shape[1] == 5}[output]
        if not ok:
            raise AdapterError(f"{type(self.model).__name__} returns shape {tuple(out.shape)}: not a severity the adapter "
                               f"can read as output={output!r}")

    def severity_from_output(self, out: torch.Tensor) -> torch.Tensor:
        """The severity (B,) that this adapter reads from the model's raw output."""
        if self.output == "softmax":
            grades = torch.arange(out.shape[1], device=out.device, dtype=torch.float32)
            return (out.float().softmax(dim=1) * grades).sum(dim=1)
        out = out.reshape(out.shape[0])
        if self.output == "referable":
            return 4.0 * torch.sigmoid(out.float())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.severity_from_output(self._raw(x))

    @torch.no_grad()
    def grade(self, severity: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(severity.float(), self.thresholds.to(severity.device).float())

    # -- layers ----------------------------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """"norm" and the dotted path of every submodule of the wrapped model."""
        return ["norm", *(n for n, _ in self.model.named_modules() if n)]

    def layer(self, name: str) -> nn.Module:
        if name == "norm":
            return self.norm
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise AdapterError(f"{type(self.model).__name__} has no layer {name!r}; layers are the dotted module "
                               f"paths: {_short_list(self.layer_names)}") from None

    def _check_layer(self, name: str) -> str:
        self.layer(name)
        return name

    def forward_features(self, x: torch.Tensor, keep: set[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Severity and the outputs of the layers in ``keep`` (forward hooks for this call only;
        a name that is no layer is left out, as :meth:`Detector.forward_features` does)."""
        acts: dict[str, torch.Tensor] = {}
        handles = []
        for name in keep or ():
            if name == "norm" or name in dict(self.model.named_modules()):
                handles.append(self.layer(name).register_forward_hook(_keeper(acts, name)))
        try:
            sev = self.forward(x)
        finally:
            for h in handles:
                h.remove()
        return sev, acts

    def conv_strides(self) -> dict[str, int]:
        """Conv layer -> image pixels per cell of its output grid, in forward order, measured on a
        probe (so any stem, pooling or padding is read off the shapes, not guessed)."""
        if self._strides is None:
            sizes: dict[str, int] = {}
            handles = [m.register_forward_hook(_size_keeper(sizes, n))
                       for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)]
            try:
                self._probe()
            finally:
                for h in handles:
                    h.remove()
            self._strides = {n: max(1, round(self.input_size / s)) for n, s in sizes.items()}
        return dict(self._strides)

    def _default_cam_layer(self) -> str:
        strides = self.conv_strides()
        fine = [n for n, s in strides.items() if s <= CAM_STRIDE]
        if not fine:
            raise AdapterError(f"{type(self.model).__name__} has no nn.Conv2d on a grid of <= {CAM_STRIDE} px per cell "
                               f"at {self.input_size} px: name cam_layer=")
        return _block_of(self.model, fine[-1], strides)

    def _default_feature_layers(self) -> tuple[str, ...]:
        """The last conv block on the finest grid of at most 1/4 and the last on the 1/8-1/16 grid:
        the early (colour, edges) and mid (lesion-sized texture) features of the descriptors."""
        strides = self.conv_strides()
        early = [n for n, s in strides.items() if s <= 4]
        mid = [n for n, s in strides.items() if s == 8] or [n for n, s in strides.items() if 8 < s <= 16]
        if not early or not mid:
            return ()
        return _block_of(self.model, early[-1], strides), _block_of(self.model, mid[-1], strides)

    # -- rectified backward passes (guided backprop, the deconvnet) ---------------------------------

    def unsupported_activations(self) -> list[tuple[str, str]]:
        """(layer, type) of every activation module whose backward rule cannot be rectified."""
        return [(n, type(m).__name__) for n, m in self.model.named_modules() if isinstance(m, SMOOTH_ACTIVATIONS)]

    @contextlib.contextmanager
    def rectified(self, rule: str, method: str = "guided-backprop") -> Iterator[None]:
        """Every ReLU-like module passes its gradient back by ``rule`` ("guided": the ReLU's gate
        and a clamp to >= 0; "deconvnet": the clamp alone) for the block only. In-place ReLUs run
        out of place meanwhile (a backward hook cannot see an in-place output). A GELU/SiLU/... or
        a model with no activation modules at all (functional ReLUs cannot be hooked) is an
        :class:`AdapterError` naming it."""
        bad = self.unsupported_activations()
        if bad:
            name, kind = bad[0]
            raise AdapterError(f"{method} needs ReLU-like activations: layer {name!r} of {type(self.model).__name__} is "
                               f"{kind} (use gradcam, gradient-x-input, occlusion or gradient)")
        relus = [m for m in self.model.modules() if isinstance(m, RELU_LIKE)]
        if not relus:
            raise AdapterError(f"{method}: {type(self.model).__name__} has no nn.ReLU modules (functional activations "
                               "cannot be rectified): use gradcam, gradient-x-input, occlusion or gradient")
        inplace = [(m, m.inplace) for m in relus if hasattr(m, "inplace")]
        handles = []
        try:
            for m, _ in inplace:
                m.inplace = False
            handles = [m.register_full_backward_hook(_RuleHook(rule)) for m in relus]
            yield
        finally:
            for h in handles:
                h.remove()
            for m, flag in inplace:
                m.inplace = flag

    def randomization_targets(self, blocks: int) -> list[nn.Module]:
        """The modules the randomisation check re-initialises: the head (top-level children after the
        last conv) and the top ``blocks`` top-level children that hold convs."""
        children = [(n, m) for n, m in self.model.named_children() if any(True for _ in m.parameters())]
        has_conv = [any(isinstance(s, nn.Conv2d) for s in m.modules()) for _, m in children]
        if not any(has_conv):
            raise AdapterError(f"{type(self.model).__name__}: no conv block to randomise")
        last_conv = max(i for i, c in enumerate(has_conv) if c)
        conv_children = [i for i, c in enumerate(has_conv) if c]
        return [m for i, (_, m) in enumerate(children) if i > last_conv or i in conv_children[-blocks:]]

    @property
    def num_blocks(self) -> int:
        """Top-level children that hold convs (the randomisation cascade's steps)."""
        return sum(any(isinstance(s, nn.Conv2d) for s in m.modules()) for m in self.model.children())

    def fold_batchnorm(self) -> "AdaptedModel":
        """The model itself: folding is an optimisation of the o_O stack's walk; in eval mode a
        BatchNorm is affine and autograd passes it back exactly."""
        return self

    @property
    def default_start(self) -> str:
        """Where the deconvnet starts by default: Grad-CAM's layer (the top of the conv stack)."""
        return self.cam_layer

    @property
    def embedding_layer(self) -> str:
        """The features the Fréchet distance compares: Grad-CAM's block, averaged over positions."""
        return self.cam_layer

    def weights_hash(self) -> str:
        """sha256 over the wrapped model's tensors and the adapter's reading of them."""
        h = hashlib.sha256()
        h.update(f"{self.output}|{self.input_size}|{self.norm.mean.flatten().tolist()}|{self.norm.std.flatten().tolist()}".encode())
        for k, v in sorted(self.model.state_dict().items()):
            t = v.detach().cpu().contiguous()
            h.update(k.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.float().numpy().tobytes())
        return h.hexdigest()

    def options(self) -> dict:
        """The adapter's reading of the model, as :func:`adapt` keyword arguments."""
        return {"input_size": self.input_size, "mean": self.norm.mean.flatten().tolist(), "std": self.norm.std.flatten().tolist(),
                "output": self.output, "cam_layer": self.cam_layer, "feature_layers": list(self.feature_layers),
                "thresholds": self.thresholds.tolist()}

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write the wrapped model's state dict as safetensors (atomically), with the adapter's
        options in the header (``"adapter"``), so :func:`load_model` needs only the factory."""
        from ..core.weights import save_weights

        return save_weights(path, self.model.state_dict(), {"adapter": json.dumps(self.options())}, metadata)

    def extra_repr(self) -> str:
        return (f"output={self.output!r}, input_size={self.input_size}, cam_layer={self.cam_layer!r}, "
                f"feature_layers={self.feature_layers}")


def adapt(model: nn.Module, input_size: int = 256, mean=None, std=None, output: str = "auto",
          cam_layer: str | None = None, feature_layers: Sequence[str] | None = None,
          thresholds: Sequence[float] = (0.5, 1.5, 2.5, 3.5)) -> nn.Module:
    """``model`` as a grader every call of the kit accepts (see the module docstring).

    ``input_size``: the square side it takes (the kit resizes photos to it); ``mean``/``std``: its
    per-channel input normalisation of RGB in [0, 1] (None: none); ``output``: how its output is a
    severity; ``cam_layer``/``feature_layers``: dotted module paths (default: found from the conv
    grids); ``thresholds``: severity cuts between grades. A model already speaking the protocol (a
    :class:`~.model.Detector`, an :class:`AdaptedModel`) is returned as it is.
    """
    if hasattr(model, "forward_features") and hasattr(model, "conv_strides") and hasattr(model, "rectified"):
        return model
    return AdaptedModel(model, input_size, mean, std, output, cam_layer, feature_layers, thresholds)


def load_grader(weights: str | os.PathLike | None = None, model: str | Callable[[], nn.Module] | None = None,
                device="cpu", config: AdapterConfig | None = None) -> nn.Module:
    """The model a command audits: without ``model``, the o_O detector ``weights`` (a shipped name or
    a file, :func:`~.model.load_detector`); with it, the user's ``model`` factory and ``weights``
    adapted by ``config`` (:func:`load_model`)."""
    from .model import load_detector

    if model is None:
        return load_detector(weights, device)
    return load_model(model, weights, device, **asdict(config or AdapterConfig()))


def load_model(factory: str | Callable[[], nn.Module], weights: str | os.PathLike | None = None, device="cpu",
               **adapter_options) -> nn.Module:
    """Build the user's model with ``factory`` ("package.module:function", "path/file.py:function" or a
    callable), load ``weights`` (safetensors, strictly: every tensor present and of its shape) and
    :func:`adapt` it. The options come from ``adapter_options``; those left at their
    :class:`AdapterConfig` default (or ``None``) are taken from the file's header when
    :meth:`AdaptedModel.save` wrote one. No pickles are ever read."""
    from ..core.runtime import resolve_device

    if isinstance(device, str):  # a bad name is refused before the user's code runs
        device = resolve_device(device)
    build = resolve_factory(factory) if isinstance(factory, str) else factory
    name = getattr(build, "__name__", type(build).__name__)
    label = f"--model {factory!r}" if isinstance(factory, str) else f"factory {name}"
    try:
        model = build()
    except Exception as exc:  # the user's code: its failure is their input, not the kit's bug (Ctrl-C passes)
        raise AdapterError(f"{label}: calling {name}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise AdapterError(f"factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        stored = load_weights_strict(model, weights)
        defaults = asdict(AdapterConfig())
        for key, value in stored.items():
            given = adapter_options.get(key)
            if key in defaults and (given is None or _same(given, defaults[key])):
                adapter_options[key] = value
    adapter_options = {k: v for k, v in adapter_options.items() if v is not None}  # None: not given
    model = model.to(device).eval()
    graded = adapt(model, **adapter_options).to(device)
    graded.source_path = Path(weights) if weights is not None else None  # side files (a healthy baseline) live beside it
    return graded


def resolve_factory(spec: str) -> Callable[[], nn.Module]:
    """"package.module:function" (importable, the working folder included) or "file.py:function"."""
    if ":" not in spec:
        raise AdapterError(f"--model {spec!r}: expected package.module:factory or path/to/file.py:factory")
    target, func = spec.rsplit(":", 1)
    if target.endswith(".py") and not Path(target).is_file():
        raise AdapterError(f"{target}: model file not found")
    try:
        if target.endswith(".py"):
            path = Path(target)
            spec_ = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:  # as `python -m` does: the user's own package in the working folder
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(target)
    except ImportError as exc:
        raise AdapterError(f"--model {spec!r}: cannot import {target!r} ({exc})") from exc
    except Exception as exc:  # the user's module runs here: a SyntaxError or its own failure is their input (Ctrl-C passes)
        raise AdapterError(f"--model {spec!r}: importing {target} raised {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, func, None)
    if not callable(fn):
        raise AdapterError(f"--model {spec!r}: {target} has no callable {func!r}")
    return fn


def load_weights_strict(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load a safetensors state dict into ``model``: every tensor must be there with its shape
    (a partial load would explain a different network without a word). Returns the adapter options
    stored in the header (``{}`` when there are none)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model weights not found")
    if p.suffix != ".safetensors":
        raise AdapterError(f"{p}: only .safetensors weights are read (a pickle can run code on load)")
    try:
        state = load_file(str(p))
    except Exception as exc:  # safetensors raises several types for a bad header
        raise AdapterError(f"{p}: not a readable safetensors file ({exc})") from exc
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {_short_list(missing)}" if missing else "", f"unexpected {_short_list(unexpected)}" if unexpected else "",
                 f"shape {_short_list(shapes)}" if shapes else ""]
        raise AdapterError(f"{p}: weights do not fit {type(model).__name__}: " + "; ".join(s for s in parts if s))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    with safe_open(str(p), framework="pt", device="cpu") as f:
        header = f.metadata() or {}
    try:
        return json.loads(header.get("adapter", "{}"))
    except json.JSONDecodeError:
        raise AdapterError(f"{p}: unreadable adapter options in the header") from None


def _same(a, b) -> bool:
    norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
    return norm(a) == norm(b)


def fine_tune(model: nn.Module, images, grades, steps: int = 200, batch_size: int = 16, lr: float = 2e-3,
              seed: int = 0, progress: bool = True) -> list[float]:
    """Train an adapted model on graded images ((N, S, S, 3) uint8, or anything
    :func:`~koch_explore.core.images.as_image_batch` reads; grades (N,)) with the loss its
    output reading implies (cross-entropy for softmax, MSE for regression, logistic on grade >= 2
    for referable); flips and 90-degree rotations as augmentation. Returns the loss per step.
    Meant for brief trainings (phantoms in tests and notebooks); the real recipe is
    ``examples/train_resnet.py``."""
    import numpy as np

    from ..core.images import as_image_batch
    from ..core.training import TrainingLoop
    from .predict import dihedral

    graded = adapt(model)
    dev = _device_of(graded)
    was_training = graded.training
    pixels = as_image_batch(images)  # uint8 and float [0, 1] alike, read once
    grades_t = torch.as_tensor(np.asarray(grades), dtype=torch.long)
    opt = torch.optim.AdamW(graded.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    losses = []

    def step(i: int) -> dict:
        idx = rng.choice(len(grades_t), size=min(batch_size, len(grades_t)), replace=False)
        x = dihedral(pixels[torch.as_tensor(idx)].to(dev), int(rng.integers(8)))
        y = grades_t[idx].to(dev)
        out = graded.model(graded.norm(x)) if isinstance(graded, AdaptedModel) else None
        if out is None or graded.output == "regression":
            loss = F.mse_loss(graded(x) if out is None else graded.severity_from_output(out), y.float())
        elif graded.output == "softmax":
            loss = F.cross_entropy(out.float(), y)
        else:
            loss = F.binary_cross_entropy_with_logits(out.reshape(-1).float(), (y >= 2).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        return {"loss": losses[-1]}

    graded.train()
    # in memory, no run folder: brief trainings are not checkpointed
    TrainingLoop(None, {}, steps=steps, progress=progress, desc="fine-tune", show=("loss",), device=dev).run(step)
    graded.train(was_training)  # the mode it was found in
    return losses


# ---------------------------------------------------------------------------------------------


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _keeper(store: dict, name: str):
    def hook(module, inputs, output):
        store[name] = output
    return hook


def _size_keeper(store: dict, name: str):
    def hook(module, inputs, output):
        store[name] = output.shape[-2]
    return hook


def _block_of(model: nn.Module, conv: str, strides: dict[str, int]) -> str:
    """The outermost module holding ``conv`` whose every conv sits on the same grid: Grad-CAM and the
    descriptors read a block's output (after its ReLU and residual sum), not a bare conv's."""
    parts = conv.split(".")
    best = conv
    for k in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:k])
        inside = [s for n, s in strides.items() if n.startswith(name + ".")]
        if inside and all(s == strides[conv] for s in inside):
            best = name
        else:
            break
    return best


def _short_list(items: list, n: int = 8) -> str:
    items = list(items)
    return str(items[:n])[:-1] + (f", ... {len(items) - n} more]" if len(items) > n else "]")
