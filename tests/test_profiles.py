"""Notebook profiles (koch_explore.core.profiles): the class profile's table matches the notebooks, only lowers
counts, is applied by one call that keeps a user's own choices, and on the eyes both profiles see cultures the
same lesions (the same Koch verdict: benchmarks/profile_verdicts.py, a few minutes, so a measurement)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import koch_explore as ke
from koch_explore.core.profiles import CLASS_PROFILE, profile_values, resolve_profile

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NOT_COUNTS = {"data", "device", "detector", "phantom_detector", "synthesizer", "bank", "method", "start", "threshold", "rule",
              "mode", "seed", "hosts", "counts", "koch_detector", "model_factory", "weights"}
"""Parameters that change *what* a notebook computes, which a profile must never touch."""


def parameters_cell(name: str) -> dict:
    cells = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    src = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
    return {t.id: ast.literal_eval(node.value) for node in ast.parse(src).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_takes_a_profile_and_the_table_holds_its_parameters_cell_values(name):
    params = parameters_cell(name)
    assert "profile" in params and params["profile"] is None, f"{name}: no `profile = None` parameter"
    code = "".join("".join(c["source"]) for c in json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())["cells"]
                   if c["cell_type"] == "code")
    assert f'ke.use_profile(globals(), "{name}")' in code, f"{name}: the profile is not applied"
    assert name in CLASS_PROFILE, f"{name}: no entry in CLASS_PROFILE"
    for key, (default, _) in CLASS_PROFILE[name].items():
        assert key in params, f"{name}: the class profile names {key!r}, which is not a parameter"
        assert params[key] == default, f"{name}: {key} is {params[key]!r} in the notebook, {default!r} in CLASS_PROFILE"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_class_profile_is_smaller_not_different(name):
    for key, (default, small) in CLASS_PROFILE[name].items():
        assert key not in NOT_COUNTS, f"{name}: the class profile changes {key}, which changes what is computed"
        if isinstance(default, int):
            assert 1 <= small <= default, f"{name}: {key} {default} -> {small} is not a smaller count"
        else:  # a comma-separated list of methods ("all": every evidence method)
            before = set(ke.EVIDENCE_METHODS) if default == "all" else {m.strip() for m in default.split(",")}
            after = {m.strip() for m in small.split(",")}
            assert after and after <= before, f"{name}: {key} {small!r} is not a subset of {default!r}"


def test_use_profile_lowers_defaults_keeps_choices_and_reads_the_environment(monkeypatch, capsys):
    monkeypatch.delenv("KOCH_PROFILE", raising=False)
    params = parameters_cell("02_isolate")
    params["n_sanity"] = 30  # the user's own choice
    assert ke.use_profile(params, "02_isolate") == "default" and params["n_per_grade"] == 40  # default: nothing lowered
    params["profile"] = "class"
    assert ke.use_profile(params, "02_isolate") == "class"
    assert params["n_per_grade"] == 12 and params["n_sanity"] == 30
    line = capsys.readouterr().out.splitlines()[-1]
    assert "n_per_grade 40 -> 12" in line and "kept as you set them: n_sanity=30" in line and "torch thread" in line
    ke.use_profile(params, "02_isolate")  # run again: nothing more changes
    assert params["n_per_grade"] == 12 and "->" not in capsys.readouterr().out
    monkeypatch.setenv("KOCH_PROFILE", "class")
    env = parameters_cell("05_reisolate")
    ke.use_profile(env, "05_reisolate")
    assert env["trials"] == CLASS_PROFILE["05_reisolate"]["trials"][1]
    assert resolve_profile("default") == "default"  # the parameter wins over the environment
    with pytest.raises(ValueError, match="unknown profile 'lecture'"):
        resolve_profile("lecture")
    with pytest.raises(KeyError, match="no profile entry"):
        profile_values("99_nothing", "class")


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="resident memory read from /proc (Linux, as a hub)")
def test_release_memory_returns_freed_arrays_to_the_system():
    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

    # blocks of 64 kB stay on glibc's heap (below its mmap threshold); one more allocated after them keeps the
    # heap's top in use, so free() cannot give them back by shrinking the heap: they stay resident until trimmed
    blocks = [np.ones(2**13, np.float64) for _ in range(12000)]  # ~0.8 GB
    top = np.ones(2**13, np.float64)
    high = rss_mb()
    del blocks
    import gc

    gc.collect()
    assert rss_mb() > high - 200, "freed heap memory left at once: this check would not see release_memory work"
    ke.release_memory()
    assert rss_mb() < high - 500, "freed memory stayed resident"
    del top


@pytest.mark.slow
def test_the_class_profile_isolates_the_same_lesions_as_the_default_on_the_eyes_both_see():
    """00_quickstart's culture, class against default profile, embedded data: the class profile's eyes are the
    default's first ones, and on them every descriptor is the same (place, size, share)."""
    n_default, n_class = CLASS_PROFILE["00_quickstart"]["n_eyes"]
    det = ke.load_detector("eyepacs")
    banks = {}
    for n in (n_default, n_class):
        eyes = ke.diseased_eyes(n, data="embedded", seed=3)
        banks[n] = ke.bank_from_images(det, eyes.images, eyes.names, lesions=eyes.lesions, threshold=0.3)

    def described(bank, names):
        return sorted((d.source, tuple(d.bbox), int(d.area), float(d.severity_share)) for d in bank if d.source in names)

    shared = {d.source for d in banks[n_class]}
    assert len(shared) >= 3  # most eyes give lesions: the comparison is not empty
    small, large = described(banks[n_class], shared), described(banks[n_default], shared)
    assert [d[:3] for d in small] == [d[:3] for d in large]  # the same components, pixel for pixel
    # the shares agree to float precision (another batch size sums in another order)
    assert np.allclose([d[3] for d in small], [d[3] for d in large], atol=1e-4)
    assert len(banks[n_default]) > len(banks[n_class])  # the default saw more eyes
