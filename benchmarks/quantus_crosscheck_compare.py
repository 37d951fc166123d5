"""Compare our localisation measures with Quantus's on the arrays of ``quantus_crosscheck_dump.py``.

Run in a SEPARATE venv holding quantus (it needs opencv-python, which must not sit beside the project's
opencv-python-headless; koch_explore is not imported here):

    python3.11 -m venv /tmp/qenv && /tmp/qenv/bin/pip install quantus
    OMP_NUM_THREADS=1 /tmp/qenv/bin/python benchmarks/quantus_crosscheck_compare.py [DIR]   # default /tmp/qcheck

Each Quantus metric runs with its default options on a_batch = the map (N, 1, H, W), s_batch = the lesion
union (N, 1, H, W), model=None (a_batch is precomputed; localisation metrics never call the model). Prints,
per measure, the largest |ours(fov=None) - Quantus| per method, and how much the FOV moves our measures.
"""

import json
import sys
from pathlib import Path

import numpy as np
import quantus

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/qcheck")
METRICS = {  # our name -> Quantus metric, default options
    "pointing_game": quantus.PointingGame,
    "relevance_mass": quantus.RelevanceMassAccuracy,
    "relevance_rank": quantus.RelevanceRankAccuracy,
    "top_k_intersection": quantus.TopKIntersection,  # k=1000 is its default
    "pixel_auc": quantus.AUC,
}


def quantus_scores(metric, maps, lesions):
    a = maps[:, None].astype(np.float64)  # float64, as ours reads the float32 maps
    s = lesions[:, None].astype(np.float64)
    x = np.zeros_like(a)  # only read for shapes / channel order
    y = np.zeros(len(a), int)
    return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s), np.float64)


def normalise_by_negative_per_image(a):
    """Quantus's normalise_by_negative (functions/normalise_func.py), each image on its own: positive
    values over the image's max, negative ones over |its min|."""
    hi = np.maximum(a.max(axis=(1, 2, 3), keepdims=True), 0)
    lo = np.minimum(a.min(axis=(1, 2, 3), keepdims=True), 0)
    return np.where(a > 0, a / np.where(hi > 0, hi, 1), np.where(a < 0, a / -np.where(lo < 0, lo, -1), 0.0))


def ties_at_cut(a, k):
    """True when the k-th and (k+1)-th largest values tie: the top-k set then depends on tie-breaking."""
    v = np.sort(a.ravel())[::-1]
    return k < v.size and v[k - 1] == v[k]


def main():
    data, ours = np.load(DIR / "maps.npz"), json.loads((DIR / "ours.json").read_text())
    lesions = data["lesions"]
    print(f"quantus {quantus.__version__}; {ours['source']}: {len(lesions)} images {lesions.shape[1:]}")
    metrics = {m: cls(disable_warnings=True, display_progressbar=False) for m, cls in METRICS.items()}
    for m, q in metrics.items():
        extra = {k: getattr(q, k) for k in ("k", "weighted", "concept_influence") if hasattr(q, k)}
        print(f"  {type(q).__name__}: abs={q.abs} normalise={q.normalise} "
              f"normalise_func={getattr(q.normalise_func, '__name__', q.normalise_func)} {extra}")
    # Quantus <= 0.2's default normalisation (normalise_by_negative, per image), for contrast on the signed map: it
    # changes the relevance mass of a map with negative values. Quantus 0.6.0's own normalise_by_negative raises
    # under numpy 2.4 (np.divide(where=) without out= warns, and its warnings.filterwarnings("error") turns that
    # into an exception), so its formula is restated here.
    q_neg = quantus.RelevanceMassAccuracy(normalise_func=normalise_by_negative_per_image, disable_warnings=True)

    worst, fov_effect, report = {m: 0.0 for m in METRICS}, {}, {"quantus": quantus.__version__, "methods": {}}
    for method, rows in ours["methods"].items():
        maps = data[f"maps_{method}"]
        print(f"\n{method}: min {maps.min():.3g}, max {maps.max():.3g}, "
              f"{(maps < 0).mean():.1%} negative pixels, {(maps == 0).mean():.1%} zero pixels")
        report["methods"][method] = {}
        for m, q in metrics.items():
            theirs = quantus_scores(q, maps, lesions)
            mine = np.array([r[m] for r in rows["nofov"]])
            with_fov = np.array([r[m] for r in rows["fov"]])
            diff = np.abs(mine - theirs)
            worst[m] = max(worst[m], float(np.nanmax(diff)))
            fov_effect.setdefault(m, {})[method] = (float(np.mean(with_fov - mine)), float(np.max(np.abs(with_fov - mine))))
            note = ""
            if m in ("relevance_rank", "top_k_intersection") and diff.max() > 0:
                ks = [int(l.sum()) if m == "relevance_rank" else 1000 for l in lesions]
                tied = [ties_at_cut(a, k) for a, k in zip(maps, ks)]
                note = f"  (differing images: {int((diff > 0).sum())}, all with ties at the cut: " \
                       f"{all(t for t, d in zip(tied, diff) if d > 0)})"
            if m == "relevance_mass":
                neg = quantus_scores(q_neg, maps, lesions)
                note = f"  (vs Quantus with per-image normalise_by_negative: max |diff| {np.nanmax(np.abs(mine - neg)):.2e})"
            print(f"  {m:20s} ours {np.mean(mine):.4f}  quantus {np.mean(theirs):.4f}  max|diff| {diff.max():.2e}{note}")
            report["methods"][method][m] = {"ours": mine.tolist(), "quantus": theirs.tolist(), "ours_fov": with_fov.tolist()}

    print("\nlargest |ours(fov=None) - Quantus| over all images and methods:")
    for m, w in worst.items():
        print(f"  {m:20s} {w:.3e}")
    print("\nFOV effect, ours(fov) - ours(fov=None): mean over images / max |.| per method")
    for m, per in fov_effect.items():
        print(f"  {m:20s} " + "  ".join(f"{meth} {mu:+.4f}/{mx:.4f}" for meth, (mu, mx) in per.items()))
    (DIR / "compare.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
