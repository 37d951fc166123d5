"""Postulate 3 training: one loop for the AAAI ``inoculate`` mode and the Tub-sGAN baseline.

``inoculate``: the healthy set is DRIVE + CHASE_DB1 (photo, manual vessel tree, FOV) — or grade-0
phantoms with ``data="phantom"``; the descriptor bank is isolated once from diseased training eyes
(EyePACS grade >= 2 with the shipped detector, or grade >= 3 phantoms with the phantom detector) and
kept in the run folder. Each step draws healthy images (flips, small rotation/scale, jitter), places
a random number of random descriptors at random valid positions in each FOV, and trains:

* the discriminator on (healthy photo, its tree) vs (synthetic, same tree), least squares;
* the generator on adversarial + retinal detail (detector features of the healthy photo, outside
  the placed lesions) + pathological (Gram matrices at the placed lesions vs the descriptors') + TV
  + vessel consistency (the shipped vessel segmenter must find the host's tree in the synthetic
  fundus), ``g_steps_per_d`` generator steps per discriminator step; optionally the severity term
  (``weights.severity``) and the evidence term (``weights.evidence``: each placed lesion as evident
  in the activation network's projection of the synthetic fundus as in its source eye).

``loss="global-style"`` trains the Tub-sGAN baseline with the same loop: no descriptors, one Gram
style loss over the whole FOV against a DR reference photo.

Checkpoints (``last.pt``) are written atomically every ``checkpoint_minutes`` and at the end;
``resume=True`` continues from them (the kit's one loop, :class:`~koch_explore.core.training.TrainingLoop`).
Under ``torchrun`` both networks are DDP-wrapped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .discriminator import Discriminator
from .generator import Generator, GeneratorConfig, canvas_tensors
from .losses import (
    SEVERITY_TARGETS,
    DetectorFeatures,
    LossWeights,
    VesselConsistency,
    adversarial_d,
    adversarial_g,
    evidence_term,
    global_style,
    gram,
    pathological,
    profile_term,
    retinal_detail,
    severity_term,
    shading_term,
    spectrum_term,
    total_variation,
)
from .synthesizer import (
    LesionSynthesizer,
    layout_placements,
    layout_severity_share,
    random_layout,
)

PRESETS = {
    "cpu-256": dict(size=256, ngf=32, ndf=32),
    "gpu-512": dict(size=512, ngf=64, ndf=64, depth=7),
}


@dataclass
class SynthTrainConfig:
    preset: str = "cpu-256"
    """Network sizes (PRESETS): "cpu-256" trains on 2 CPU cores, "gpu-512" is the papers' scale."""
    data: str = "real"
    """"real": DRIVE + CHASE_DB1 healthy set, EyePACS descriptors; "phantom": embedded data only."""
    mode: str = "inoculate"
    """"inoculate" (AAAI): healthy hosts, bank descriptors placed at random positions; "reconstruct"
    (JBHI): DR photos (IDRiD_lesions + EyePACS fullres_sample_512, or grade >= 3 phantoms) are their
    own targets, drawn from their vessel trees (shipped segmenter) with the descriptors isolated from
    the same photo, in place."""
    loss: str = "descriptors"
    """"descriptors" (ours, AAAI) or "global-style" (the Tub-sGAN baseline)."""
    root: str | None = None
    """Data root (default: KOCH_DATA, ../shared/data, ./data)."""
    detector: str | None = None
    """Detector weights for descriptors and losses (default: shipped EyePACS, or phantom for data=phantom);
    with ``model``, that model's safetensors."""
    model: str | None = None
    """Train on the features of your own model instead of the o_O detector: its factory,
    "package.module:function" or "file.py:function" (``detector`` is then its weights, saved by
    ``AdaptedModel.save`` so the adapter's options travel with them). Descriptors, Gram losses and
    canvases use its ``feature_layers``. GPU recommended; CPU works."""
    out: str = "runs/synth"
    """Run folder: last.pt, bank.safetensors, samples/, generator.safetensors."""
    bank: str | None = None
    """Place descriptors from this bank file instead of isolating a new one (e.g. lesions picked by
    hand in a widget: "retrain on this layout"); copied into the run folder."""
    init: str | None = None
    """Start the generator (and its EMA) from these generator weights instead of from scratch
    (fine-tuning; ignored when resuming)."""
    steps: int = 3000
    """Generator steps in all (a resumed run counts the steps already taken)."""
    max_minutes: float | None = None
    """Stop cleanly (checkpoint written; ``--resume`` continues) after this many minutes of training in this
    invocation (:class:`~koch_explore.core.training.TrainingLoop`: the one meaning in every trainer)."""
    batch_size: int = 2
    """Hosts per step."""
    lr_g: float = 2e-4
    """Adam learning rate of the generator."""
    lr_d: float = 2e-4
    """Adam learning rate of the discriminator."""
    beta1: float = 0.5
    """Adam's first-moment decay for both (0.5, as in pix2pix)."""
    g_steps_per_d: int = 2
    """Generator steps per discriminator step (the papers: 2)."""
    weights: LossWeights = field(default_factory=LossWeights)
    """Each loss term's weight (``--w-NAME`` flags, :class:`~koch_explore.synthesis.losses.LossWeights`)."""
    detail_layers: tuple[str, ...] = ("conv2", "conv5")
    """Layers of the retinal-detail loss (with ``model`` left at this default: that model's feature layers)."""
    pathological_mode: str = "gram"
    """"gram" (AAAI) or "jbhi" (MSE of feature patches)."""
    max_lesions: int = 8
    """Each training image gets 0..max_lesions placed descriptors."""
    bank_images: int = 48
    """Diseased eyes the descriptor bank is isolated from."""
    bank_method: str = "deconvnet"
    """Evidence method the bank is isolated with (see ``koch_explore.evidence.METHODS``); stored in
    the bank, and the Koch test re-isolates with the same one. The default is the paper's deconvnet;
    the shipped real synthesizer was fine-tuned on a guided Grad-CAM (``conv8``) bank and phantom runs
    use guided backprop, which cuts single phantom lesions (docs/findings/evidence.md#phantom-isolation)."""
    bank_start: str | None = None
    """Where the bank's evidence starts: the deconvnet's start layer (default: the model's own,
    ``dense2`` of the detector), or Grad-CAM's conv for the Grad-CAM methods (a layer that is no conv
    leaves Grad-CAM on its own default conv, ``evidence.cam_layer``). Stored in the bank; the Koch test re-isolates from the same layer."""
    max_lesion_area: float = 0.015
    """Drop descriptors larger than this share of the image (whole-FOV evidence is no lesion)."""
    style_reference: str | None = None
    """global-style: the DR reference photo (default: the most severe bank source)."""
    severity_target: str = "floor"
    """What the severity term (``--w-severity``) asks of an inoculated synthesis: "match" — the host's
    severity plus the placed lesions' severity shares (what each added in its source eye), squared
    error; "floor" — at least that much (no penalty above it). Healthy syntheses match their host's
    severity in both. The shares are an additive estimate that undershoots the detector's response
    to many lesions, so "match" flattens the dose response (docs/findings/synthesizer.md#severity-target). In
    reconstruct mode the photo already holds its lesions: its own severity is the target."""
    ema_decay: float = 0.999
    """Decay of the generator's exponential moving average (the exported weights)."""
    d_warmup: int = 200
    """Fine-tuning (``init``) only: discriminator-only steps first. A fresh discriminator's first
    verdicts are noise, and a generator that listens to them loses in a few hundred steps what it
    learned (docs/findings/synthesizer.md#d-warmup). At most a quarter of ``steps``;
    ignored when training from scratch."""
    disc: bool = False
    """Give the generator the optic disc's place as a third input (:mod:`.disc`; found in each host photo),
    so it learns to draw a disc there; with ``init`` from a generator without it, the new input starts at zero.
    On by itself when ``init`` is a generator that has it (the shipped one since 2026-12-03)."""
    sample_every: int = 250
    """Steps between preview images in ``out/samples/`` (0: none)."""
    checkpoint_minutes: float = 5.0
    """Minutes between checkpoints (``last.pt``, written atomically); one is also written at the end."""
    seed: int = 0
    """Seed of initialisation, layouts and noise."""
    device: str = "auto"
    """"auto" (CUDA when present, else the CPU), "cpu" or "cuda[:i]" (under torchrun: each rank's GPU)."""
    num_threads: int | None = None
    """CPU threads for torch (None: torch's default, the machine's cores)."""


def load_detector(data: str, path: str | None = None, model: str | None = None):
    """The model descriptors and losses use: ``path``, else the shipped detector for ``data`` (the
    phantom-trained detector for phantom data, the EyePACS one otherwise); with ``model`` (a factory),
    the user's model with the weights ``path`` (:func:`~koch_explore.detect.adapter.load_grader`)."""
    from ..detect.adapter import load_grader

    if model is not None:
        return load_grader(path, model)
    return load_grader(path or ("phantom" if data == "phantom" else None))


# ---------------------------------------------------------------------------------------------
# Data: healthy hosts and the descriptor bank
# ---------------------------------------------------------------------------------------------


def healthy_set(cfg: SynthTrainConfig, size: int) -> list[dict]:
    """[{"image" (S,S,3) float32, "vessels" (S,S) float32, "fov" (S,S) bool, "name"}]."""
    if cfg.data == "phantom":
        from ..data.phantom import generate_phantom

        out, seed = [], 2_000_000
        while len(out) < 24:
            ph = generate_phantom(seed, size=size, grade=0)
            out.append({"image": np.clip(ph.image, 0, 1).astype(np.float32), "vessels": ph.vessels.astype(np.float32),
                        "fov": ph.fov.astype(bool), "name": f"phantom_{seed}"})
            seed += 1
        return out
    from ..data.datasets import VesselSegmentation

    out = []
    for ds in ("DRIVE", "CHASE_DB1"):
        data = VesselSegmentation(ds, None, root=cfg.root, size=size)
        for i in range(len(data)):
            it = data[i]
            out.append({"image": it["image"].astype(np.float32), "vessels": it["vessels"].astype(np.float32),
                        "fov": it["fov"].astype(bool), "name": f"{ds}/{it['name']}"})
    return out


def build_bank(cfg: SynthTrainConfig, detector, size: int):
    """Descriptors isolated from diseased training eyes with the default isolation settings."""
    from ..culture import DescriptorBank, assign_types, isolate
    from ..evidence import explain, used_start

    rng = np.random.default_rng(cfg.seed)
    if cfg.data == "phantom":
        from ..data.phantom import generate_phantom

        imgs, names, truth = [], [], []
        for k in range(cfg.bank_images):
            ph = generate_phantom(3_000_000 + k, size=size, grade=int(rng.integers(3, 5)))
            imgs.append((np.clip(ph.image, 0, 1) * 255 + 0.5).astype(np.uint8))
            names.append(f"phantom_{3_000_000 + k}")
            truth.append(ph.lesions)
        images = np.stack(imgs)
    else:
        from ..data.graded import graded_eyes

        train = graded_eyes("train", size, root=cfg.root, aptos=False)
        sick = np.flatnonzero(train.grades >= 2)
        pick = np.sort(rng.choice(sick, size=min(cfg.bank_images, len(sick)), replace=False))
        images, names = train.images[pick], [train.names[i] for i in pick]
    bank = DescriptorBank(detector_hash=detector.weights_hash(),
                          info={"built_by": "synth train", "data": cfg.data, "method": cfg.bank_method,
                                "start": used_start(detector, cfg.bank_method, cfg.bank_start)})
    for s in range(0, len(images), 8):
        x = torch.from_numpy(images[s : s + 8]).permute(0, 3, 1, 2).float().div(255).contiguous()
        ev = explain(detector, x, cfg.bank_method, start=cfg.bank_start)
        found = isolate(ev, images=x, detector=detector,
                        image_ids=names[s : s + 8])
        if cfg.data == "phantom":  # exact truth: each descriptor gets the lesion type under it
            found = [assign_types(ds, truth[s + j]) for j, ds in enumerate(found)]
        bank.extend(found)
    return bank.select(max_area=int(cfg.max_lesion_area * size * size))


def _default_style_reference(cfg: SynthTrainConfig, bank):
    """The Tub-sGAN baseline's DR reference photo when none is given: the bank source eye that gave
    the most descriptors (EyePACS ``images_256``), or a grade-4 phantom for phantom data."""
    from collections import Counter

    if cfg.data == "phantom":
        from ..data.phantom import generate_phantom

        return np.clip(generate_phantom(3_999_999, size=PRESETS[cfg.preset]["size"], grade=4).image, 0, 1).astype(np.float32)
    from ..data.roots import resolve_data_root

    sources = Counter(str(d.source) for d in bank.descriptors if d.source)
    root = resolve_data_root(cfg.root, must_exist=True)
    for stem, _ in sources.most_common():
        hits = sorted((Path(root) / "EyePACS" / "images_256").glob(f"{stem}.*"))
        if hits:
            return str(hits[0])
    raise ValueError("global-style: no --style-reference given and no bank source found under EyePACS/images_256")


def reconstruct_set(cfg: SynthTrainConfig, detector, size: int, device="cpu"):
    """JBHI mode's data: (hosts with their own placed ``layout``, the union bank). Each DR photo is
    prepared to ``size``, its tree comes from the shipped vessel segmenter, and its descriptors are
    isolated from it with ``cfg.bank_method`` (they stay where they were found)."""
    from ..culture import DescriptorBank, isolate
    from ..data.io import read_image
    from ..data.preprocess import prepare_fundus
    from ..evidence import explain, used_start
    from ..vessels import load_vessels

    photos = []
    if cfg.data == "phantom":
        from ..data.phantom import generate_phantom

        rng = np.random.default_rng(cfg.seed)
        for k in range(min(cfg.bank_images, 24)):
            ph = generate_phantom(4_000_000 + k, size=size, grade=int(rng.integers(3, 5)))
            photos.append((np.clip(ph.image, 0, 1).astype(np.float32), ph.fov.astype(bool), f"phantom_{4_000_000 + k}"))
    else:
        from ..data.roots import dataset_dir

        files = sorted(p for p in dataset_dir("IDRiD_lesions", cfg.root).glob("*.jpg"))
        files += sorted(dataset_dir("EyePACS", cfg.root).joinpath("fullres_sample_512").glob("*.jp*g"))
        for p in files:
            img, fov = prepare_fundus(read_image(p), size, path=p)
            photos.append((img.astype(np.float32), fov.astype(bool), p.stem))
    vessel_model = load_vessels(device=device)
    hosts, bank = [], DescriptorBank(detector_hash=detector.weights_hash(),
                                     info={"built_by": "synth train (reconstruct)", "data": cfg.data, "method": cfg.bank_method,
                                           "start": used_start(detector, cfg.bank_method, cfg.bank_start)})
    for s in range(0, len(photos), 8):
        chunk = photos[s : s + 8]
        x = torch.from_numpy(np.stack([c[0] for c in chunk])).permute(0, 3, 1, 2).contiguous().to(device)
        ev = explain(detector, x, cfg.bank_method, start=cfg.bank_start)
        found = isolate(ev, images=x, detector=detector,
                        fov=np.stack([c[1] for c in chunk]), image_ids=[c[2] for c in chunk])
        for (img, fov, name), ds in zip(chunk, found):
            # the same size limit as build_bank: whole-FOV evidence is no lesion
            layout = DescriptorBank(ds, detector_hash=bank.detector_hash, info=dict(bank.info)).select(
                max_area=int(cfg.max_lesion_area * size * size))
            _, tree = vessel_model.segment(img, fov, tta=1)
            hosts.append({"image": img * fov[..., None], "vessels": tree.astype(np.float32), "fov": fov, "name": name, "layout": layout})
            bank.extend(layout)
    return hosts, bank


# ---------------------------------------------------------------------------------------------
# Augmentation of a healthy host (numpy, per image)
# ---------------------------------------------------------------------------------------------


def augment_host(item: dict, rng: np.random.Generator) -> dict:
    """Flip, rotate +-5 deg, scale 0.97-1.05, shift +-4% — the same warp for photo, tree and FOV."""
    s = item["image"].shape[0]
    angle, scale = rng.uniform(-5, 5), rng.uniform(0.97, 1.05)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.04, 0.04, size=2) * s
    warp = lambda a, interp: cv2.warpAffine(a, m, (s, s), flags=interp, borderValue=0)  # noqa: E731
    img = warp(item["image"], cv2.INTER_LINEAR)
    ves = warp(item["vessels"], cv2.INTER_LINEAR)
    fov = warp(item["fov"].astype(np.float32), cv2.INTER_LINEAR) > 0.5
    disc = warp(item["disc_map"], cv2.INTER_LINEAR) if "disc_map" in item else None
    if rng.random() < 0.5:
        img, ves, fov = img[:, ::-1], ves[:, ::-1], fov[:, ::-1]
        disc = None if disc is None else disc[:, ::-1]
    out = {"image": np.ascontiguousarray(img * fov[..., None]), "vessels": np.ascontiguousarray((ves > 0.5).astype(np.float32)),
           "fov": np.ascontiguousarray(fov), "name": item["name"]}
    if disc is not None:
        out["disc_map"] = np.ascontiguousarray(disc)
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _jsonable(cfg: SynthTrainConfig) -> dict:
    d = asdict(cfg)
    d["detail_layers"] = list(cfg.detail_layers)
    return d


@dataclass
class TrainingInputs:
    """What :func:`train`'s step reads, built once before the loop (:func:`training_inputs`)."""

    detector: object
    """The model whose features the losses and descriptors use."""
    gcfg: GeneratorConfig
    """The generator's architecture (canvas channels and scales follow the detector's layers)."""
    layers: list
    """The detector's feature layers (canvases, pathological loss)."""
    detail: tuple
    """Layers of the retinal-detail (and global-style) loss."""
    feats: object
    """:class:`~.losses.DetectorFeatures` over ``layers`` and ``detail``."""
    vessel_term: object
    """:class:`~.losses.VesselConsistency`, or None when its weight is 0."""
    hosts: list
    """Healthy hosts (inoculate) or DR photos with their own layouts (reconstruct)."""
    bank: object
    """The descriptor bank placed from (saved in the run folder)."""
    bank_path: Path
    """Where the run keeps its bank."""
    evidence_net: object
    """The differentiable evidence of the evidence term, or None."""
    evidence_sigma: float | None
    """Its blur."""
    ref_grams: dict | None
    """global-style: the reference photo's Gram matrices."""


def training_inputs(cfg: SynthTrainConfig, main: bool, device, resume: bool) -> TrainingInputs:
    """The detector and its feature losses, the hosts, the bank (copied, loaded, or isolated and saved by rank 0),
    the evidence network and the style reference: everything :func:`train` builds before its loop."""
    from ..culture import DescriptorBank

    out = Path(cfg.out)
    detector = load_detector(cfg.data, cfg.detector, cfg.model)
    gcfg = GeneratorConfig(**{**PRESETS[cfg.preset], "canvas_channels": {}, "canvas_scales": {}, "disc_channel": cfg.disc})
    layers = list(detector.feature_layers)
    detail = detector.feature_layers if cfg.model and cfg.detail_layers == SynthTrainConfig.detail_layers else cfg.detail_layers
    sizes = {n: detector.forward_features(torch.zeros(1, 3, gcfg.size, gcfg.size), keep=set(layers))[1][n].shape for n in layers}
    gcfg.canvas_channels = {n: int(sizes[n][1]) for n in layers}
    gcfg.canvas_scales = {n: gcfg.size // int(sizes[n][-1]) for n in layers}
    detector = detector.to(device)
    feats = DetectorFeatures(detector, sorted(set(detail) | set(layers)))
    vessel_term = None
    if cfg.weights.vessel > 0:
        from ..vessels import load_vessels

        vessel_term = VesselConsistency(load_vessels(device=device))

    bank_path = out / "bank.safetensors"
    if cfg.mode == "reconstruct":
        hosts, own_bank = reconstruct_set(cfg, detector, gcfg.size, device)
        if main and not bank_path.exists():
            own_bank.save(bank_path)
    else:
        hosts = healthy_set(cfg, gcfg.size)
    if cfg.disc:
        from .disc import disc_map, host_disc

        # the disc where each host's photo has it; the augmentation moves the map with the photo
        hosts = [{**h, "disc_map": disc_map(h["fov"].shape, host_disc(h))} for h in hosts]
    if cfg.bank and main and not (resume and bank_path.exists()):
        import shutil

        from ..culture.bank import bank_paths

        bank_path.parent.mkdir(parents=True, exist_ok=True)
        for src, dst in zip(bank_paths(cfg.bank), bank_paths(bank_path)):
            shutil.copyfile(src, dst)
    if cfg.mode == "reconstruct":
        bank = own_bank
    elif bank_path.exists():
        bank = DescriptorBank.load(bank_path, detector=detector)
    else:
        bank = build_bank(cfg, detector, gcfg.size)
        if main:
            bank.save(bank_path)
    if cfg.loss == "descriptors" and not len(bank):
        raise ValueError("the descriptor bank is empty: no lesion isolated from the diseased training eyes")
    evidence_net, evidence_sigma = None, None
    if cfg.weights.evidence > 0 and cfg.loss == "descriptors":
        from ..evidence import DifferentiableEvidence, default_blur_sigma

        # the evidence the bank was cultured with, which the Koch test re-isolates with
        evidence_net = DifferentiableEvidence(detector, str(bank.info.get("method") or cfg.bank_method),
                                              bank.info.get("start") or detector.default_start)
        evidence_sigma = default_blur_sigma(gcfg.size)
    ref_grams = None
    if cfg.loss == "global-style":
        from ..data.io import read_image
        from ..data.preprocess import prepare_fundus

        ref_path = cfg.style_reference or _default_style_reference(cfg, bank)
        if isinstance(ref_path, np.ndarray):
            ref = ref_path
        else:
            ref, _ = prepare_fundus(read_image(ref_path), gcfg.size, path=ref_path)
            if main:
                print(f"style reference: {ref_path}", flush=True)
        with torch.no_grad():
            _, rf = feats(torch.from_numpy(ref).permute(2, 0, 1)[None].float().to(device))
        m = {n: torch.ones(f.shape[-2:], dtype=torch.bool, device=device) for n, f in rf.items()}
        ref_grams = {n: gram(f[0], m[n]) for n, f in rf.items() if n in detail}

    return TrainingInputs(detector, gcfg, layers, tuple(detail), feats, vessel_term, hosts, bank, bank_path, evidence_net,
                          evidence_sigma, ref_grams)


def train(cfg: SynthTrainConfig, resume: bool = False, progress: bool = True, callback=None) -> dict:
    """Train (or resume) a generator; returns {"step", "minutes", "losses"}; exports
    ``out/generator.safetensors`` (EMA weights) at the end.

    ``callback(step, record, ema_generator)`` runs after every step on the main process; returning
    ``False`` stops training cleanly (checkpoint and export as at the end) — how a widget pauses."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..core.runtime import end_distributed, setup_distributed
    from ..core.training import EMA, TrainingLoop

    if cfg.mode not in ("inoculate", "reconstruct"):
        raise ValueError(f"mode {cfg.mode!r}: 'inoculate' or 'reconstruct'")
    if cfg.loss not in ("descriptors", "global-style"):
        raise ValueError(f"loss {cfg.loss!r}: 'descriptors' or 'global-style'")
    if cfg.severity_target not in SEVERITY_TARGETS:
        raise ValueError(f"severity_target {cfg.severity_target!r}: one of {SEVERITY_TARGETS}")
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset {cfg.preset!r}: choose one of {sorted(PRESETS)}")
    start = LesionSynthesizer.load(cfg.init) if cfg.init else None
    if start is not None and start.cfg.disc_channel and not cfg.disc:
        from dataclasses import replace

        cfg = replace(cfg, disc=True)  # a fine-tune keeps the inputs of the generator it starts from
    world, rank, device = setup_distributed(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    main = rank == 0
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng([cfg.seed, rank])

    inputs = training_inputs(cfg, main, device, resume)
    detector, gcfg, layers, detail, feats = inputs.detector, inputs.gcfg, inputs.layers, inputs.detail, inputs.feats
    hosts, bank, bank_path = inputs.hosts, inputs.bank, inputs.bank_path
    vessel_term, evidence_net, evidence_sigma, ref_grams = inputs.vessel_term, inputs.evidence_net, inputs.evidence_sigma, inputs.ref_grams

    G, D = Generator(gcfg).to(device), Discriminator(gcfg).to(device)
    if cfg.init and not (resume and (out / "last.pt").exists()):
        from dataclasses import replace

        from .generator import with_disc_input

        # the same networks, or the same without the disc input (then widened with zeros)
        expect = replace(gcfg, disc_channel=start.cfg.disc_channel) if cfg.disc else gcfg
        from ..core.weights import check_config

        check_config(cfg.init, start.cfg, expect)
        G.load_state_dict(with_disc_input(start.generator.state_dict(), G))
    # A fine-tune's EMA starts at trained weights: the from-scratch warm-up (EMA tracking G closely
    # for the first steps) would overwrite them with the first, noisiest steps.
    fine_tune = bool(cfg.init)
    ema = EMA(G, cfg.ema_decay, warmup=not fine_tune)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999))
    loop = TrainingLoop(out, _jsonable(cfg), {"G": G, "D": D, "ema": ema, "opt_g": opt_g, "opt_d": opt_d},
                        steps=cfg.steps, max_minutes=cfg.max_minutes, checkpoint_minutes=cfg.checkpoint_minutes,
                        callback=None if callback is None else lambda step, record: callback(step, record, ema.module),
                        progress=progress, desc="synth", show=("g", "path", "style"), world=world, rank=rank, device=device)
    loop.state.update(history=[], gcfg=json.loads(gcfg.to_json()))
    if resume and loop.resume():
        if loop.state["gcfg"] != json.loads(gcfg.to_json()):
            raise ValueError(f"{loop.path}: checkpoint networks {loop.state['gcfg']} differ from this run's {gcfg.to_json()}")
        rng = np.random.default_rng([cfg.seed, rank, loop.step])
    g_net, d_net = (DDP(G), DDP(D)) if world > 1 else (G, D)
    history = loop.state["history"]

    # Fixed preview: the first host, 0 and 6 lesions, same z.
    preview_host = hosts[0]
    preview_layout = random_layout(bank, min(6, max(1, len(bank))), preview_host["fov"], seed=123) if len(bank) else None
    preview_z = torch.from_numpy(np.random.default_rng(7).standard_normal(gcfg.z_dim).astype(np.float32))

    def step(i: int) -> dict:
        picks = [hosts[int(rng.integers(len(hosts)))] for _ in range(cfg.batch_size)]
        # reconstruct: no warp, the photo's own descriptors must stay where they were cut
        batch = picks if cfg.mode == "reconstruct" else [augment_host(h, rng) for h in picks]
        real = torch.from_numpy(np.stack([b["image"] for b in batch])).permute(0, 3, 1, 2).to(device)
        ves = torch.from_numpy(np.stack([b["vessels"] for b in batch]))[:, None].to(device)
        fov = torch.from_numpy(np.stack([b["fov"] for b in batch]).astype(np.float32))[:, None].to(device)
        canv = {n: [] for n in gcfg.canvas_channels}
        lesion_mask, placements = torch.zeros_like(fov), []
        added = torch.zeros(cfg.batch_size, device=device)  # severity the placed lesions added in their source eyes
        for j, b in enumerate(batch):
            if cfg.mode == "reconstruct":
                lay = b["layout"] if cfg.loss == "descriptors" and len(b["layout"]) else None
            else:
                k = int(rng.integers(0, cfg.max_lesions + 1)) if cfg.loss == "descriptors" else 0
                lay = random_layout(bank, k, b["fov"], rng=rng) if k else None
            rendered = lay.render((gcfg.size, gcfg.size), layers=layers, fov=b["fov"]) if lay is not None and len(lay) else None
            for n, t in canvas_tensors(rendered, gcfg).items():
                canv[n].append(t)
            if rendered is not None:
                lm = cv2.dilate(rendered.mask.astype(np.uint8), np.ones((9, 9), np.uint8))
                lesion_mask[j, 0] = torch.from_numpy(lm.astype(np.float32))
                placements += layout_placements(lay, j, layers, device)
                if cfg.mode == "inoculate":  # a reconstructed photo's severity already holds its lesions
                    added[j] = layout_severity_share(lay)
        canv = {n: torch.cat(v).to(device) for n, v in canv.items()}
        z = torch.randn(cfg.batch_size, gcfg.z_dim, device=device)
        disc = torch.from_numpy(np.stack([b["disc_map"] for b in batch]))[:, None].to(device) if cfg.disc else None

        fake = g_net(ves, fov, z, canv, disc=disc)
        rec = {}
        warming = fine_tune and i < min(cfg.d_warmup, cfg.steps // 4)  # discriminator-only steps
        if warming or i % cfg.g_steps_per_d == 0:
            d_loss = adversarial_d(d_net(real, ves), d_net(fake.detach(), ves))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            rec["d"] = d_loss.item()
        if warming:  # the callback sees warm-up steps too, so a widget can show them and pause during them
            history.append({**rec, "step": i + 1})
            return rec
        w = cfg.weights
        want_sev = w.severity > 0
        sev_fake, ff = feats(fake, severity=want_sev)
        with torch.no_grad():
            sev_real, fr = feats(real, severity=want_sev)
        detail_f = {n: ff[n] for n in detail}
        detail_r = {n: fr[n] for n in detail}
        terms = {
            "adv": adversarial_g(d_net(fake, ves)),
            # reconstruct: the photo is the target lesions included, so detail covers the whole FOV
            "detail": retinal_detail(detail_f, detail_r, fov, None if cfg.mode == "reconstruct" else lesion_mask),
            "tv": total_variation(fake, fov),
        }
        if want_sev:
            terms["severity"] = severity_term(sev_fake.reshape(-1), sev_real.reshape(-1), added, cfg.severity_target)
        if vessel_term is not None:
            terms["vessel"] = vessel_term(fake, ves, fov)
        if w.spectrum > 0:
            terms["spectrum"] = spectrum_term(fake, real, fov)
        if w.profile > 0:
            terms["profile"] = profile_term(fake, real, fov)
        if w.shading > 0:
            terms["shading"] = shading_term(fake, real, fov, None if cfg.mode == "reconstruct" else lesion_mask)
        if cfg.loss == "descriptors":
            terms["path"] = pathological({n: ff[n] for n in layers}, placements, cfg.pathological_mode)
            if evidence_net is not None:
                terms["evidence"] = evidence_term(evidence_net(fake), fov[:, 0], placements, evidence_sigma) \
                    if placements else fake.new_zeros(())
        else:
            terms["style"] = global_style(detail_f, ref_grams, fov)
        scale = {"adv": w.adversarial, "detail": w.detail, "tv": w.tv, "path": w.pathological, "style": max(w.style, 1.0),
                 "vessel": w.vessel, "severity": w.severity, "evidence": w.evidence, "spectrum": w.spectrum,
                 "profile": w.profile, "shading": w.shading}
        g_loss = sum(scale[k] * v for k, v in terms.items())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        ema.update(G, i)
        rec.update({k: v.item() for k, v in terms.items()}, g=g_loss.item())
        history.append({**rec, "step": i + 1})
        return rec

    def preview(i: int, record: dict) -> None:
        if main and cfg.sample_every and "g" in record and i % cfg.sample_every == 0:
            _write_sample(ema.module, preview_host, preview_layout, preview_z, out / "samples" / f"step_{i:06d}.png", layers)

    loop.run(step, after_step=preview)
    if main:
        synth = LesionSynthesizer(ema.module, detector.weights_hash(), {
            "train_config": _jsonable(cfg), "steps": loop.step, "bank": str(bank_path), "bank_size": len(bank)})
        synth.save(out / "generator.safetensors")
    end_distributed()
    return {"step": loop.step, "minutes": loop.minutes(), "losses": loop.recent_means()}


@torch.no_grad()
def _write_sample(ema: Generator, host: dict, layout, z: torch.Tensor, path: Path, layers) -> None:
    from ..data.io import write_image
    from .disc import host_disc

    synth = LesionSynthesizer(ema)
    disc = host_disc(host) if ema.cfg.disc_channel else None
    healthy = synth.synthesize(host["vessels"], host["fov"], None, z=z, disc=disc)
    sick = synth.synthesize(host["vessels"], host["fov"], layout, z=z, disc=disc) if layout is not None else healthy
    row = np.concatenate([host["image"], np.repeat(host["vessels"][..., None], 3, 2), healthy, sick], axis=1)
    write_image(path, np.clip(row, 0, 1))
