"""The hosts of the Koch test: healthy fundi to inoculate, and the shipped models that go with them.

"real": the 68 DRIVE + CHASE_DB1 photos with manual vessel trees (the shipped synthesizer's training
hosts), or held-out grade-0 photos no shipped model trained on; "embedded": ``skimage.data.retina()`` and 11
grade-0 phantoms (no data needed); "phantom": grade-0 phantoms with the phantom-trained models.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ..culture.bank import load_bank
from ..data.embedded import retina_photo
from ..data.graded import GradedData, graded_split
from ..data.io import read_image
from ..data.preprocess import prepare_fundus
from ..data.roots import resolve_data_root
from ..detect.model import load_detector
from ..synthesis.base import photo_host
from ..synthesis.synthesizer import MODES, load_synthesizer
from ..synthesis.trainer import SynthTrainConfig, healthy_set
from ..vessels import load_vessels

SETUPS = {
    # data: shipped names of (detector, synthesizer and its bank), see koch_explore.core.weights.SHIPPED
    "real": ("eyepacs", "real"),
    "phantom": ("phantom", "phantom"),
}
SETUPS["embedded"] = SETUPS["real"]  # the shipped real models on the CC0 photo inside scikit-image and phantom hosts


EMBEDDED_HOSTS = 12
"""Hosts of the embedded setting: the CC0 photo and 11 grade-0 phantoms, so a Koch test without any dataset has
more distinct hosts than the verdict's minimum (:attr:`~koch_explore.koch.verdict.VerdictRule.min_hosts`, 8)."""
EMBEDDED_PHANTOM_SEED = 7_000_000
"""The embedded phantom hosts' first seed: apart from the phantom trainer's hosts (2,000,000 on), bank and
evaluation eyes (3,000,000 and 4,000,000 on), 03_culture's eyes (5,000,000 on) and the graded phantoms
(:func:`~koch_explore.data.phantom.phantom_seed`), so no host shares its anatomy with an eye a lesion came from."""


def embedded_hosts(size: int = 256, count: int = EMBEDDED_HOSTS, trees: bool = True) -> list[dict]:
    """Healthy hosts that need no data: first ``skimage.data.retina()`` (CC0, inside the wheel), prepared to
    ``size``, its tree from the shipped vessel segmenter ("skimage-retina"); then ``count - 1`` grade-0
    phantoms with their exact vessel trees ("phantom-host-<k>"). One photo reused is one observation: the
    phantoms make the embedded Koch test's verdict reachable. The shipped EyePACS detector grades phantoms
    (its referable AUC on graded phantoms is in docs/findings/koch-test.md#embedded), so the embedded
    competence is measured on phantoms (:func:`hosts_population`). ``trees`` False leaves out the photo's tree
    (local mode never reads one; segmenting it is most of the ~10 s this takes on one core)."""
    if count < 1:
        raise ValueError(f"host count must be >= 1, got {count}")
    # fresh arrays per call (a caller may draw on a host), built once per process
    return [{k: v.copy() if isinstance(v, np.ndarray) else v for k, v in h.items()} for h in _built_hosts(size, count, trees)]


@functools.lru_cache(maxsize=4)
def _built_hosts(size: int, count: int, trees: bool) -> tuple[dict, ...]:
    from ..data.phantom import generate_phantom

    img, fov = retina_photo(size)
    out = [{"image": img, "fov": fov, "name": "skimage-retina"}]
    if trees:
        out[0]["vessels"] = load_vessels().segment(img, fov)[1].astype(np.float32)
    for k in range(count - 1):
        ph = generate_phantom(EMBEDDED_PHANTOM_SEED + k, size=size, grade=0)
        out.append({"image": np.clip(ph.image, 0, 1).astype(np.float32), "vessels": ph.vessels.astype(np.float32),
                    "fov": ph.fov.astype(bool), "name": f"phantom-host-{k}"})
    return tuple(out)


UNSEEN_HOSTS = {"eyepacs-val": "EyePACS", "aptos-val": "APTOS2019"}
"""Held-out host sets (see :data:`HOSTS`) -> the graded dataset whose validation split they come from."""
HOSTS = ("trees", *UNSEEN_HOSTS, "embedded")
"""Healthy hosts by name: "trees", the 68 DRIVE + CHASE_DB1 photos with manual trees (the shipped whole-fundus
synthesizer's own training hosts); "eyepacs-val" / "aptos-val", grade-0 photos from the detector's held-out
validation split (EyePACS: other patients; APTOS: other images and cameras), which no shipped model trained on,
their trees from the shipped vessel segmenter; "embedded", ``skimage.data.retina()`` and 11 grade-0 phantoms
(:func:`embedded_hosts`). Any folder of a user's
healthy photos works too (:func:`folder_hosts`)."""


def folder_hosts(folder, size: int = 256, count: int = 68, seed: int = 0, progress: bool = False, trees: bool = True) -> list[dict]:
    """Up to ``count`` of the user's healthy photos under ``folder`` (recursive; drawn with ``seed`` when
    there are more; a single photo file works too), prepared to ``size``, their trees from the shipped
    vessel segmenter (``trees`` False: none)."""
    from tqdm.auto import tqdm

    from ..core.shards import image_paths

    paths = image_paths([folder])
    if not paths:
        raise ValueError(f"{folder}: no photo (.jpg, .png, .tif, ...) in this folder")
    if count < 1:
        raise ValueError(f"host count must be >= 1, got {count}")
    if len(paths) > count:
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), size=count, replace=False))]
    segmenter = load_vessels() if trees else None
    out = []
    for p in tqdm(paths, desc="hosts", disable=not progress):
        img, fov = prepare_fundus(read_image(p), size, path=p)
        out.append(photo_host(img, fov, str(p), segmenter, trees=trees))
    return out


def unseen_hosts(source: str, root=None, size: int = 256, count: int = 68, seed: int = 0, progress: bool = False,
                 trees: bool = True) -> list[dict]:
    """``count`` healthy hosts that no shipped model trained on: grade-0 photos of the validation split
    the detector was evaluated on (``source`` "eyepacs-val" or "aptos-val", the split of
    :func:`~koch_explore.data.graded.load_graded`), drawn with ``seed``, prepared to ``size``, their
    trees from the shipped vessel segmenter (as for the embedded photo: no manual tree exists; ``trees``
    False: none, for local mode)."""
    from tqdm.auto import tqdm

    if source not in UNSEEN_HOSTS:
        raise ValueError(f"hosts {source!r}: one of {', '.join(HOSTS)}")
    if count < 1:
        raise ValueError(f"host count must be >= 1, got {count}")
    dataset = UNSEEN_HOSTS[source]
    items, _, val = graded_split(dataset, GradedData(root=root))
    by_name = {it.name: it for it in items}
    healthy = [n for n in val if by_name[n].grade == 0]
    if not healthy:
        raise ValueError(f"{dataset}: no grade-0 photo in the validation split")
    pick = sorted(np.random.default_rng(seed).choice(len(healthy), size=min(count, len(healthy)), replace=False))
    segmenter, out = (load_vessels() if trees else None), []
    for i in tqdm(pick, desc=f"{source} hosts", disable=not progress):
        it = by_name[healthy[i]]
        img, fov = prepare_fundus(read_image(it.path), size, path=it.path)
        out.append(photo_host(img, fov, f"{source}/{it.name}", segmenter, trees=trees))
    return out


def resolve_data(data: str, root=None) -> str:
    """"auto" -> "real" when DRIVE and CHASE_DB1 are found under the data root, else "embedded"
    (the shipped real models on ``skimage.data.retina()``)."""
    if data != "auto":
        if data not in SETUPS:
            raise ValueError(f"data {data!r}: 'auto', 'real', 'embedded' or 'phantom'")
        return data
    r = resolve_data_root(root)
    return "real" if r is not None and (Path(r) / "DRIVE").is_dir() and (Path(r) / "CHASE_DB1").is_dir() else "embedded"


def shipped_models(data: str, detector=None, weights=None, bank=None, device="cpu", mode: str = "whole"):
    """(detector, synthesizer, bank) shipped for ``data`` ("real", "embedded" or "phantom") and synthesis
    ``mode`` ("whole" or "local", see :data:`~koch_explore.synthesis.synthesizer.MODES`); each of
    ``detector`` / ``weights`` / ``bank`` (a shipped name or a user's file) overrides the shipped one.
    ``detector`` may also be a loaded model (any grader, e.g. :func:`~koch_explore.detect.adapter.adapt`
    of the user's own): the lesions are still the bank's, cultured with the o_O detector, and the
    audited model re-isolates and grades them."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
    if mode == "local" and data == "phantom" and weights is None:
        raise ValueError("local mode grows EyePACS lesions in real photos: it is shipped for --data real or embedded, "
                         "not phantom (give --synthesizer to use your own)")
    d_name, s_name = SETUPS[data]
    if mode == "local" and data != "phantom":
        s_name = MODES["local"]
    synth = load_synthesizer(weights or s_name, device)
    if detector is not None and not isinstance(detector, (str, os.PathLike)):
        return detector.to(device), synth, load_bank(bank or s_name)
    det = load_detector(detector or d_name, device)
    return det, synth, load_bank(bank or s_name, detector=det)


def default_setup(data: str = "auto", root=None, detector=None, weights=None, bank=None, device="cpu",
                  hosts: str = "trees", host_count: int = 68, mode: str = "whole"):
    """(detector, synthesizer, bank, hosts, data): :func:`shipped_models` plus the healthy hosts
    (DRIVE + CHASE_DB1 for "real", grade-0 phantoms for "phantom", :func:`embedded_hosts` for "embedded") at the
    synthesizer's size. ``hosts`` (see :data:`HOSTS`): "eyepacs-val" or "aptos-val" (real data) swaps the
    trees for ``host_count`` held-out healthy photos that no shipped model trained on (:func:`unseen_hosts`);
    "embedded" the CC0 photo and 11 phantoms; a folder, the user's own healthy photos (:func:`folder_hosts`). ``mode``:
    "whole" draws each fundus around the host's tree, "local" grows the lesions inside the host's photo."""
    if hosts not in HOSTS and not Path(hosts).exists():
        raise ValueError(f"hosts {hosts!r}: one of {', '.join(HOSTS)}, or a folder (or file) of healthy photos")
    data = resolve_data(data, root)
    if hosts in UNSEEN_HOSTS and data != "real":
        raise ValueError(f"hosts {hosts!r} are real photos: they need --data real (got {data!r})")
    det, synth, descriptors = shipped_models(data, detector, weights, bank, device, mode)
    # without data the trees are not there: the embedded hosts (skimage's photo, grade-0 phantoms) stand in
    host_set = healthy_hosts(data, "embedded" if data == "embedded" and hosts == "trees" else hosts, root, synth.size, host_count,
                             trees=synth.mode != "local")
    return det, synth, descriptors, host_set, data


POPULATIONS = ("phantom", "eyepacs", "aptos")
"""Graded populations a model's competence is measured on (:func:`~koch_explore.koch.verdict.population_competence`)."""


def hosts_population(data: str, hosts: str, root=None) -> str | None:
    """The graded population the hosts of a data setting come from, where the kit has graded photos of it:
    "phantom" for phantom hosts, and for the embedded hosts (11 of their 12 are grade-0 phantoms; the one photo
    cannot be graded against anything without data); "aptos" for aptos-val; "eyepacs" for the real trees and
    eyepacs-val (DRIVE, CHASE_DB1 and EyePACS are all colour fundus photos graded on the same scale); None
    otherwise (a user's folder: its population is not known)."""
    if data in ("phantom", "embedded") or hosts == "embedded":
        return "phantom"
    if hosts == "aptos-val":
        return "aptos"
    if hosts in ("trees", "eyepacs-val"):
        base = resolve_data_root(root)
        return "eyepacs" if base is not None and (base / "EyePACS").is_dir() else None
    return None


def healthy_hosts(data: str, hosts: str, root=None, size: int = 256, count: int = 68, trees: bool = True) -> list[dict]:
    """Healthy hosts by name (``koch-test --hosts``, ``synth eval --hosts``; ``trees`` False skips segmenting
    the photos' vessel trees, which local mode never reads): "trees" (DRIVE + CHASE_DB1 for real data, grade-0 phantoms for
    phantom data), "eyepacs-val" / "aptos-val", "embedded", or a folder (see :func:`default_setup`)."""
    if hosts == "trees":
        return healthy_set(SynthTrainConfig(data=data, root=root), size)
    if hosts == "embedded":
        return embedded_hosts(size, trees=trees)
    if hosts in UNSEEN_HOSTS:
        return unseen_hosts(hosts, root, size, count, progress=True, trees=trees)
    if Path(hosts).exists():
        return folder_hosts(hosts, size, count, progress=True, trees=trees)
    raise ValueError(f"hosts {hosts!r}: one of {', '.join(HOSTS)}, or a folder (or file) of healthy photos")
