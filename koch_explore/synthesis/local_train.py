"""Local inoculation training (``koch-explore synth train-local``): grow lesions inside real healthy photos.

Data, all from the detector's *training* split (the validation split stays for the Koch test):

* hosts: grade-0 EyePACS training photos at the detector's size, each with its estimated FOV;
* lesions to place: a bank isolated from ``bank_images`` diseased training eyes (grade >= 2) with the
  shipped bank's evidence method and layer (or a given ``bank``); descriptors above
  ``max_lesion_area`` of the image are dropped (whole-FOV evidence is no lesion);
* real lesions for the discriminator: windows around every descriptor of that bank, in its source eye,
  and, where the data root holds IDRiD_lesions (``idrid``), windows around each expert-drawn lesion
  (connected component of a MA / HE / EX / SE mask at the detector's size, ``min_idrid_area`` px or more).

Each step places 1..``max_lesions`` random descriptors on each of ``batch_size`` hosts (flips and 90-degree
turns of the host), the generator redraws their windows (:mod:`.local`), and

* the **patch discriminator** (LSGAN, spectral norm) judges ``d_window`` px windows around the placements
  against windows around real lesions, each standardised per channel (its own mean and contrast removed,
  as the lesion two-sample test does: the host's exposure is not the generator's to change);
* the generator minimises adversarial + **pathological** (the detector's Gram matrices at the placements vs
  the descriptors', :func:`~.losses.pathological`) + **severity** (the detector's severity of the
  inoculated photo at least the host's plus the placed lesions' shares, :func:`~.losses.severity_term`)
  + **context** (outside the lesion itself but inside its redrawn ring: the photo's own pixels and
  gradients, so no halo and no seam).

Checkpoints (``last.pt``) are written atomically by the kit's one loop
(:class:`~koch_explore.core.training.TrainingLoop`); ``resume=True`` continues; ``callback(step, record,
ema_generator)`` returning False stops cleanly (how a widget pauses). The EMA generator is exported to
``out/local_generator.safetensors``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .c2st import crop_windows, lesion_windows, standardise
from .local import (
    LocalConfig,
    LocalGenerator,
    LocalSynthesizer,
    composite,
    placement_windows,
)

__all__ = ["LocalTrainConfig", "LocalWeights", "PatchDiscriminator", "idrid_lesion_windows", "rim_shares", "train_local", "training_data"]


@dataclass
class LocalWeights:
    """Weights of the local generator's terms."""

    adversarial: float = 1.0
    """Patch discriminator (least squares) on standardised windows around the placements."""
    pathological: float = 1.0
    """Gram matrices of the detector's features at the placements vs the descriptors'."""
    severity: float = 2.0
    """Squared shortfall of the detector's severity below the host's plus the placed lesions' shares (low: the
    lesions are real ones to begin with, and a strong pull darkens the whole redrawn window)."""
    context: float = 20.0
    """L1 of pixels and of their gradients vs the host photo in the redrawn ring outside the lesion."""


@dataclass
class LocalTrainConfig:
    root: str | None = None
    """Data root (default: KOCH_DATA, ../shared/data, ./data); needs EyePACS."""
    out: str = "runs/local"
    """Run folder: last.pt, bank.safetensors, samples/, local_generator.safetensors."""
    detector: str | None = None
    """Detector weights (default: the shipped EyePACS detector)."""
    bank: str | None = None
    """Place descriptors from this bank instead of isolating one from training eyes (its source eyes must
    be EyePACS training photos, whose windows become the discriminator's real side)."""
    bank_images: int = 300
    """Diseased training eyes (grade >= 2) the bank is isolated from."""
    bank_method: str = "guided-gradcam"
    """Evidence method of the bank (the shipped real bank's)."""
    bank_start: str | None = "conv8"
    """Layer the bank's evidence starts from (the shipped real bank's)."""
    max_lesion_area: float = 0.015
    """Drop descriptors larger than this share of the image."""
    max_rim_share: float = 0.2
    """Drop descriptors with more than this share of their mask within ``rim_px`` of their source eye's FOV
    edge: the bright rim of the colour-enhanced EyePACS photos is evidence the detector uses, not a lesion,
    and pasted inside another photo it draws an edge across the fundus (a given ``bank`` is used as it is)."""
    rim_px: int = 7
    """Width (px at the detector's size) of the FOV rim band of ``max_rim_share``."""
    idrid: bool = True
    """Add windows around IDRiD's expert-drawn lesions to the discriminator's real side (when the data root holds
    them; at most as many as the bank's windows)."""
    min_idrid_area: int = 4
    """Smallest IDRiD lesion component (px at the detector's size) whose window counts."""
    hosts: int = 1000
    """Grade-0 training photos used as hosts (drawn once with ``seed``)."""
    window: int = 64
    """Window side the generator redraws (see :class:`~.local.LocalConfig`)."""
    ngf: int = 32
    """Generator width of the first level."""
    gram_layers: tuple[str, ...] = ("conv2",)
    """Detector layers of the pathological (Gram) loss. conv2's 1/2 grid keeps it on the lesion; conv5's
    1/8 cells take in the ring around a lesion too, and with them the generator learned to draw a halo."""
    d_window: int = 32
    """Side of the windows the discriminator judges (the lesion two-sample test's)."""
    ndf: int = 32
    """Discriminator width of the first conv."""
    steps: int = 2500
    """Generator (and discriminator) steps in all, across resumes."""
    max_minutes: float | None = None
    """Stop cleanly (checkpoint written; ``--resume`` continues) after this many minutes of training in this
    invocation (:class:`~koch_explore.core.training.TrainingLoop`: the one meaning in every trainer)."""
    batch_size: int = 6
    """Hosts per step."""
    max_lesions: int = 6
    """Each host gets 1..max_lesions placed descriptors."""
    lr_g: float = 2e-4
    """Adam learning rate of the generator."""
    lr_d: float = 2e-4
    """Adam learning rate of the discriminator."""
    beta1: float = 0.5
    """Adam beta1 of both (the GAN usual)."""
    weights: LocalWeights = field(default_factory=LocalWeights)
    """Each loss term's weight (:class:`LocalWeights`)."""
    ema_decay: float = 0.99
    """Decay of the generator's exponential moving average, the weights exported."""
    sample_every: int = 250
    """Write a preview (a host before and after 6 lesions) to ``out/samples`` every this many steps; 0 = never."""
    checkpoint_minutes: float = 5.0
    """Minutes between checkpoints (one is always written at the end or on a stop)."""
    seed: int = 0
    """Seeds the hosts and eyes drawn, the placements and the networks' initialisation."""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu" or "cuda[:i]"."""
    num_threads: int | None = None
    """CPU threads for torch (None: torch's default)."""


class PatchDiscriminator(nn.Module):
    """``forward(windows)`` (B, 3, w, w) standardised -> one least-squares score per window (B,): the mean
    of a PatchGAN's map (3 convs, the first two stride 2, spectral norm: stable at batch ~20 on a CPU)."""

    def __init__(self, ndf: int = 32):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(3, ndf, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(ndf, 2 * ndf, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(2 * ndf, 4 * ndf, 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(4 * ndf, 1, 3, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(1, 2, 3))


def _dihedral_np(img: np.ndarray, fov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if k >= 4:
        img, fov = img[:, ::-1], fov[:, ::-1]
    return np.ascontiguousarray(np.rot90(img, k % 4)), np.ascontiguousarray(np.rot90(fov, k % 4))


def training_data(cfg: LocalTrainConfig, detector, size: int):
    """(hosts uint8 (N, S, S, 3), their FOVs bool (N, S, S), the bank, real lesion windows float32 (M, w, w, 3))."""
    from ..culture.bank import DescriptorBank
    from ..culture.build import bank_from_images
    from ..data.graded import graded_eyes
    from ..data.preprocess import estimate_fov

    train = graded_eyes("train", size, root=cfg.root, aptos=False)
    rng = np.random.default_rng(cfg.seed)
    healthy = np.flatnonzero(train.grades == 0)
    pick = np.sort(rng.choice(healthy, size=min(cfg.hosts, len(healthy)), replace=False))
    hosts = train.images[pick]
    fovs = np.stack([estimate_fov(h) for h in hosts])
    if cfg.bank:
        bank = DescriptorBank.load(cfg.bank, detector=detector)
    else:
        sick = np.flatnonzero(train.grades >= 2)
        eyes = np.sort(rng.choice(sick, size=min(cfg.bank_images, len(sick)), replace=False))
        bank = bank_from_images(detector, train.images[eyes], [train.names[i] for i in eyes], cfg.bank_method,
                                start=cfg.bank_start, built_by="synth train-local", data="real")
        bank = bank.select(max_area=int(cfg.max_lesion_area * size * size))
    row = {n: i for i, n in enumerate(train.names)}
    unknown = sorted({str(d.source) for d in bank if d.source not in row})
    if unknown:
        raise ValueError(f"bank descriptors from {unknown[:3]} are not EyePACS training photos: their real windows "
                         "cannot be cut for the discriminator")
    if not cfg.bank:
        share = rim_shares(bank, {s: train.images[row[s]] for s in {d.source for d in bank}}, cfg.rim_px)
        bank = bank.select(indices=[i for i, v in enumerate(share) if v <= cfg.max_rim_share])
    sources = sorted({d.source for d in bank})
    cents = {s: [] for s in sources}
    for d in bank:
        cents[d.source].append(tuple(d.centroid))
    real = lesion_windows(train.images[[row[s] for s in sources]].astype(np.float32) / 255.0, [cents[s] for s in sources],
                          cfg.d_window)
    if cfg.idrid:
        # at most as many as the bank's: 14 photos of one camera must not outweigh the graded eyes' lesions
        expert = idrid_lesion_windows(cfg, size)
        keep = np.sort(rng.choice(len(expert), size=min(len(expert), len(real)), replace=False)) if len(expert) else []
        real = np.concatenate([real, expert[keep]])
    return hosts, fovs, bank, real


def rim_shares(bank, photos: dict, rim_px: int) -> list[float]:
    """Per descriptor, the share of its mask within ``rim_px`` of the FOV edge of its source photo
    (``photos``: source name -> the photo at the descriptors' size)."""
    import cv2

    from ..data.preprocess import estimate_fov

    inner = {}
    for name, img in photos.items():
        fov = estimate_fov(img).astype(np.uint8)
        inner[name] = cv2.erode(fov, np.ones((2 * rim_px + 1,) * 2, np.uint8)).astype(bool)
    out = []
    for d in bank:
        x0, y0, x1, y1 = d.bbox
        out.append(float(1.0 - inner[d.source][y0:y1, x0:x1][d.mask].mean()))
    return out


def idrid_lesion_windows(cfg: LocalTrainConfig, size: int) -> np.ndarray:
    """Windows (M, w, w, 3) around every expert-drawn IDRiD lesion component (empty without IDRiD_lesions)."""
    import cv2

    from ..data.datasets import LesionSegmentation
    from ..data.roots import resolve_data_root

    root = resolve_data_root(cfg.root)
    if root is None or not (root / "IDRiD_lesions").is_dir():
        return np.zeros((0, cfg.d_window, cfg.d_window, 3), np.float32)
    data = LesionSegmentation(root=root, size=size)
    images, centres = [], []
    for i in range(len(data)):
        item = data[i]
        points = []
        for mask in item["lesions"].values():
            n, _, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
            points += [tuple(cents[k]) for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= cfg.min_idrid_area]
        images.append(item["image"].astype(np.float32))
        centres.append(points)
    return lesion_windows(np.stack(images), centres, cfg.d_window)


def _jsonable(cfg: LocalTrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


def train_local(cfg: LocalTrainConfig, resume: bool = False, progress: bool = True, callback=None) -> dict:
    """Train (or resume) the local generator; returns {"step", "minutes", "losses"}."""
    from ..core.runtime import resolve_device
    from ..core.training import EMA, TrainingLoop
    from ..data.io import write_image
    from .losses import (
        DetectorFeatures,
        adversarial_d,
        adversarial_g,
        pathological,
        severity_term,
    )
    from .synthesizer import layout_placements, layout_severity_share, random_layout
    from .trainer import load_detector
    from .transplant import transplant

    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    detector = load_detector("real", cfg.detector).to(device)
    size = int(detector.input_size)
    lcfg = LocalConfig(size=size, window=cfg.window, ngf=cfg.ngf)
    layers = list(cfg.gram_layers)
    unknown = [n for n in layers if n not in detector.feature_layers]
    if unknown:
        raise ValueError(f"gram_layers {unknown}: the descriptors carry features of {list(detector.feature_layers)} only")
    feats = DetectorFeatures(detector, layers)

    loop = TrainingLoop(out, _jsonable(cfg), steps=cfg.steps, max_minutes=cfg.max_minutes,
                        checkpoint_minutes=cfg.checkpoint_minutes, progress=progress, desc="synth local",
                        show=("d", "adv", "path"), device=device)
    if resume:
        loop.check_config()  # refused before any photo is read when the configuration changed
    bank_path = out / "bank.safetensors"
    if resume and bank_path.exists():  # the run's own bank: the same descriptors as before the stop
        hosts, fovs, bank, real = training_data(replace(cfg, bank=str(bank_path)), detector, size)
    else:
        hosts, fovs, bank, real = training_data(cfg, detector, size)
        bank.save(bank_path)
    if not len(bank):
        raise ValueError("the descriptor bank is empty: no lesion isolated from the diseased training eyes")
    real_t = standardise(torch.from_numpy(real).permute(0, 3, 1, 2).contiguous())

    G, D = LocalGenerator(lcfg).to(device), PatchDiscriminator(cfg.ndf).to(device)
    ema = EMA(G, cfg.ema_decay)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999))
    loop.add_parts(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d)
    if callback is not None:
        loop.callback = lambda step, record: callback(step, record, ema.module)
    loop.state.update(history=[])
    rng = np.random.default_rng([cfg.seed, 1])
    if resume and loop.resume():
        rng = np.random.default_rng([cfg.seed, 1, loop.step])
    history = loop.state["history"]

    def step(i: int) -> dict:
        host_imgs, fov_list, layouts, windows, centres = [], [], [], [], []
        for j in range(cfg.batch_size):
            pick = int(rng.integers(len(hosts)))
            img, fov = _dihedral_np(hosts[pick].astype(np.float32) / 255.0, fovs[pick], int(rng.integers(8)))
            lay = random_layout(bank, int(rng.integers(1, cfg.max_lesions + 1)), fov, rng=rng)
            pasted = transplant(None, img, lay) if len(lay) else img
            host_imgs.append(img)
            fov_list.append(fov)
            layouts.append(lay)
            windows.append(placement_windows(img, pasted, lay, lcfg, fov))
            centres += [(j, *d.centroid) for d in lay]
        host = torch.from_numpy(np.stack(host_imgs)).permute(0, 3, 1, 2).contiguous().to(device)
        flat = [w for ws in windows for w in ws]
        by_side: dict[int, list[int]] = {}
        for n, w in enumerate(flat):
            by_side.setdefault(w.side, []).append(n)
        drawn_flat = [None] * len(flat)
        for side, idx in by_side.items():  # windows of one size go through the generator together
            x = torch.stack([flat[n].inputs for n in idx]).to(device)
            y = (x[:, 3:6] + G(x)).clamp(0, 1)
            for n, yy in zip(idx, y):
                drawn_flat[n] = yy
        fake_list, k = [], 0
        for j, ws in enumerate(windows):
            fake_list.append(composite(host[j], ws, drawn_flat[k : k + len(ws)]))
            k += len(ws)
        fake = torch.stack(fake_list)
        fake_win = standardise(crop_windows(fake, centres, cfg.d_window))
        real_win = real_t[torch.from_numpy(rng.integers(0, len(real_t), size=len(fake_win)))].to(device)
        kd = int(rng.integers(8))  # the same dihedral turn for both sides: lesions have no orientation
        turn = lambda t: torch.rot90(t.flip(-1) if kd >= 4 else t, kd % 4, dims=(-2, -1))  # noqa: E731

        d_loss = adversarial_d(D(turn(real_win)), D(turn(fake_win.detach())))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        w = cfg.weights
        sev_fake, ff = feats(fake, severity=True)
        with torch.no_grad():
            sev_host, _ = feats(host, severity=True)
        placements = [p for j, lay in enumerate(layouts) for p in layout_placements(lay, j, layers, device)]
        added = torch.tensor([layout_severity_share(lay) for lay in layouts], device=device)
        ring = torch.stack([_ring(ws, size, device) for ws in windows])  # (B, 1, S, S) redrawn but not lesion
        terms = {
            "adv": adversarial_g(D(turn(fake_win))),
            "path": pathological({n: ff[n] for n in layers}, placements),
            "severity": severity_term(sev_fake.reshape(-1), sev_host.reshape(-1), added, "floor"),
            "context": _context(fake, host, ring),
        }
        scale = {"adv": w.adversarial, "path": w.pathological, "severity": w.severity, "context": w.context}
        g_loss = sum(scale[k] * v for k, v in terms.items())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        ema.update(G, i)
        rec = {"d": d_loss.item(), **{k: v.item() for k, v in terms.items()}, "g": g_loss.item()}
        history.append({**rec, "step": i + 1})
        return rec

    preview = (hosts[0].astype(np.float32) / 255.0, fovs[0], random_layout(bank, 6, fovs[0], seed=123))

    def write_preview(i: int, record: dict) -> None:
        if cfg.sample_every and i % cfg.sample_every == 0:
            sick = LocalSynthesizer(copy.deepcopy(ema.module).cpu()).inoculate(*preview)
            write_image(out / "samples" / f"step_{i:06d}.png", np.concatenate([preview[0], sick], axis=1))

    loop.run(step, after_step=write_preview)
    LocalSynthesizer(copy.deepcopy(ema.module).cpu(), detector.weights_hash(),
                     {"train_config": _jsonable(cfg), "steps": loop.step, "bank_size": len(bank)}
                     ).save(out / "local_generator.safetensors")
    return {"step": loop.step, "minutes": loop.minutes(), "losses": loop.recent_means()}


def _ring(windows, size: int, device) -> torch.Tensor:
    """(1, S, S): pixels a window redraws (weight > 0) that lie outside every placed lesion's mask."""
    redrawn = torch.zeros(1, size, size, device=device)
    lesion = torch.zeros(1, size, size, device=device)
    for w in windows:
        sl = (slice(None), slice(w.y0, w.y0 + w.side), slice(w.x0, w.x0 + w.side))
        redrawn[sl] = torch.maximum(redrawn[sl], (w.weight > 0).float().to(device))
        lesion[sl] = torch.maximum(lesion[sl], w.inputs[6:7].to(device))
    return redrawn * (1 - lesion)


def _context(fake: torch.Tensor, host: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """Mean L1 of pixels and of horizontal/vertical differences vs the host, over the ring."""
    n = ring.sum().clamp_min(1.0)
    pix = ((fake - host).abs() * ring).sum() / (3 * n)
    gx = ((fake[..., :, 1:] - fake[..., :, :-1]) - (host[..., :, 1:] - host[..., :, :-1])).abs() * ring[..., :, 1:]
    gy = ((fake[..., 1:, :] - fake[..., :-1, :]) - (host[..., 1:, :] - host[..., :-1, :])).abs() * ring[..., 1:, :]
    return pix + (gx.sum() + gy.sum()) / (3 * n)
