"""CPU/CUDA parity: the detector, the activation network, the evidence maps, the vessel segmenter, the
synthesis generator and one training step of each trainer (detector, vessels, synthesizer) give the
same numbers on a CUDA device as on the CPU, with bf16 autocast off and on.

Marked ``cuda`` and skipped without a CUDA device (``pytest -m cuda tests/test_cuda.py`` on a GPU
machine; ``benchmarks/gpu_oneshot.sh`` runs them first). ``KOCH_PARITY_DEVICE`` names the device
under test (default ``cuda``); ``KOCH_PARITY_DEVICE=cpu`` runs every comparison CPU against CPU, which
checks this file's own code on a machine without a GPU (the figures are then trivially equal).
``KOCH_PARITY_REPORT=FILE`` appends each comparison's measured error to FILE as one JSON line, so a
GPU run records how much room each tolerance had.

Each comparison starts both devices from the same weights and the same inputs, and draws every random
number on the CPU (augmentation, patches, noise, the vessel term's window) so the devices cannot take
different random paths; dropout and DropBlock are off in the training steps for the same reason (the
CPU and CUDA random streams differ, so no mask could match).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import koch_explore as ke

DEVICE = os.environ.get("KOCH_PARITY_DEVICE", "cuda")
"""The device compared against the CPU."""
REPORT = os.environ.get("KOCH_PARITY_REPORT")
"""File that gets one JSON line per comparison: what, precision, max abs error, relative L2 error, and
``used``, the share of its tolerance the error took (1 = at the bound)."""

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                       reason="no CUDA device (KOCH_PARITY_DEVICE=cpu runs the same comparisons CPU against CPU)"),
]


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    """Elementwise relative tolerance on values with units (severity in grades, pixels and
    probabilities in [0, 1], losses)."""
    atol: float
    """Elementwise absolute tolerance on the same values."""
    forward: float
    """Largest ||test - reference|| / ||reference|| of a forward activation map. A norm over the whole
    map, not a pixel-wise bound, for maps whose scale is arbitrary."""
    backward: float
    """The same for maps made by walking the network backwards (evidence maps, the activation
    network's projections, gradients). These are looser: a near-tie that resolves the other way on the
    other device (a max-pool switch, a guided-backprop gate at 0) moves a few pixels a lot, and the
    norm charges them by their share of the map."""
    update: float
    """The same for the parameter update of one AdamW step. Adam's first step is lr x g / |g|
    elementwise, +-lr whatever the gradient's size, so a gradient near zero whose sign differs
    between the devices moves its parameter by 2 lr: a fraction f of such elements costs 2 sqrt(f)."""


# How the bounds were chosen. Without a GPU at hand, two CPU runs stood in for "another device":
# fp32 with 1 thread against 2 (another summation order, as another device has) and bf16 autocast
# against fp32 (one bf16 path's error). Measured (tests/test_cuda.py's comparisons on the CPU):
#   fp32, 1 vs 2 threads: values <= 2e-5; forward maps <= 7e-7; evidence maps <= 2e-4 (guided
#     backprop); gradients <= 4e-4 (detector step), 1.6e-3 (synthesizer step); updates 1.5e-2 (detector),
#     4e-2 (synthesizer), i.e. 0.006-0.04 % of the parameters stepped the other way;
#   bf16 vs fp32: severity 0.004 grade, vessel probability 0.018, synthesized pixels 0.005, losses 4 %
#     (the adversarial loss after the discriminator's step); forward maps <= 0.4 %; evidence and
#     projections <= 10 % (the deconvnet walk); gradients <= 18 % (synthesizer: Gram losses, and a
#     discriminator whose step already differed); updates 17-48 % (0.7-6 % of the parameters).
# CUDA against the CPU in fp32 should look like the thread comparison with other convolution
# algorithms (and atomic adds) on top, so the fp32 bounds leave 5x (gradients, updates) to 100x (forward
# maps); in bf16 both devices round independently, so the bounds leave ~2x of one path's error. A real device bug (a wrong padding, a missing normalisation, a
# dtype slip, an op that silently falls back) moves these figures by orders of magnitude.
FP32 = Tolerance(rtol=1e-3, atol=1e-4, forward=1e-4, backward=1e-2, update=0.2)
"""fp32, TF32 off on both devices."""
BF16 = Tolerance(rtol=1e-1, atol=5e-2, forward=2e-2, backward=0.4, update=1.0)
"""bf16 autocast on both devices: 8 mantissa bits, 2^-9 = 0.2 % rounding at each cast, made on each
device independently (and CPU and CUDA autocast cast slightly different op lists). The update bound
allows a quarter of the parameters to step the other way: in bf16 only the gradient check is sharp."""
SIZE = 256


def tolerance(amp: bool) -> Tolerance:
    return BF16 if amp else FP32


def _record(what: str, amp: bool, max_abs: float, rel_l2: float, used: float) -> None:
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"what": what, "device": DEVICE, "bf16": amp, "max_abs": max_abs, "rel_l2": rel_l2,
                                "used": used}) + "\n")


def as_numpy(x) -> np.ndarray:
    return (x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float64)


def errors(test, ref) -> tuple[float, float]:
    t, r = as_numpy(test), as_numpy(ref)
    assert t.shape == r.shape, (t.shape, r.shape)
    diff = t - r
    return float(np.abs(diff).max(initial=0.0)), float(np.linalg.norm(diff) / max(np.linalg.norm(r), 1e-30))


def assert_values(test, ref, amp: bool, what: str) -> None:
    """Elementwise: |test - ref| <= atol + rtol |ref| (values with units)."""
    max_abs, rel = errors(test, ref)
    tol = tolerance(amp)
    t, r = as_numpy(test), as_numpy(ref)
    _record(what, amp, max_abs, rel, float(np.max(np.abs(t - r) / (tol.atol + tol.rtol * np.abs(r)), initial=0.0)))
    np.testing.assert_allclose(as_numpy(test), as_numpy(ref), rtol=tol.rtol, atol=tol.atol,
                               err_msg=f"{what} ({DEVICE} vs cpu, bf16={amp}): max |d| {max_abs:.3g}, rel L2 {rel:.3g}")


def assert_maps(test, ref, amp: bool, what: str, kind: str) -> None:
    """Relative L2 over the whole map (maps of arbitrary scale); ``kind`` is "forward", "backward" or
    "update" (see :class:`Tolerance`)."""
    max_abs, rel = errors(test, ref)
    bound = getattr(tolerance(amp), kind)
    _record(what, amp, max_abs, rel, rel / bound)
    assert rel <= bound, f"{what} ({DEVICE} vs cpu, bf16={amp}): rel L2 {rel:.3g} > {bound:g} (max |d| {max_abs:.3g})"


def autocast(device, amp: bool):
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp)


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 off for the test: cuDNN convolutions use it by default on Ampere and later, rounding fp32
    inputs to 10 mantissa bits, a precision trade made on purpose for speed. The fp32 comparison is
    about the kit's code, so it runs in true fp32; the bf16 comparison covers reduced precision."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(params=[False, True], ids=["fp32", "bf16"])
def amp(request) -> bool:
    if request.param and DEVICE.startswith("cuda") and not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bf16")
    return request.param


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """(3, S, S, 3) float32 in [0, 1]: the embedded photo and two phantoms (one healthy, one severe)."""
    retina, _ = ke.retina_photo(SIZE)
    phantoms = [np.clip(ke.generate_phantom(seed, size=SIZE, grade=g).image, 0, 1) for seed, g in ((11, 0), (12, 4))]
    return np.stack([retina, *phantoms]).astype(np.float32)


def batch(images: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


@pytest.fixture(scope="module")
def detectors():
    """The shipped EyePACS detector, loaded once on each device."""
    return ke.load_detector(device="cpu").eval(), ke.load_detector(device=DEVICE).eval()


# ---------------------------------------------------------------------------------------------
# Inference: detector, activation network, evidence maps, vessel segmenter, generator
# ---------------------------------------------------------------------------------------------


def test_detector(detectors, photos, amp):
    keep = {"norm", "conv2", "conv5", "conv11", "dense2"}
    out = []
    for model in detectors:
        dev = next(model.parameters()).device
        with torch.no_grad(), autocast(dev, amp):
            out.append(model.forward_features(batch(photos, dev), keep=keep))
    (ref_sev, ref_acts), (sev, acts) = out
    assert_values(sev, ref_sev, amp, "detector severity")
    for name in sorted(keep):
        assert_maps(acts[name], ref_acts[name], amp, f"detector {name}", "forward")


def test_activation_network(detectors, photos, amp):
    from koch_explore.evidence import ActivationNetwork

    projections = []
    for model in detectors:
        dev = next(model.parameters()).device
        with torch.no_grad(), autocast(dev, amp), ActivationNetwork(model) as net:
            projections.append(net.project(batch(photos, dev), start="dense2"))
    ref, test = projections
    assert_values(test.output, ref.output, amp, "activation network output")
    for name in ("input", "norm", "conv5"):
        assert_maps(test[name], ref[name], amp, f"activation network {name}", "backward")


@pytest.mark.parametrize("method", ["gradcam", "guided-backprop", "deconvnet", "guided-gradcam"])
def test_evidence_maps(detectors, photos, amp, method):
    maps = []
    for model in detectors:
        with autocast(next(model.parameters()).device, amp):
            maps.append(ke.explain(model, photos, method).maps)
    assert_maps(maps[1], maps[0], amp, f"evidence {method}", "backward")


def test_vessel_segmenter(amp):
    image, fov = ke.retina_photo(SIZE)
    probs = []
    for dev in ("cpu", DEVICE):
        model = ke.load_vessels(device=dev)
        with autocast(dev, amp):
            probs.append(model.segment(image, fov, tta=1)[0])
    assert_values(probs[1], probs[0], amp, "vessel probability")


@pytest.fixture(scope="module")
def hosts():
    """Two healthy phantom hosts (vessels, FOV) and a layout of four shipped descriptors on each."""
    bank = ke.load_bank()
    out = []
    for seed in (21, 22):
        ph = ke.generate_phantom(seed, size=SIZE, grade=0)
        fov = ph.fov.astype(bool)
        out.append({"image": np.clip(ph.image, 0, 1).astype(np.float32) * fov[..., None], "vessels": ph.vessels.astype(np.float32),
                    "fov": fov, "layout": ke.random_layout(bank, 4, fov, seed=seed)})
    return out


def test_generator(hosts, amp):
    images = []
    for dev in ("cpu", DEVICE):
        synth = ke.load_synthesizer(device=dev)
        with autocast(dev, amp):
            images.append(np.stack([synth.synthesize(h["vessels"], h["fov"], h["layout"], seed=3) for h in hosts]))
    assert_values(images[1], images[0], amp, "synthesized fundus")


# ---------------------------------------------------------------------------------------------
# One training step of each trainer, from the same state on the same batch
# ---------------------------------------------------------------------------------------------


def step_and_compare(start: torch.nn.Module, run_step, amp: bool, what: str) -> None:
    """``run_step(model, device)`` makes one optimizer step on ``model`` (a copy of ``start`` on the
    device) and returns its losses {name: scalar tensor}. Compared between the CPU and the device:
    the losses, the gradients, the parameters' update and BatchNorm's running statistics after it."""
    results = []
    for dev in ("cpu", DEVICE):
        model = copy.deepcopy(start).to(dev)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        losses = run_step(model, torch.device(dev))
        flat = lambda ts: torch.cat([t.detach().float().flatten().cpu() for t in ts])  # noqa: E731
        grads = flat(p.grad for p in model.parameters() if p.grad is not None)
        updates = flat(p - before[k] for k, p in model.named_parameters())
        stats = [b for b in model.buffers() if b.is_floating_point()]
        results.append((losses, grads, updates, flat(stats) if stats else None))
    (ref_losses, ref_grads, ref_updates, ref_stats), (losses, grads, updates, stats) = results
    for name in ref_losses:
        assert_values(losses[name], ref_losses[name], amp, f"{what} loss {name}")
    assert_maps(grads, ref_grads, amp, f"{what} gradients", "backward")
    assert_maps(updates, ref_updates, amp, f"{what} update", "update")
    if ref_stats is not None:
        assert_maps(stats, ref_stats, amp, f"{what} BatchNorm statistics", "forward")


def dropout_off(model: torch.nn.Module) -> torch.nn.Module:
    """Training mode (BatchNorm on batch statistics) without random masks."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return model


def test_detector_train_step(photos, amp):
    """The loop body of :func:`koch_explore.detect.train.train`: augment on the device, severity loss,
    AdamW (the shipped weights as the starting state)."""
    from koch_explore.detect.train import TrainConfig, train_step

    cfg = TrainConfig()
    u8 = (photos * 255 + 0.5).astype(np.uint8)
    grades = np.array([1, 0, 4])

    def run_step(model, dev):
        dropout_off(model)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss = train_step(model, opt, u8, grades, dev, torch.Generator().manual_seed(5), cfg, amp, cfg.lr)
        return {"severity": loss}

    step_and_compare(ke.load_detector().to(memory_format=torch.channels_last), run_step, amp, "detector step")


def test_vessel_train_step(amp):
    """The loop body of :func:`koch_explore.vessels.train.train`: a batch of augmented patches (drawn
    on the CPU, as the trainer does), contrast normalisation, U-Net under autocast, BCE + Dice, AdamW."""
    from koch_explore.vessels import PatchSampler, VesselTrainConfig, vessel_loss

    cfg = VesselTrainConfig(batch_size=4, patch=96)
    items = []
    for seed in (31, 32):
        ph = ke.generate_phantom(seed, size=SIZE, grade=0)
        items.append({"image": np.clip(ph.image, 0, 1).astype(np.float32), "fov": ph.fov.astype(bool),
                      "vessels": ph.vessels.astype(bool), "name": f"phantom_{seed}"})
    start = ke.load_vessels()
    margin = start.lcn.margin
    x_cpu, fov_cpu, target_cpu = PatchSampler(items, cfg, margin).batch(0)

    def run_step(model, dev):
        model.train()
        model.set_dropblock(0.0)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        x, fov, target = (t.to(dev) for t in (x_cpu, fov_cpu, target_cpu))
        z = model.lcn(x, fov)
        inner = slice(margin, margin + cfg.patch)
        z, fov, target = z[..., inner, inner], fov[..., inner, inner], target[..., inner, inner]
        with autocast(dev, amp):
            logits = model.unet(z)
        loss = vessel_loss(logits, target, fov, cfg.dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"bce+dice": loss}

    step_and_compare(start, run_step, amp, "vessel step")


def test_synthesizer_train_step(hosts, amp):
    """The loop body of :func:`koch_explore.synthesis.trainer.train` (inoculate mode, the shipped
    recipe's terms): a discriminator step, then a generator step on adversarial + retinal detail +
    pathological (Gram) + TV + vessel consistency through the frozen detector and vessel segmenter, and
    the pixel terms (spectrum, row/column profiles, shading; FFTs and blurs on the device), the optic
    disc given as the trainer gives it. Both networks start from the shipped generator and a seeded
    discriminator; the comparison covers
    both steps' losses and the generator's gradients and update. (The trainer itself has no autocast
    switch and trains in fp32; bf16 here checks that it could.)"""
    from koch_explore.synthesis.disc import disc_from_vessels, disc_map
    from koch_explore.synthesis.discriminator import Discriminator
    from koch_explore.synthesis.generator import canvas_tensors
    from koch_explore.synthesis.losses import (
        DetectorFeatures,
        LossWeights,
        VesselConsistency,
        adversarial_d,
        adversarial_g,
        pathological,
        profile_term,
        retinal_detail,
        shading_term,
        spectrum_term,
        total_variation,
    )
    from koch_explore.synthesis.synthesizer import layout_placements
    from koch_explore.synthesis.trainer import SynthTrainConfig

    cfg, w = SynthTrainConfig(), LossWeights()
    generator = ke.load_synthesizer().generator
    gcfg = generator.cfg
    layers = list(gcfg.canvas_channels)
    torch.manual_seed(0)
    disc_start = Discriminator(gcfg)
    rendered = [h["layout"].render((SIZE, SIZE), layers=layers, fov=h["fov"]) for h in hosts]
    canvases_cpu = {n: torch.cat([canvas_tensors(r, gcfg)[n] for r in rendered]) for n in layers}
    z_cpu = torch.from_numpy(np.random.default_rng(4).standard_normal((len(hosts), gcfg.z_dim)).astype(np.float32))
    disc_cpu = torch.from_numpy(np.stack([disc_map((SIZE, SIZE), disc_from_vessels(h["vessels"], h["fov"])) for h in hosts]))[:, None] \
        if gcfg.disc_channel else None

    def run_step(G, dev):
        G.train()
        D = copy.deepcopy(disc_start).to(dev).train()
        feats = DetectorFeatures(ke.load_detector(device=dev), sorted(set(cfg.detail_layers) | set(layers)))
        vessel_term = VesselConsistency(ke.load_vessels(device=dev))
        opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, 0.999))
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999))
        real = batch(np.stack([h["image"] for h in hosts]), dev)
        ves = torch.from_numpy(np.stack([h["vessels"] for h in hosts]))[:, None].to(dev)
        fov = torch.from_numpy(np.stack([h["fov"] for h in hosts]).astype(np.float32))[:, None].to(dev)
        placements = [p for i, h in enumerate(hosts) for p in layout_placements(h["layout"], i, layers, dev)]
        canv = {n: t.to(dev) for n, t in canvases_cpu.items()}
        with autocast(dev, amp):
            fake = G(ves, fov, z_cpu.to(dev), canv, disc=None if disc_cpu is None else disc_cpu.to(dev))
            d_loss = adversarial_d(D(real, ves), D(fake.detach(), ves))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with autocast(dev, amp):
            _, ff = feats(fake)
            with torch.no_grad():
                _, fr = feats(real)
            terms = {
                "adv": adversarial_g(D(fake, ves)),
                "detail": retinal_detail({n: ff[n] for n in cfg.detail_layers}, {n: fr[n] for n in cfg.detail_layers}, fov),
                "tv": total_variation(fake, fov),
                "vessel": vessel_term(fake, ves, fov, generator=torch.Generator().manual_seed(6)),
                "path": pathological({n: ff[n] for n in layers}, placements, cfg.pathological_mode),
                "spectrum": spectrum_term(fake, real, fov),
                "profile": profile_term(fake, real, fov),
                "shading": shading_term(fake, real, fov),
            }
        scale = {"adv": w.adversarial, "detail": w.detail, "tv": w.tv, "vessel": w.vessel, "path": w.pathological,
                 "spectrum": 2.0, "profile": 5.0, "shading": 30.0}  # the shipped fine-tune's weights
        g_loss = sum(scale[k] * v.float() for k, v in terms.items())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return {"d": d_loss, "g": g_loss, **terms}

    step_and_compare(generator, run_step, amp, "synthesizer step")
