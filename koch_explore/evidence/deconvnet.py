"""Postulate 1, part 2: the activation network (Zeiler & Fergus deconvnet) that explains the detector.

A deconvnet projects a layer's activation back to the pixels it came from. It shares the
detector's weights and walks the network backwards:

* at every rectifier, rectify the signal arriving from above (ReLU of the *backward* signal,
  whatever the forward input was);
* at every conv / dense layer, apply that layer's transpose with the same weights, no bias;
* at every max-pool, put each value back where the forward pass found the maximum (the
  "switches" recorded on the way up);
* every other layer (the RMS pool, the input normalisation, ...) is reversed by its gradient,
  i.e. by the vector-Jacobian product at the forward input;
* the signal the walk starts from is the start layer's own activation (all channels or a chosen
  subset, zero elsewhere): the projection shows "what fired", not "what would change the output".

Why the leaky ReLUs are the rectification points: Zeiler & Fergus passed the reconstruction
through a ReLU wherever the network had one, so only positive evidence travels down. The
detector's leaky ReLU (slope 0.01) is still the network's rectifier. Treating it as the identity
would leave no nonlinearity in the walk but the switches, and the projection would collapse into
a plain gradient (Captum's ``Deconvolution`` does exactly that on this network, because it only
hooks ``nn.ReLU`` modules).

Why the normalisation is reversed by its gradient: :class:`~koch_explore.detect.model.FundusNorm` is
no conv and no rectifier, so the deconvnet has no rule of its own for it. With its field-of-view
mask held fixed it is a linear high-pass followed by a per-image scale, and its vector-Jacobian
product is the transpose of that map (plus the small coupling term of the scale): the same
"transpose with the same weights" the convs get. The map before this last step, at the
normalisation's output (what conv1 sees), is kept too, as ``maps["norm"]``.

How it is built: the walk runs over a plain list of :class:`Step` (one forward operation each:
pad, conv, rectifier, max-pool, maxout, flatten, linear, or "by gradient"). :class:`Deconvnet`
walks any such list; :func:`detector_steps` turns a (BatchNorm-folded) detector into one, and
:func:`sequential_steps` turns an ``nn.Sequential`` into one (the tests check that list against
Captum's ``Deconvolution`` on a pure-ReLU model). No hooks are ever registered: the forward pass
records what the walk needs (input sizes, switches) and the walk is explicit, layer by layer, so
nothing is left behind on the model.

:func:`rectified_gradient` is an independent formulation of the same thing (autograd through a
copy of the detector whose leaky ReLUs rectify the backward signal); the tests require both to
agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..detect.model import ConvBlock, DenseMaxout, Detector, RMSPool

__all__ = [
    "ActivationNetwork",
    "Deconvnet",
    "DifferentiableEvidence",
    "Maxout",
    "Projection",
    "Step",
    "detector_steps",
    "guided_gradient",
    "rectified_gradient",
    "select_channels",
    "sequential_steps",
]

Channels = int | Sequence[int] | None


# ---------------------------------------------------------------------------------------------
# Steps: one forward operation each, with its deconvnet rule
# ---------------------------------------------------------------------------------------------


class Maxout(nn.Module):
    """Max over groups of ``pool`` consecutive units (the detector's dense layers use pool 2)."""

    def __init__(self, pool: int = 2):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.pool)).amax(dim=-1)


KINDS = ("pad", "conv", "linear", "rectify", "maxpool", "maxout", "flatten", "identity", "gradient")


def _kind_of(module: nn.Module) -> str:
    """The deconvnet rule a module gets. Anything not listed is reversed by its gradient, which is
    right for every layer that is not a rectifier (pooling by averages, normalisations, ...)."""
    if isinstance(module, nn.ZeroPad2d):
        return "pad"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
        return "rectify"
    if isinstance(module, nn.MaxPool2d):
        return "maxpool"
    if isinstance(module, Maxout):
        return "maxout"
    if isinstance(module, nn.Flatten):
        return "flatten"
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return "identity"
    return "gradient"


@dataclass(frozen=True, eq=False)
class Step:
    """One forward operation of the network being explained.

    ``name`` marks a layer boundary: the walk keeps the signal arriving at this step's output as
    ``maps[name]``, and ``name`` is what ``start=`` accepts. ``kind`` is inferred from the module
    (see :func:`_kind_of`) unless given.
    """

    module: nn.Module
    name: str | None = None
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", _kind_of(self.module))
        if self.kind not in KINDS:
            raise ValueError(f"unknown step kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "conv":
            m = self.module
            if isinstance(m.padding, str) and m.padding != "valid":
                raise ValueError(f"{self.name or m}: padding={m.padding!r} has no fixed transpose; pad explicitly")
            if m.padding_mode != "zeros":
                raise ValueError(f"{self.name or m}: padding_mode={m.padding_mode!r}; only zero padding has a transpose")

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Run the step and return (output, what the backward rule needs)."""
        m, kind = self.module, self.kind
        if kind == "maxpool":
            out, switches = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
            return out, (switches, h.shape)
        if kind == "maxout":
            values, which = h.unflatten(-1, (-1, m.pool)).max(dim=-1)
            return values, which
        if kind in ("conv", "flatten"):
            return m(h), h.shape
        if kind == "identity":
            return h, None  # dropout: the deconvnet explains the eval-mode network
        if kind == "gradient":
            with torch.enable_grad():
                leaf = h.detach().requires_grad_(True)
                out = m(leaf)
            return out.detach(), (leaf, out)
        return m(h), None

    def backward(self, g: torch.Tensor, record: object) -> torch.Tensor:
        """Carry the signal ``g`` at this step's output to its input (the deconvnet rule)."""
        m, kind = self.module, self.kind
        if kind == "rectify":
            # Rectify the *signal*, not the forward input: only positive reconstructions pass.
            return g.clamp_min(0)
        if kind == "conv":
            return _conv_transpose(m, g, record)
        if kind == "linear":
            return g @ m.weight
        if kind == "pad":
            left, right, top, bottom = m.padding
            return g[..., top : g.shape[-2] - bottom, left : g.shape[-1] - right]
        if kind == "maxpool":
            # Overlapping windows (3x3 stride 2) can share a switch: the values must add up, so a
            # scatter-add rather than F.max_unpool2d, which overwrites.
            switches, shape = record
            out = g.new_zeros(*shape[:-2], shape[-2] * shape[-1])
            return out.scatter_add_(-1, switches.flatten(-2), g.flatten(-2)).view(shape)
        if kind == "maxout":
            # Each output goes back to the unit that won the max on the way up.
            out = g.new_zeros(*g.shape, m.pool)
            return out.scatter_(-1, record.unsqueeze(-1), g.unsqueeze(-1)).flatten(-2)
        if kind == "flatten":
            return g.reshape(record)
        if kind == "identity":
            return g
        leaf, out = record  # "gradient": vector-Jacobian product at the forward input
        (grad,) = torch.autograd.grad(out, leaf, g)
        return grad


def _conv_transpose(conv: nn.Conv2d, g: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """The transpose of ``conv`` (same weights, no bias), sized exactly like the forward input.

    A strided conv maps several input sizes to one output size; ``output_padding`` picks the one
    the forward pass saw.
    """
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    output_padding = []
    for d in range(2):
        size = (g.shape[-2 + d] - 1) * conv.stride[d] - 2 * padding[d] + conv.dilation[d] * (conv.kernel_size[d] - 1) + 1
        output_padding.append(input_shape[-2 + d] - size)
    return F.conv_transpose2d(
        g, conv.weight, None, conv.stride, padding, tuple(output_padding), conv.groups, conv.dilation
    )


def sequential_steps(model: nn.Sequential) -> list[Step]:
    """One step per child of ``model``, named by the child's name (put the model in eval mode)."""
    return [Step(module, name) for name, module in model.named_children()]


def detector_steps(detector: Detector) -> list[Step]:
    """The detector as a list of steps, named by its stable layer names.

    Needs BatchNorm folded (:meth:`Detector.fold_batchnorm`): a BN layer between a conv and its
    rectifier is part of the conv's linear map, and folded it becomes the conv's transpose.
    """
    steps = [Step(detector.norm, "norm")]
    for name, layer in detector.layers.items():
        if isinstance(layer, ConvBlock):
            if not isinstance(layer.bn, nn.Identity):
                raise ValueError(f"{name}: fold BatchNorm first (Detector.fold_batchnorm())")
            steps += [Step(nn.ZeroPad2d(layer.pad)), Step(layer.conv), Step(nn.LeakyReLU(layer.leak), name)]
        elif isinstance(layer, nn.MaxPool2d):
            steps.append(Step(layer, name))
        elif isinstance(layer, RMSPool):
            steps.append(Step(layer, name, kind="gradient"))
        elif isinstance(layer, DenseMaxout):
            if name == "dense1":
                steps.append(Step(nn.Flatten()))
            # The dropout before the dense layer is the identity in eval mode.
            steps += [Step(layer.fc), Step(nn.LeakyReLU(layer.leak)), Step(Maxout(2), name)]
        elif isinstance(layer, nn.Linear):
            steps.append(Step(layer, name))
        else:
            raise TypeError(f"{name}: no deconvnet rule for {type(layer).__name__}")
    return steps


# ---------------------------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------------------------


def select_channels(activation: torch.Tensor, channels: Channels) -> torch.Tensor:
    """Which channels of ``activation`` (B, C, ...) start the projection, as a (B, C) bool mask.

    ``None``: all. An int ``k``: per image, the k channels with the most activation energy (sum of
    squares over positions); ``k >= C`` is all of them. A sequence: those channels, every image.
    """
    b, c = activation.shape[:2]
    mask = torch.zeros(b, c, dtype=torch.bool, device=activation.device)
    if channels is None:
        return mask.fill_(True)
    if isinstance(channels, int) and not isinstance(channels, bool):
        if channels < 1:
            raise ValueError(f"channels={channels}: top-k needs k >= 1")
        energy = activation.detach().float().pow(2).flatten(2).sum(-1) if activation.dim() > 2 else activation.detach().float().pow(2)
        return mask.scatter_(1, energy.topk(min(channels, c), dim=1).indices, True)
    index = torch.as_tensor(list(channels), dtype=torch.long, device=activation.device)
    if index.numel() == 0 or index.min() < -c or index.max() >= c:
        raise ValueError(f"channels={list(channels)}: need 1 or more channel indices in [0, {c})")
    mask[:, index] = True
    return mask


@dataclass
class Projection:
    """What one projection produced.

    ``maps[name]`` is the signal arriving at the output of layer ``name`` (same shape as that
    layer's forward output), for the start layer and every named layer below it; for the
    detector ``maps["norm"]`` is the map conv1 receives and ``input`` the map in RGB pixels.
    """

    start: str
    input: torch.Tensor
    """Map at the network input, shaped like the images."""
    maps: dict[str, torch.Tensor]
    activation: torch.Tensor
    """The start layer's forward activation."""
    signal: torch.Tensor
    """What the walk started from: ``activation`` on the selected channels, zero elsewhere."""
    mask: torch.Tensor
    """(B, C) bool: the selected channels of the start layer."""
    output: torch.Tensor
    """The network's output for these images (the detector's severity, shape (B,))."""

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.input if name == "input" else self.maps[name]


class Deconvnet:
    """Zeiler–Fergus deconvnet over a list of :class:`Step`.

    ``project(images, start, channels)`` runs the forward pass once (recording switches and input
    sizes up to the start layer, finishing the network for its output) and walks back from the
    start layer. A context manager: ``with Deconvnet(steps) as net: ...`` releases the network on
    exit; no hook is registered at any point.
    """

    default_start: str | None = None

    def __init__(self, steps: Sequence[Step]):
        self.steps: list[Step] | None = list(steps)
        names = [s.name for s in self.steps if s.name]
        if len(names) != len(set(names)):
            raise ValueError(f"step names must be unique: {names}")

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self._steps() if s.name]

    def _steps(self) -> list[Step]:
        if self.steps is None:
            raise RuntimeError(f"{type(self).__name__} is closed")
        return self.steps

    @torch.no_grad()
    def project(
        self,
        images: torch.Tensor,
        start: str | None = None,
        channels: Channels = None,
        signal: torch.Tensor | None = None,
    ) -> Projection:
        """Project the activation of layer ``start`` back to the input.

        ``channels`` selects what starts the walk (see :func:`select_channels`). ``signal``, if
        given, replaces ``activation * mask`` as the start signal (e.g. a one-hot on the output
        units, which is what Captum's ``Deconvolution`` projects); ``mask`` then marks the
        channels where it is nonzero.
        """
        steps = self._steps()
        start = start or self.default_start or self.layer_names[-1]
        last = next((i for i, s in enumerate(steps) if s.name == start), None)
        if last is None:
            raise ValueError(f"unknown start layer {start!r}; choose one of {self.layer_names}")

        records: list[object] = []
        h = images
        for step in steps[: last + 1]:
            h, record = step.forward(h)
            records.append(record)
        activation = h
        for step in steps[last + 1 :]:
            h = step.forward(h)[0]
        output = h

        if signal is None:
            mask = select_channels(activation, channels)
            signal = activation * mask.view(*mask.shape, *([1] * (activation.dim() - 2))).to(activation.dtype)
        elif channels is not None:
            raise ValueError("give channels or signal, not both")
        elif signal.shape != activation.shape:
            raise ValueError(f"signal shape {tuple(signal.shape)} != start activation shape {tuple(activation.shape)}")
        else:
            mask = signal.ne(0).flatten(2).any(-1) if signal.dim() > 2 else signal.ne(0)

        g, maps = signal, {}
        for step, record in zip(reversed(steps[: last + 1]), reversed(records)):
            if step.name:
                maps[step.name] = g
            g = step.backward(g, record)
        return Projection(start, g, maps, activation, signal, mask, output)

    def close(self) -> None:
        """Release the network (nothing else to undo: no hooks were registered)."""
        self.steps = None

    def __enter__(self) -> "Deconvnet":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class ActivationNetwork(Deconvnet):
    """The detector's activation network.

    Works on a BatchNorm-folded eval copy of ``detector`` taken at construction (same function,
    plain convs whose transposes are the deconvnet's filters); later changes to ``detector`` are
    not seen. ``start`` is any layer name (``"dense2"``, ``"conv7"``, ``"out"``, ...)::

        with ActivationNetwork(detector) as net:
            p = net.project(images, start="conv7", channels=8)
        p.input        # (B, 3, H, W) evidence in RGB pixels
        p.maps["norm"]  # the same in the normalised image conv1 sees
    """

    default_start = "dense2"

    def __init__(self, detector: Detector):
        self.detector: Detector | None = detector.fold_batchnorm()
        super().__init__(detector_steps(self.detector))

    def project(self, images: torch.Tensor, start: str | None = None, channels: Channels = None, signal: torch.Tensor | None = None) -> Projection:
        p = super().project(images, start, channels, signal)
        return replace(p, output=p.output.squeeze(1))

    def close(self) -> None:
        super().close()
        self.detector = None


# ---------------------------------------------------------------------------------------------
# Independent check: the same projection by autograd
# ---------------------------------------------------------------------------------------------


def _modified_forward(model, x: torch.Tensor, rule: str) -> dict[str, torch.Tensor]:
    """The detector's own forward pass with every leaky ReLU passing its gradient back by ``rule``
    (:meth:`~koch_explore.detect.model.Detector.rectified`, for this call only); returns every
    layer's output."""
    with model.rectified(rule):
        _, acts = model.forward_features(x, keep={"norm", *model.layers})
    return acts


def rectified_gradient(
    detector,
    images: torch.Tensor,
    start: str | None = None,
    channels: Channels = None,
    layers: Sequence[str] = (),
    signal: torch.Tensor | None = None,
) -> Projection:
    """The deconvnet projection as a gradient: autograd through the grader with every rectifier
    passing back ``relu`` of its backward signal (``rectified("deconvnet")``), max-pools and
    everything else by plain autograd. Works on any grader (:mod:`koch_explore.detect.adapter`);
    a :class:`Detector` is BatchNorm-folded first, as the hook-free walk is.

    Independent of :class:`ActivationNetwork` but for :func:`select_channels`; used to verify it and
    to project models whose layer plan the walk cannot follow (residual sums, any ``nn.Module``).
    Returns a :class:`Projection` whose ``maps`` hold only the start layer and ``layers`` (which
    must lie below ``start``). ``signal`` replaces the start activation as what is walked back (as
    in :meth:`ActivationNetwork.project`).
    """
    model = detector.fold_batchnorm()
    start = start or model.default_start
    if start not in model.layer_names:
        raise ValueError(f"unknown start layer {start!r}; choose one of {model.layer_names}")
    x = images.detach().clone().requires_grad_(True)
    below = [n for n in layers if n != start]
    with torch.enable_grad(), model.rectified("deconvnet", "deconvnet"):
        severity, acts = model.forward_features(x, keep={start, *below})
        wrong = [n for n in below if n not in acts]
        if wrong:
            raise ValueError(f"layers {wrong} are not layers of the model")
        activation = acts[start]
        mask = select_channels(activation, channels)
        if signal is None:
            signal = activation.detach() * mask.view(*mask.shape, *([1] * (activation.dim() - 2))).to(activation.dtype)
        grads = torch.autograd.grad(activation, [x] + [acts[n] for n in below], grad_outputs=signal.to(activation), allow_unused=True)
    above = [n for n, g in zip(below, grads[1:]) if g is None]
    if above:
        raise ValueError(f"layers {above} are not below the start layer {start!r}")
    maps = {start: signal, **{n: g for n, g in zip(below, grads[1:])}}
    return Projection(start, grads[0], maps, activation.detach(), signal, mask, severity.detach())


def _guided_input_gradient(model, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Guided backpropagation of a grader's severity to ``x`` (which requires grad)."""
    with torch.enable_grad(), model.rectified("guided"):
        (grad,) = torch.autograd.grad(model(x).sum(), x, create_graph=create_graph)
    return grad


def walkable(model) -> bool:
    """Whether the hook-free walk (:class:`ActivationNetwork`) can follow ``model``'s layer plan: the
    o_O stack can; residual sums and arbitrary modules are projected by :func:`rectified_gradient`."""
    return isinstance(model, Detector)


def guided_gradient(model, images: torch.Tensor) -> torch.Tensor:
    """Guided backpropagation of the severity to the input pixels, (B, 3, H, W), for any grader
    whose rectifiers can be given the guided rule (an adapted model with GELU/SiLU refuses by name).
    It runs on the grader's ``fold_batchnorm()`` copy: the same function with plain convs."""
    return _guided_input_gradient(folded_copy(model), images.detach().clone().requires_grad_(True)).detach()


def folded_copy(model):
    """``model.fold_batchnorm()``, kept on the model and made again only when its tensors changed: the
    copy took about 10% of a guided backprop of 8 eyes (a deep copy of 6.6M parameters per call).
    "Changed" is read from each tensor's storage and in-place version counter (an optimiser step,
    ``load_state_dict``, ``.to(device)`` all move one), so a fine-tuned model never reuses a stale copy."""
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in model.state_dict(keep_vars=True).values())
    cached = model.__dict__.get("_folded_batchnorm_copy")
    if cached is not None and cached[0] == key:
        return cached[1]
    copy = model.fold_batchnorm()
    model.__dict__["_folded_batchnorm_copy"] = (key, copy)
    return copy


class DifferentiableEvidence:
    """Input-level evidence maps that stay differentiable with respect to the images: what a
    generator needs to be trained *toward* the evidence the detector will show (the JBHI paper's
    pathological loss compares such input-level projections).

    ``method="deconvnet"`` is :func:`rectified_gradient` with the start activation kept in the
    graph (the deconvnet's signal is the activation itself, so it carries gradient), and the walk
    built with ``create_graph``; ``"guided-backprop"`` is :func:`guided_gradient` the same way. Both
    return ``|map|`` averaged over RGB, as :func:`koch_explore.evidence.explain` does, and agree with
    it to float precision. Where the image enters: through the start activation, through the RMS
    pool's and the normalisation's vector-Jacobian products (they depend on their forward input)
    and, for guided backprop, nowhere else — switches and rectifier masks are piecewise constant.

    The detector is folded once and frozen; nothing is registered on it. ::

        ev = DifferentiableEvidence(detector)
        maps = ev(fake)          # (B, H, W), differentiable
        loss(maps).backward()    # gradients reach ``fake`` (and what made it), not the detector
    """

    METHODS = ("deconvnet", "guided-backprop")

    def __init__(self, detector: Detector, method: str = "deconvnet", start: str = "dense2"):
        if method not in self.METHODS:
            raise ValueError(f"no differentiable form of evidence method {method!r}; choose one of {self.METHODS}")
        if not walkable(detector):
            raise ValueError(f"the evidence loss walks the o_O detector's layers, not a {type(detector).__name__}: "
                             "train with --w-evidence 0")
        self.model = detector.fold_batchnorm()
        for p in self.model.parameters():
            p.requires_grad_(False)
        names = ["norm", *self.model.layers]
        if method == "deconvnet" and start not in names:
            raise ValueError(f"unknown start layer {start!r}; choose one of {names}")
        self.method, self.start = method, start

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images if images.requires_grad else images.detach().requires_grad_(True)
        with torch.enable_grad():
            if self.method == "deconvnet":
                acts = _modified_forward(self.model, x, "deconvnet")
                a = acts[self.start]
                (g,) = torch.autograd.grad(a, x, grad_outputs=a, create_graph=True)
            else:
                g = _guided_input_gradient(self.model, x, create_graph=True)
        return g.abs().mean(dim=1)
