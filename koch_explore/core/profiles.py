"""Notebook profiles: the same notebooks, sized for the machine they run on.

``default`` is each notebook's parameters cell as written (a workstation: 2+ cores, a few GB). ``class`` is a
student's kernel on a shared JupyterHub: **1 core, 1.5 GB of kernel memory, each notebook done in 3 minutes**
(:data:`CLASS_BUDGET`; measured by ``benchmarks/bench_notebooks.py --profile class --cores 1``,
docs/notebooks.md#class-profile). The class profile is *smaller, not different*: it only lowers counts (eyes,
trials, training steps and images per step, methods compared), never a threshold, a method or a model, so on
the eyes both see it cultures the same lesions (tests/test_profiles.py) and on the same hosts it reaches the
same Koch verdict (benchmarks/profile_verdicts.py).

A notebook opts in with one call after its parameters cell::

    ke.use_profile(globals(), "02_isolate")   # profile from the `profile` parameter, else $KOCH_PROFILE

which sets torch's threads from the CPU quota (:func:`koch_explore.core.runtime.set_torch_threads`) and lowers
the parameters the profile names, unless you set them yourself (a value other than the parameters cell's).
"""

from __future__ import annotations

import gc
import os

__all__ = ["PROFILES", "CLASS_BUDGET", "CLASS_PROFILE", "resolve_profile", "profile_values", "use_profile", "release_memory"]

PROFILES = ("default", "class")
CLASS_BUDGET = (180.0, 1.5)
"""What the class profile must fit per notebook on one core: (wall seconds, GB of kernel peak resident memory)."""

CLASS_PROFILE: dict[str, dict[str, tuple]] = {
    # notebook -> parameter -> (the parameters cell's value, the class profile's). tests/test_profiles.py checks
    # the first against each notebook, so the table cannot drift from the notebooks.
    "00_quickstart": {"n_eyes": (8, 6)},
    "01_detector": {},
    "02_isolate": {"n_phantoms": (16, 8), "n_per_grade": (40, 12), "n_sanity": (24, 8),
                   "sanity_methods": ("all", "guided-gradcam,gradcam,gradient,random")},
    "03_culture": {"n_eyes": (16, 8)},
    "04_inoculate": {"n_hosts": (3, 2), "retrain_steps": (100, 30), "retrain_batch": (2, 1)},
    "05_reisolate": {"trials": (40, 12), "compare_methods": ("deconvnet,guided-gradcam,gradient-x-input,guided-backprop",
                                                            "deconvnet,guided-gradcam"), "compare_trials": (12, 4)},
    "06_lesson_koch_for_cnns": {},
    "07_audit_your_model": {"sanity_count": (48, 24), "sanity_random": (16, 8), "localisation_count": (24, 12),
                            "trials": (24, 16)},
}
"""What the class profile lowers, per notebook; a notebook absent or empty here fits the class as it is."""


def resolve_profile(profile: str | None = None) -> str:
    """``profile``, else ``$KOCH_PROFILE``, else "default"; one of :data:`PROFILES`."""
    name = (profile or os.environ.get("KOCH_PROFILE", "") or "default").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: use one of {', '.join(PROFILES)} (parameter `profile` or KOCH_PROFILE)")
    return name


def profile_values(notebook: str, profile: str | None = None) -> dict:
    """The parameters ``profile`` sets in ``notebook`` (a file stem such as "02_isolate"): {} for the default."""
    if notebook not in CLASS_PROFILE:
        raise KeyError(f"no profile entry for notebook {notebook!r}; known: {', '.join(CLASS_PROFILE)}")
    if resolve_profile(profile) == "default":
        return {}
    return {k: new for k, (_, new) in CLASS_PROFILE[notebook].items()}


def use_profile(namespace: dict, notebook: str, profile: str | None = None, announce: bool = True) -> str:
    """Apply a profile to a notebook's parameters in ``namespace`` (its ``globals()``) and set torch's threads
    from the CPU quota; returns the profile's name. ``profile`` None reads ``namespace["profile"]``, then
    ``$KOCH_PROFILE``. A parameter you changed from its parameters-cell value is kept (and said so): the
    profile lowers defaults, it never overrides a choice. Running the cell again changes nothing more."""
    from .runtime import cpu_budget, set_torch_threads

    name = resolve_profile(profile if profile is not None else namespace.get("profile"))
    threads, source = cpu_budget()  # read once: the count set and the limit it came from
    set_torch_threads(threads)
    changed, kept = [], []
    for key, new in profile_values(notebook, name).items():
        default = CLASS_PROFILE[notebook][key][0]
        value = namespace.get(key, default)
        if value == default:
            namespace[key] = new
            changed.append(f"{key} {default!r} -> {new!r}")
        elif value != new:
            kept.append(f"{key}={value!r}")
    if announce:
        line = f"profile {name}: {threads} torch thread{'s' if threads != 1 else ''} ({source})"
        if changed:
            line += "; " + ", ".join(changed)
        if kept:
            line += "; kept as you set them: " + ", ".join(kept)
        print(line)
    return name


def release_memory() -> None:
    """Give freed memory back to the system between large sections: Python's cycles, then glibc's free lists
    (without ``malloc_trim`` a kernel's resident size stays at its peak after the arrays are gone, and on a
    hub that peak is what the memory limit counts)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the collector's work is all there is
        pass
