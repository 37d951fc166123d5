"""The localisation measures (koch_explore.evidence.localisation) on hand-computed cases, on Quantus's
formulas written out literally, and with a positive and a negative control on a phantom's real lesion masks."""

import numpy as np
import pytest

from koch_explore.evidence.localisation import (
    LOCALISATION_MEASURES,
    localisation_scores,
    localisation_summary,
)

# A 4 x 4 map and a lesion of 3 pixels (marked *):
#   0.9* 0.1  0.0  0.0
#   0.8* 0.7  0.0  0.0
#   0.2* 0.0  0.0  0.0
#   0.0  0.0  0.0  0.3
MAP = np.array([[0.9, 0.1, 0, 0], [0.8, 0.7, 0, 0], [0.2, 0, 0, 0], [0, 0, 0, 0.3]])
LESION = np.zeros((4, 4), bool)
LESION[0:3, 0] = True


def test_each_measure_on_a_hand_computed_case():
    got = localisation_scores(MAP, LESION, k=1)
    # the maximum 0.9 lies on the lesion
    assert got["pointing_game"] == 1.0
    # mass on the lesion (0.9 + 0.8 + 0.2) over all (3.0)
    assert got["relevance_mass"] == pytest.approx(1.9 / 3.0)
    # K = 3 lesion pixels; the 3 highest are 0.9*, 0.8*, 0.7: two of three on the lesion
    assert got["relevance_rank"] == pytest.approx(2 / 3)
    # k = 1: 0.9*, on the lesion
    assert got["top_k_intersection"] == 1.0
    # AUC: lesion values {0.9, 0.8, 0.2} against 13 others {0.7, 0.3, 0.1, ten zeros}:
    # 0.9 and 0.8 beat all 13; 0.2 beats 11 (ten zeros and 0.1) -> (13 + 13 + 11) / 39
    assert got["pixel_auc"] == pytest.approx(37 / 39)


def test_the_pointing_game_misses_when_the_maximum_is_elsewhere_and_a_tie_on_the_lesion_counts():
    moved = MAP.copy()
    moved[3, 3] = 1.0
    assert localisation_scores(moved, LESION, k=2)["pointing_game"] == 0.0
    tied = moved.copy()
    tied[0, 0] = 1.0  # one of the two maximal pixels lies on the lesion: a hit, as in Quantus
    assert localisation_scores(tied, LESION, k=2)["pointing_game"] == 1.0


def quantus_literal(a, s, k):
    """Quantus 0.6's evaluate_instance bodies, written out (its default normalise_by_max first, whole image)."""
    a = (a / np.abs(a).max()).flatten()
    s = s.flatten().astype(bool)
    idx = np.where(s)[0]
    top_k = np.zeros(a.shape, bool)
    top_k[np.argsort(a, kind="stable")[-k:]] = True
    order = np.argsort(a, kind="stable")[-len(idx):]
    pos, neg = a[s], a[~s]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    return {
        "pointing_game": float(np.any(s[np.argwhere(a == np.max(a))])),
        "relevance_mass": float(np.sum(a[s]) / np.sum(a)),
        "relevance_rank": len(np.intersect1d(idx, order)) / float(len(idx)),
        "top_k_intersection": 1.0 / k * np.sum(np.logical_and(s, top_k)),
        "pixel_auc": float(auc),
    }


@pytest.mark.parametrize("signed", [False, True])
def test_without_a_fov_every_measure_is_quantus(signed):
    rng = np.random.default_rng(3)
    a = rng.random((24, 24)) - (0.3 if signed else 0.0)  # signed: a map with negative values
    s = np.zeros((24, 24), bool)
    s[5:11, 7:15] = True
    a[s] += 0.4
    ours, theirs = localisation_scores(a, s, k=50), quantus_literal(a, s, k=50)
    for m in LOCALISATION_MEASURES:
        assert ours[m] == pytest.approx(theirs[m], abs=1e-12), m


def test_a_fov_keeps_the_black_frame_out():
    # a map positive on the fundus and zero on the frame: counted, the frame's zeros raise the AUC
    yy, xx = np.mgrid[:32, :32]
    fov = (yy - 16) ** 2 + (xx - 16) ** 2 < 14**2
    rng = np.random.default_rng(0)
    a = np.where(fov, rng.random((32, 32)), 0.0)
    s = np.zeros((32, 32), bool)
    s[10:14, 10:14] = True
    inside, whole = localisation_scores(a, s, fov, k=20), localisation_scores(a, s, None, k=20)
    assert abs(inside["pixel_auc"] - 0.5) < 0.15 and whole["pixel_auc"] > inside["pixel_auc"] + 0.1
    with pytest.raises(ValueError, match="larger than the"):
        localisation_scores(a, s, fov, k=10_000)
    assert all(np.isnan(v) for v in localisation_scores(a, np.zeros_like(s), fov).values())


def test_controls_on_a_phantoms_lesion_masks():
    # positive control: a map that is the lesion mask blurred; negative: noise. Real phantom geometry.
    import cv2

    from koch_explore.data.phantom import generate_phantom

    ph = generate_phantom(11, size=256, grade=3)
    lesions = np.any(np.stack([m for m in ph.lesions.values()]), axis=0)
    fov = ph.fov
    good = cv2.GaussianBlur(lesions.astype(np.float32), (0, 0), 2.0)
    noise = np.random.default_rng(0).random(lesions.shape)
    pos = localisation_scores(good, lesions, fov)
    neg = localisation_scores(noise, lesions, fov)
    share = lesions[fov].mean()
    assert pos["pointing_game"] == 1.0 and pos["pixel_auc"] > 0.95 and pos["relevance_rank"] > 0.6
    assert abs(neg["pixel_auc"] - 0.5) < 0.05 and abs(neg["relevance_mass"] - share) < 0.02
    assert neg["top_k_intersection"] < pos["top_k_intersection"]
    summary = localisation_summary([pos, neg, {m: float("nan") for m in LOCALISATION_MEASURES}], n_boot=200)
    assert summary["pixel_auc"]["n"] == 2 and summary["pixel_auc"]["ci"][0] <= summary["pixel_auc"]["mean"] <= summary["pixel_auc"]["ci"][1]
