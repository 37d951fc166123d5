"""The Koch test behind the notebooks' paths without data (docs/findings/koch-test.md#embedded), one thread:

* ``quickstart``: lesions cultured by the EyePACS detector from 8 diseased phantoms (the quickstart's culture),
  grown by the local synthesizer in the 12 embedded hosts, graded by the EyePACS detector;
* ``hands-on``: ``04_inoculate`` on phantoms, the phantom generator and its bank on grade-0 phantom hosts,
  graded once by the phantom detector and once by the EyePACS detector.

Run: ``.venv/bin/python benchmarks/embedded_hosts.py [--trials 12]``
"""

from __future__ import annotations

import argparse
import time

import torch

import koch_explore as ke


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12, help="Koch trials (one host each, up to the hosts there are)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    eyepacs = ke.load_detector("eyepacs")
    competence = ke.population_competence(eyepacs, "phantom")
    print(f"EyePACS detector on graded phantoms: referable AUC {competence['referable_auc']:.2f} (n {competence['n']})")

    t0 = time.perf_counter()
    eyes = ke.diseased_eyes(8, 256, data="embedded", seed=3)
    cultured = ke.bank_from_images(eyepacs, eyes.images, eyes.names, lesions=eyes.lesions, threshold=0.3)
    cultured = cultured.select(max_area=int(0.015 * 256 ** 2))  # the quickstart's cap: lesions the synthesizer draws
    rep = ke.koch_test(eyepacs, ke.load_synthesizer("local"), cultured, ke.embedded_hosts(), progress=False,
                       config=ke.KochConfig(trials=args.trials, seed=0), competence=competence, vessel_model=False)
    print(f"quickstart ({len(cultured)} cultured lesions, local synthesis, {time.perf_counter() - t0:.0f} s): {rep.reading()}")

    hosts = ke.healthy_hosts("phantom", "trees", size=256)[:args.trials]   # the phantom trainer's grade-0 hosts
    synth, bank = ke.load_synthesizer("phantom"), ke.load_bank("phantom")
    for name, grader in (("phantom", ke.load_detector("phantom")), ("eyepacs", eyepacs)):
        t0 = time.perf_counter()
        rep = ke.koch_test(grader, synth, bank, hosts, config=ke.KochConfig(trials=args.trials, seed=0), progress=False,
                           competence=ke.population_competence(grader, "phantom"), vessel_model=False)
        print(f"hands-on, graded by the {name} detector ({time.perf_counter() - t0:.0f} s): {rep.reading()}")


if __name__ == "__main__":
    main()
