"""Synthesizer cost: one full training step (losses through the frozen detector, placements, D step)
relative to a bare generator + discriminator step of the same sizes (target: <= 1.6x), and the
generation time per image.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--repeats 5] [--threads 2] [--batch 2]``

Both steps run on the same batch in the same process, interleaved, and the ratio is taken per repeat.
The bare step is what any pix2pix-style GAN pays: G forward, D on real and fake, LSGAN losses, both
backwards, both Adam steps. The full step adds the detector features of the synthetic and real
images (retinal detail, pathological Gram terms at placed lesions), the severity term (the whole
detector, its dense head included), TV, and the vessel consistency term (the frozen vessel
segmenter on one 256 px window at its working scale): the shipped generator's recipe. A third step adds
the optional evidence term (``--w-evidence``: the activation network's projection of the synthetic
images, differentiated through), reported beside it. Phantom hosts and a phantom descriptor bank stand
in for the data (same tensor sizes as the real run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from koch_explore.detect.model import load_detector
from koch_explore.evidence.base import default_blur_sigma
from koch_explore.evidence.deconvnet import DifferentiableEvidence
from koch_explore.synthesis.discriminator import Discriminator
from koch_explore.synthesis.generator import Generator, GeneratorConfig, canvas_tensors
from koch_explore.synthesis.losses import (
    DetectorFeatures,
    VesselConsistency,
    adversarial_d,
    adversarial_g,
    evidence_term,
    pathological,
    retinal_detail,
    severity_term,
    total_variation,
)
from koch_explore.synthesis.synthesizer import (
    LesionSynthesizer,
    layout_placements,
    layout_severity_share,
    random_layout,
)
from koch_explore.synthesis.trainer import SynthTrainConfig, build_bank, healthy_set

TARGET = 1.6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    det = load_detector("phantom")
    cfg = SynthTrainConfig(data="phantom", bank_images=8)
    gcfg = GeneratorConfig()
    hosts = healthy_set(cfg, 256)[: args.batch]
    bank = build_bank(cfg, det, 256)
    feats = DetectorFeatures(det, ["conv2", "conv5"])
    from koch_explore.vessels import load_vessels

    vessel_term = VesselConsistency(load_vessels())
    evidence_net = DifferentiableEvidence(det, str(bank.info.get("method") or cfg.bank_method))
    G, D = Generator(gcfg), Discriminator(gcfg)
    og, od = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    real = torch.from_numpy(np.stack([h["image"] for h in hosts])).permute(0, 3, 1, 2).contiguous()
    ves = torch.from_numpy(np.stack([h["vessels"] for h in hosts]))[:, None]
    fov = torch.from_numpy(np.stack([h["fov"] for h in hosts]).astype(np.float32))[:, None]
    z = torch.randn(args.batch, gcfg.z_dim)
    empty = canvas_tensors(None, gcfg)
    empty = {n: t.repeat(args.batch, 1, 1, 1) for n, t in empty.items()}

    def bare():
        fake = G(ves, fov, z, empty)
        d = adversarial_d(D(real, ves), D(fake.detach(), ves))
        od.zero_grad(); d.backward(); od.step()
        g = adversarial_g(D(fake, ves))
        og.zero_grad(); g.backward(); og.step()

    rng = np.random.default_rng(0)

    def full(evidence: bool = False):
        canv, placements = {n: [] for n in gcfg.canvas_channels}, []
        added = torch.zeros(args.batch)
        for i, h in enumerate(hosts):
            lay = random_layout(bank, 4, h["fov"], rng=rng)
            added[i] = layout_severity_share(lay)
            rendered = lay.render((256, 256), layers=list(gcfg.canvas_channels), fov=h["fov"])
            for n, t in canvas_tensors(rendered, gcfg).items():
                canv[n].append(t)
            placements += layout_placements(lay, i, list(gcfg.canvas_channels))
        canv = {n: torch.cat(v) for n, v in canv.items()}
        fake = G(ves, fov, z, canv)
        d = adversarial_d(D(real, ves), D(fake.detach(), ves))
        od.zero_grad(); d.backward(); od.step()
        sev_f, ff = feats(fake, severity=True)
        with torch.no_grad():
            sev_r, fr = feats(real, severity=True)
        g = adversarial_g(D(fake, ves)) + 10 * retinal_detail(ff, fr, fov) + pathological(ff, placements) + total_variation(fake, fov)
        g = g + 2 * vessel_term(fake, ves, fov) + 10 * severity_term(sev_f.reshape(-1), sev_r.reshape(-1), added)
        if evidence:
            g = g + 30 * evidence_term(evidence_net(fake), fov[:, 0], placements, default_blur_sigma(256))
        og.zero_grad(); g.backward(); og.step()

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    bare(); full(); full(True)  # warm-up
    runs = [(timed(bare), timed(full), timed(lambda: full(True))) for _ in range(args.repeats)]
    pairs = [r[:2] for r in runs]
    synth = LesionSynthesizer(G)
    gen = [timed(lambda: synth.synthesize(hosts[0]["vessels"], hosts[0]["fov"], None)) for _ in range(args.repeats)]
    b, f = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[1] / p[0] for p in pairs)
    print(f"synthesizer cpu-256 (G {sum(p.numel() for p in G.parameters()) / 1e6:.1f} M, D {sum(p.numel() for p in D.parameters()) / 1e6:.1f} M), "
          f"batch {args.batch}, {args.threads} threads, medians of {args.repeats} interleaved repeats:")
    print(f"  bare G + D step   {b * 1000:8.0f} ms")
    print(f"  full train step   {f * 1000:8.0f} ms   ratio {ratio:.2f} (target <= {TARGET})")
    e = statistics.median(r[2] for r in runs)
    print(f"  + evidence term   {e * 1000:8.0f} ms   ratio {statistics.median(r[2] / r[0] for r in runs):.2f} (optional, not in the shipped recipe)")
    print(f"  generate 1 image  {statistics.median(gen) * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
