"""The class profile reaches the same Koch verdict as the default profile on the same inputs: the Koch test of
``05_reisolate`` (embedded data, its default mode and seed) run with each profile's ``trials``
(koch_explore.core.profiles.CLASS_PROFILE), called as 05 calls it, and the lesions of ``03_culture`` (embedded
data: phantoms, guided backprop, as its first cell cultures them) from each profile's eyes, compared on the eyes
both see. tests/test_profiles.py
compares the quickstart's lesions on every run; this costs a few minutes (the default profile's 40 Koch
trials), so it is a measurement, not a test.

Run: ``.venv/bin/python benchmarks/profile_verdicts.py`` (one thread)
"""

from __future__ import annotations

import time

import numpy as np
import torch

import koch_explore as ke
from koch_explore.core.profiles import CLASS_PROFILE


def culture_03(n_eyes: int, seed: int = 0):
    """03_culture's bank on the embedded data, as its first cell builds it: phantoms of grade 2-4 drawn in order,
    the phantom detector, guided backprop."""
    det, rng = ke.load_detector("phantom"), np.random.default_rng(seed)
    phantoms = [ke.generate_phantom(5_000_000 + k, size=det.input_size, grade=int(rng.integers(2, 5))) for k in range(n_eyes)]
    images = np.stack([np.clip(p.image, 0, 1) for p in phantoms]).astype(np.float32)
    return ke.bank_from_images(det, images, [f"phantom_{k}" for k in range(n_eyes)], "guided-backprop",
                               lesions=[p.lesions for p in phantoms])


def main() -> None:
    torch.set_num_threads(1)
    det, synth, bank, hosts, data = ke.default_setup("embedded")   # 05's defaults: whole mode, the shipped bank
    verdicts = {}
    for profile, trials in zip(("default", "class"), CLASS_PROFILE["05_reisolate"]["trials"]):
        t0 = time.perf_counter()
        rep = ke.koch_test(det, synth, bank, hosts, config=ke.KochConfig(trials=trials, seed=0), progress=False)  # as 05 calls it
        verdicts[profile] = rep.verdict
        print(f"05_reisolate, {profile} profile, {trials} trials on {rep.distinct_hosts} distinct hosts "
              f"({time.perf_counter() - t0:.0f} s): {rep.reading()}")
    print(f"same verdict: {verdicts['default'] == verdicts['class']}")

    banks = {p: culture_03(n) for p, n in zip(("default", "class"), CLASS_PROFILE["03_culture"]["n_eyes"])}
    shared = {d.source for d in banks["class"]}
    key = lambda d: (d.source, tuple(d.bbox), int(d.area))  # noqa: E731
    rows = {p: sorted(key(d) for d in b if d.source in shared) for p, b in banks.items()}
    shares = {p: np.array([d.severity_share for d in sorted(b, key=key) if d.source in shared]) for p, b in banks.items()}
    print(f"03_culture: {len(banks['default'])} descriptors from the default profile's eyes, {len(banks['class'])} from the "
          f"class profile's; on the {len(shared)} eyes both see the same components: {rows['default'] == rows['class']}, "
          f"largest share difference {np.abs(shares['default'] - shares['class']).max():.1e}")


if __name__ == "__main__":
    main()
