"""Postulate 3 for users: :class:`LesionSynthesizer` — inoculate a vessel tree with placed descriptors.

::

    synth = load_synthesizer("real")                                  # or a path to your own weights
    layout = random_layout(bank, count=4, fov=fov, seed=0)          # or bank.relocate(...) by hand
    image = synth.inoculate(photo, fov, layout)                      # around the photo's own vessel tree
    image = synth.synthesize(vessels, fov, layout, z=None)           # around any tree: (S, S, 3) float32 in [0, 1]
    image4 = synth.synthesize(vessels, fov, synth.set_count(layout, 16, fov))

Weights are safetensors (fp16 on disk) with the generator config and the detector hash of the
descriptors it was trained with in the header; loading is strict.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.geometry import boxes_overlap, in_mask
from ..core.weights import resolve_weights, weights_format
from .base import Synthesizer
from .generator import Generator, GeneratorConfig, canvas_tensors

__all__ = ["LesionSynthesizer", "random_layout", "layout_placements", "layout_severity_share"]


def random_layout(bank, count: int, fov: np.ndarray, seed: int = 0, snap: int = 8, tries: int = 100, rng=None,
                  redraws: int = 20):
    """Exactly ``count`` descriptors drawn from ``bank`` (with replacement when ``count > len(bank)``), each
    moved to a random position whose snapped centroid lies inside ``fov``, whose lesion lies inside the
    FOV and whose box overlaps no earlier placement (when ``tries`` allow; else the first valid place).

    A descriptor that finds no valid place in ``tries`` (a lesion larger than the FOV allows) is replaced
    by another draw from the bank, up to ``redraws`` times in all; when that is not enough the call
    raises ``ValueError`` with the shortfall and why, never returning fewer descriptors than asked for
    (a Koch test dose must be the dose it reports). The placed bank's ``info["redrawn"]`` counts the
    replacements."""
    from ..culture.bank import DescriptorBank

    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count and not len(bank):
        raise ValueError("cannot place descriptors from an empty bank")
    rng = np.random.default_rng(seed) if rng is None else rng
    fov = np.asarray(fov, bool)
    ys, xs = np.nonzero(fov)
    if count and not len(ys):
        raise ValueError(f"cannot place {count} descriptors: the field of view ({fov.shape[1]}x{fov.shape[0]} px) is empty")

    def place(d):
        if d.image_size != fov.shape:
            raise ValueError(f"descriptor from {d.source!r} was cut from a {d.image_size} image, the FOV is {fov.shape}")
        best = None
        for _ in range(tries):
            k = rng.integers(len(ys))
            cand = d.relocated((float(xs[k]), float(ys[k])), snap)
            x0, y0, x1, y1 = cand.bbox
            if not in_mask(fov, cand.centroid):
                continue
            if not (fov[y0:y1, x0:x1][cand.mask].mean() > 0.95):
                continue  # the lesion must lie inside the FOV, not on the black frame
            best = best or cand
            if not any(boxes_overlap(cand.bbox, o.bbox) for o in placed):
                return cand
        return best

    placed, redrawn, unplaced = [], 0, []
    for j in rng.choice(len(bank), size=count, replace=count > len(bank)) if count else []:
        d = bank[int(j)]
        spot = place(d)
        while spot is None and redrawn < redraws:
            unplaced.append(d)
            redrawn += 1
            d = bank[int(rng.integers(len(bank)))]
            spot = place(d)
        if spot is None:
            unplaced.append(d)
            sizes = sorted({f"{x1 - x0}x{y1 - y0}" for x0, y0, x1, y1 in (u.bbox for u in unplaced)})[:4]
            raise ValueError(f"placed {len(placed)} of {count} descriptors: {len(unplaced)} draws (boxes {', '.join(sizes)} px) "
                             f"found no place in {tries} tries each with the lesion inside the field of view "
                             f"({int(fov.sum())} px of a {fov.shape[1]}x{fov.shape[0]} canvas); use a larger FOV or smaller descriptors")
        placed.append(spot)
    return DescriptorBank(placed, detector_hash=bank.detector_hash, info={**bank.info, "redrawn": redrawn})


def layout_severity_share(layout_bank) -> float:
    """What the placed descriptors added to the severity of their source eyes, summed (the severity
    term's allowance for them); descriptors without a measured share count 0."""
    return float(sum(d.severity_share for d in layout_bank if np.isfinite(d.severity_share)))


def layout_placements(layout_bank, index: int, layers, device=None):
    """The losses' :class:`~koch_explore.synthesis.losses.Placement` list for one placed bank."""
    from .losses import Placement

    out = []
    for d in layout_bank:
        boxes, masks, grams, feats = {}, {}, {}, {}
        for n in layers:
            if n not in d.features:
                continue
            boxes[n] = d.layer_box(n)
            masks[n] = torch.from_numpy(d.layer_mask(n)).to(device)
            grams[n] = torch.from_numpy(d.grams[n]).to(device)
            feats[n] = torch.from_numpy(d.features[n]).to(device)
        if boxes:
            # placed boxes lie inside the image, as ``render`` (which pastes them) requires
            out.append(Placement(index, boxes, masks, grams, feats, d.bbox, torch.from_numpy(d.mask).to(device), float(d.score)))
    return out


class LesionSynthesizer(Synthesizer):
    """A trained generator and what it needs to turn (vessels, FOV, placed descriptors) into a fundus
    (the paper's whole-fundus mode; :class:`~koch_explore.synthesis.local.LocalSynthesizer` is the local one)."""

    FORMAT = "koch-explore/lesion-synthesizer"
    FORMAT_VERSION = 1
    KIND = "lesion synthesizer"
    CONFIG = GeneratorConfig
    NETWORK = Generator
    mode = "whole"

    @torch.no_grad()
    def synthesize(self, vessels: np.ndarray, fov: np.ndarray, layout=None, z: np.ndarray | torch.Tensor | None = None, seed: int = 0,
                   disc: tuple[float, float, float] | None = None) -> np.ndarray:
        """One fundus (S, S, 3) float32 in [0, 1]. ``layout``: a placed :class:`DescriptorBank`, a
        :class:`RenderedLayout`, or None (no lesion: the healthy synthesis). ``z`` defaults to a
        normal draw from ``seed``. ``disc`` (x, y, radius) in px, for a generator that draws the optic
        disc (``cfg.disc_channel``): default, where the tree's wide vessels converge
        (:func:`~koch_explore.synthesis.disc.disc_from_vessels`)."""
        from ..culture.bank import DescriptorBank

        s = self.cfg.size
        v, f = np.asarray(vessels, np.float32), np.asarray(fov, bool)
        if v.shape != (s, s) or f.shape != (s, s):
            raise ValueError(f"vessels {v.shape} and fov {f.shape} must both be ({s}, {s}) for this generator")
        if isinstance(layout, DescriptorBank):
            if self.detector_hash and layout.detector_hash and layout.detector_hash != self.detector_hash:
                from ..culture.bank import BankMismatchError

                raise BankMismatchError("the descriptors were cut with other detector weights than this synthesizer was trained with")
            layout = layout.render((s, s), layers=list(self.cfg.canvas_channels), fov=f) if len(layout) else None
        dev = self.device
        if z is None:
            z = torch.from_numpy(np.random.default_rng(seed).standard_normal(self.cfg.z_dim).astype(np.float32))
        z = torch.as_tensor(z, dtype=torch.float32).reshape(1, -1).to(dev)
        vt = torch.from_numpy(v)[None, None].to(dev)
        ft = torch.from_numpy(f.astype(np.float32))[None, None].to(dev)
        dt = None
        if self.cfg.disc_channel:
            from .disc import disc_from_vessels, disc_map

            dt = torch.from_numpy(disc_map((s, s), disc if disc is not None else disc_from_vessels(v, f)))[None, None].to(dev)
        out = self.generator(vt, ft, z, canvas_tensors(layout, self.cfg, dev), disc=dt)
        return out[0].permute(1, 2, 0).float().cpu().numpy()

    def synthesize_host(self, host: dict, layout=None, seed: int = 0) -> np.ndarray:
        """The Koch test's call: a fundus drawn around ``host["vessels"]`` within ``host["fov"]`` (the disc,
        for a generator that draws it, where the host's photo has it, else where its tree says)."""
        if host.get("vessels") is None:
            raise ValueError(f"host {host.get('name', '?')!r} has no vessel tree: the whole-fundus generator draws around one "
                             "(use --mode local to inoculate the photo itself)")
        disc = None
        if self.cfg.disc_channel:
            from .disc import host_disc

            disc = host_disc(host)
        return self.synthesize(host["vessels"], host["fov"], layout, seed=seed, disc=disc)

    @staticmethod
    def relocate(layout_bank, i, to, snap: int = 8):
        """Move placed descriptor(s) ``i`` so the centroid lands on ``to`` (x, y); re-render by synthesizing again."""
        return layout_bank.relocate(i, to, snap)

    @staticmethod
    def set_count(layout_bank, n: int, fov: np.ndarray, seed: int = 0):
        """Exactly ``n`` placed lesions drawn from ``layout_bank`` at random valid positions."""
        return random_layout(layout_bank, n, fov, seed)


MODES = {"whole": "real", "local": "local"}
"""Synthesis mode -> the shipped synthesizer of the real setup: "whole", the paper's generator that draws the
whole fundus around a vessel tree; "local", lesions grown inside a real healthy photo (:mod:`.local`)."""


def load_synthesizer(name_or_path: str | os.PathLike | None = None, device="cpu") -> Synthesizer:
    """A synthesizer by shipped name ("real", the default whole-fundus one; "local"; "deconvnet"; "phantom")
    or from a user's safetensors file (see :data:`koch_explore.core.weights.SHIPPED`): a
    :class:`LesionSynthesizer` or a :class:`~koch_explore.synthesis.local.LocalSynthesizer`, as the file's
    header says; either answers the :class:`~koch_explore.synthesis.base.Synthesizer` calls
    (``synthesize_host``, ``inoculate``). Its bank: :func:`~koch_explore.culture.load_bank` with the same name."""
    from ..core.runtime import resolve_device
    from .local import LocalSynthesizer

    device = resolve_device(device)  # a bad name is one line before any file is read
    path = resolve_weights("synthesizer", name_or_path)
    # an unreadable file has no format: the strict loader names the problem
    kind = LocalSynthesizer if weights_format(path) == LocalSynthesizer.FORMAT else LesionSynthesizer
    return kind.load(path, map_location=device)


def placed_from_json(bank, layout: list[dict], fov: np.ndarray | None = None):
    """A placed :class:`DescriptorBank` from ``[{"index", "to", "rotate", "scale"}]`` (``to`` in generator
    pixels; ``rotate`` in degrees, any value, wrapped to one turn; ``scale`` a positive linear factor).
    With ``fov`` an entry whose ``to`` lies outside the field of view is refused (an entry without ``to``
    stays where it was cut, inside its source eye's). Errors name the entry."""
    import math

    from ..culture.bank import DescriptorBank

    if not isinstance(layout, list):
        raise ValueError(f"a layout is a JSON list of placements, not {type(layout).__name__}")
    out = []
    for k, item in enumerate(layout):
        try:
            d = bank[int(item["index"])]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"layout entry {k}: needs an 'index' into the bank of {len(bank)} ({exc})") from exc
        try:
            scale, rotate = float(item.get("scale", 1.0)), float(item.get("rotate", 0.0))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"layout entry {k}: 'scale' and 'rotate' must be numbers ({exc})") from exc
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"layout entry {k}: scale {item.get('scale')!r} must be a positive number")
        if not math.isfinite(rotate):
            raise ValueError(f"layout entry {k}: rotate {item.get('rotate')!r} must be a finite number of degrees")
        if scale != 1.0:
            d = d.scaled(scale)
        if rotate:
            d = d.rotated(rotate)
        if "to" in item:
            try:
                to = tuple(float(v) for v in item["to"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"layout entry {k}: 'to' must be [x, y] ({exc})") from exc
            if len(to) != 2 or not all(map(math.isfinite, to)):
                raise ValueError(f"layout entry {k}: 'to' must be [x, y], got {item['to']!r}")
            if fov is not None and not in_mask(fov, to):
                raise ValueError(f"layout entry {k}: 'to' {list(item['to'])} lies outside the field of view "
                                 f"of the {fov.shape[1]}x{fov.shape[0]} px generator canvas")
            d = d.relocated(to)
        out.append(d)
    return DescriptorBank(out, detector_hash=bank.detector_hash, info=dict(bank.info))


def synthesize_files(weights, vessels_path=None, fov_path=None, bank=None, layout=None, count: int = 4, seed: int = 0,
                     colour_reference=None, photo=None) -> tuple[np.ndarray, int]:
    """(image (S, S, 3) in [0, 1], lesions placed) from files. Whole mode: a vessel tree and FOV mask of any
    size; local mode (the weights say which): ``photo``, a healthy fundus photo of any size (its FOV from
    ``fov_path`` or estimated). Then a bank (shipped name or file; None: no lesion), a layout JSON file
    (``[{"index", "to", "rotate", "scale"}]``; None: ``count`` random placements) and optionally a photo
    whose Lab colour statistics the result takes (the paper's Fig. 10)."""
    import json

    from ..culture.bank import load_bank
    from ..data.io import read_image, read_mask
    from ..data.preprocess import prepare_fundus, prepare_mask
    from .colour import transfer_colour

    synth = load_synthesizer(weights)
    size = synth.size
    local = getattr(synth, "mode", "whole") == "local"
    if local:
        if photo is None:
            raise ValueError(f"{weights}: local-mode weights grow lesions in a photo: give --photo (a healthy fundus photo)")
        given = read_mask(fov_path, allow_empty=False) if fov_path else None
        host, fov = prepare_fundus(read_image(photo), size, fov=given, path=photo)
    else:
        if vessels_path is None or fov_path is None:
            raise ValueError(f"{weights}: whole-fundus weights draw around a vessel tree: give --vessels and --fov")
        fov_full = read_mask(fov_path, allow_empty=False)
        ves_full = read_mask(vessels_path)
        if ves_full.shape != fov_full.shape:
            raise ValueError(f"{vessels_path}: vessel tree {ves_full.shape} and FOV {fov_full.shape} differ in size")
        fov = prepare_mask(fov_full, fov_full, size)
        ves = prepare_mask(ves_full, fov_full, size) & fov
    placed = None
    if bank is not None:
        descriptors = load_bank(bank)
        if layout:
            try:
                placed = placed_from_json(descriptors, json.loads(Path(layout).read_text()), fov)
            except ValueError as exc:  # the JSON's own errors and the entries' both name the file
                raise ValueError(f"{layout}: {exc}") from exc
        else:
            placed = random_layout(descriptors, count, fov, seed=seed)
    if local:
        image = synth.inoculate(host, fov, placed)
    else:
        image = synth.synthesize(ves.astype(np.float32), fov, placed, seed=seed)
    if colour_reference:
        ref, ref_fov = prepare_fundus(read_image(colour_reference), size, path=colour_reference)
        image = transfer_colour(image, fov, ref, ref_fov)
    return image, 0 if placed is None else len(placed)
