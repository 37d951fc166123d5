"""The class profile reaches the same Koch verdict as the default profile on the same inputs: the Koch test of
``05_reisolate`` (embedded data, its default mode and seed) run with each profile's ``trials``
(koch_explore.core.profiles.CLASS_PROFILE), and the lesions of ``03_culture`` (embedded data: phantoms,
guided backprop) cultured from each profile's eyes, compared on the eyes both see. tests/test_profiles.py
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


def main() -> None:
    torch.set_num_threads(1)
    det, synth, bank, hosts, data = ke.default_setup("embedded")   # 05's defaults: whole mode, the shipped bank
    verdicts = {}
    for profile, trials in zip(("default", "class"), CLASS_PROFILE["05_reisolate"]["trials"]):
        t0 = time.perf_counter()
        rep = ke.koch_test(det, synth, bank, hosts, config=ke.KochConfig(trials=trials, seed=0), progress=False,
                           competence=ke.population_competence(det, "phantom"), vessel_model=False)
        verdicts[profile] = rep.verdict
        print(f"05_reisolate, {profile} profile, {trials} trials on {rep.distinct_hosts} distinct hosts "
              f"({time.perf_counter() - t0:.0f} s): {rep.reading()}")
    print(f"same verdict: {verdicts['default'] == verdicts['class']}")

    phantom = ke.load_detector("phantom")
    banks = {}
    for profile, n in zip(("default", "class"), CLASS_PROFILE["03_culture"]["n_eyes"]):
        eyes = ke.diseased_eyes(n, phantom.input_size, data="embedded", seed=0, min_grade=2)
        banks[profile] = ke.bank_from_images(phantom, eyes.images, eyes.names, lesions=eyes.lesions, method="guided-backprop")
    shared = {d.source for d in banks["class"]}
    rows = {p: sorted((d.source, tuple(d.bbox), int(d.area)) for d in b if d.source in shared) for p, b in banks.items()}
    shares = {p: np.array([d.severity_share for d in sorted(b, key=lambda d: (d.source, tuple(d.bbox))) if d.source in shared])
              for p, b in banks.items()}
    print(f"03_culture: {len(banks['default'])} descriptors from the default profile's eyes, {len(banks['class'])} from the "
          f"class profile's; on the {len(shared)} eyes both see the same components: {rows['default'] == rows['class']}, "
          f"largest share difference {np.abs(shares['default'] - shares['class']).max():.1e}")


if __name__ == "__main__":
    main()
