"""Postulate 4: the Koch test and its report on the embedded setup: the shipped EyePACS detector,
DRIVE/CHASE synthesizer and bank, on ``skimage.data.retina()`` as the healthy host (no data needed)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from koch_explore.koch.hosts import default_setup
from koch_explore.koch.test import KochConfig, koch_test

KEYS = ["hit_rate", "spurious_rate", "spearman_severity_count", "spearman_ci", "vessel_dice", "n_trials"]


@pytest.fixture(scope="module")
def embedded_setup():
    try:
        det, synth, bank, hosts, data = default_setup("embedded")
    except FileNotFoundError as exc:  # the shipped generator is part of the package
        pytest.fail(str(exc))
    return det, synth, bank, hosts


@pytest.fixture(scope="module")
def report(embedded_setup):
    det, synth, bank, hosts = embedded_setup
    return koch_test(det, synth, bank, hosts, config=KochConfig(trials=6, seed=1), progress=False)


class NoiseSynthesizer:
    """A broken synthesizer: ignores tree and lesions, returns coloured noise inside the FOV."""

    def __init__(self, size):
        self.size = size

    def synthesize_host(self, host, layout=None, seed=0):
        rng = np.random.default_rng(seed + 7)
        img = rng.uniform(0.1, 0.6, size=(*np.shape(host["fov"]), 3)).astype(np.float32)
        return img * np.asarray(host["fov"], bool)[..., None]


def test_report_keys_and_ranges(report):
    j = report.to_json()
    for k in KEYS:
        assert k in j, k
    assert j["n_trials"] == 6
    assert 0.0 <= j["hit_rate"] <= 1.0 and 0.0 <= j["spurious_rate"] <= 1.0
    assert j["spearman_ci"][0] <= j["spearman_severity_count"] <= j["spearman_ci"][1] + 1e-9
    assert 0.0 <= j["vessel_dice"] <= 1.0
    assert list(j["severity_by_count"]) == ["0", "1", "2", "4", "8", "16"]
    placed = sum(v["placed"] for v in j["hit_rate_by_type"].values())
    assert placed == 6 * (1 + 2 + 4 + 8 + 16)  # every dose given as stated
    # the embedded hosts, cycled: skimage's photo, then grade-0 phantoms
    assert j["placed_counts"] == [[0, 1, 2, 4, 8, 16]] * 6 and j["hosts"] == ["skimage-retina"] + [f"phantom-host-{k}" for k in range(5)]
    assert j["hit_above_chance"] == pytest.approx(j["hit_rate"] - j["chance_hit_rate"])
    # a point on a component is inside that component's box: the box-free rates cannot be higher
    assert 0.0 <= j["mask_hit_rate"] <= j["hit_rate"] and 0.0 <= j["mask_chance_hit_rate"] <= j["chance_hit_rate"]
    assert 0.0 <= j["placement_auc_ci"][0] <= j["placement_auc"] <= j["placement_auc_ci"][1] <= 1.0
    assert list(j["placement_auc_by_count"]) == ["1", "2", "4", "8", "16"]
    assert all(0.0 <= v <= 1.0 for v in j["placement_auc_by_count"].values())
    # The ring and strength breakdowns partition the same placements, and recombine to the hit rate.
    for table in (j["hit_rate_by_region"], j["hit_rate_by_strength"]):
        assert sum(v["placed"] for v in table.values()) == placed
        assert sum(v["found"] for v in table.values()) / placed == pytest.approx(j["hit_rate"])
    assert list(j["hit_rate_by_region"]) == ["centre", "middle", "rim"]
    assert all(0.0 <= v["chance"] <= 1.0 for v in j["hit_rate_by_region"].values())
    ranges = [v["score_range"] for v in j["hit_rate_by_strength"].values()]
    assert list(j["hit_rate_by_strength"]) == ["weak", "medium", "strong"]
    assert all(lo <= hi for lo, hi in ranges) and ranges[0][1] == ranges[1][0] and ranges[1][1] == ranges[2][0]
    json.dumps(j)  # plain JSON


def test_fov_rings_and_strength_terciles():
    from koch_explore.koch.test import (
        _fov_geometry,
        _region,
        _strength,
        _strength_edges,
    )

    yy, xx = np.mgrid[:256, :256]
    fov = (xx - 140) ** 2 + (yy - 120) ** 2 < 100**2  # an off-centre disc of radius 100
    geom = _fov_geometry(fov)
    assert geom[0] == pytest.approx(140, abs=0.5) and geom[1] == pytest.approx(120, abs=0.5)
    assert geom[2] == pytest.approx(100, rel=0.02)
    assert [_region(p, geom) for p in [(140, 120), (140, 100), (140, 170), (140, 210), (45, 120)]] == \
        ["centre", "centre", "middle", "rim", "rim"]

    class D:
        def __init__(self, score):
            self.score = score

    bank = [D(s) for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, float("nan"))]
    edges = _strength_edges(bank)
    assert [_strength(s, edges) for s in (0.1, 0.25, 0.35, 0.6)] == ["weak", "weak", "medium", "strong"]  # cuts 0.267, 0.433
    assert _strength(float("nan"), edges) is None
    assert _strength_edges([D(float("nan"))] * 5) is None


def test_placement_auc_ranks_the_map_at_placements_against_decoys():
    from koch_explore.koch.scoring import ImageScore, Tally, values_at

    m = np.zeros((10, 20), np.float32)
    m[2, 15] = 0.9  # (x=15, y=2)
    assert values_at(m, [(15.2, 1.8), (0, 0), (30, -5)]) == [pytest.approx(0.9), 0.0, 0.0]  # clipped to the map

    def image(pos, neg, hits=(), decoy_hits=()):
        return ImageScore(len(pos), [None] * len(pos), [], list(hits) or [False] * len(pos), [False] * len(pos), [(0, 0)] * len(neg),
                          list(decoy_hits) or [False] * len(neg), [False] * len(neg), pos, neg, [])

    tally = Tally()
    tally.add({2: image([0.9, 0.8], [0.2, 0.3], hits=(True, True), decoy_hits=(True, False))})
    tally.add({1: image([0.1], [0.1])})
    # 2 positives above all 3 negatives, 0.1 ties with 0.1 and is below 0.2 and 0.3: (6 + 0.5) / 9
    assert tally.placement_auc() == pytest.approx(6.5 / 9)
    assert tally.placement_auc([1, 1]) == pytest.approx(0.5)  # a bootstrap row: trial 1 twice
    assert tally.placement_auc(count=2) == pytest.approx(1.0)
    assert tally.hit_rate() == pytest.approx(2 / 3) and tally.chance_hit_rate() == pytest.approx(1 / 3)
    assert tally.hit_minus_chance([0]) == pytest.approx(0.5) and tally.chance_hit_rate(count=1) == 0.0
    empty = Tally()
    empty.add({1: image([], [0.1])})
    assert np.isnan(empty.placement_auc())


def test_the_bootstrap_resamples_hosts_not_trials():
    """Eight trials on one photo are one observation: every resample is that photo's eight trials."""
    from koch_explore.koch.scoring import host_resamples

    rng = np.random.default_rng(0)
    one = host_resamples(["retina"] * 8, 50, rng)
    assert all(sorted(r) == list(range(8)) for r in one)
    two = host_resamples(["a", "b", "a", "b"], 200, rng)
    assert all(len(r) == 4 and sorted(set(r)) in ([0, 2], [1, 3], [0, 1, 2, 3]) for r in two)  # a host brings all its trials
    assert {tuple(sorted(r)) for r in two} >= {(0, 0, 2, 2), (1, 1, 3, 3), (0, 1, 2, 3)}


def test_placed_lesions_are_refound_above_chance_and_raise_severity(report):
    # The shipped chain on the real CC0 host must pass its own Koch test clearly above chance.
    assert report.hit_above_chance > 0.15
    assert report.spearman_severity_count > 0.6
    assert report.severity_by_count["16"] > report.severity_by_count["0"] + 0.1


def test_another_seed_gives_another_draw(embedded_setup, report):
    # the same seed giving the same report, byte for byte: tests/test_determinism.py
    det, synth, bank, hosts = embedded_setup
    # two trials are enough to see another draw: the same two hosts, other places and noise
    other = koch_test(det, synth, bank, hosts, config=KochConfig(trials=2, seed=2), progress=False, vessel_model=False)
    assert other.hosts == report.hosts[:2] and other.severity != report.severity[:2]


def test_transplant_gives_the_detector_the_source_lesion(embedded_setup):
    import cv2
    import torch

    from koch_explore.koch.test import dose_layouts, transplant

    det, synth, bank, hosts = embedded_setup
    host = hosts[0]
    layout = dose_layouts(bank, [4], host["fov"], seed=5, nested=True)[4]
    base = synth.synthesize(host["vessels"], host["fov"], None, seed=5)
    out = transplant(det, base, layout)
    assert out.shape == base.shape and out.dtype == np.float32
    touched = np.zeros(base.shape[:2], bool)
    for d in layout:
        x0, y0, x1, y1 = d.bbox
        touched[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True
    assert np.array_equal(out[~touched], base[~touched])  # nothing moves outside the placements
    with torch.no_grad():
        seen = det.norm(torch.from_numpy(out).permute(2, 0, 1)[None])[0].numpy()
        before = det.norm(torch.from_numpy(base).permute(2, 0, 1)[None])[0].numpy()
    for d in layout:
        x0, y0, x1, y1 = d.bbox
        core = cv2.erode(d.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if core.sum() < 8:
            continue
        want, got, old = d.norm_patch[:, core], seen[:, y0:y1, x0:x1][:, core], before[:, y0:y1, x0:x1][:, core]
        # conv1 now sees the source eye's lesion there (up to the host's slightly moved local
        # average, which weighs most on faint patches: 0.89 for one spanning -0.7..1.2), not the
        # healthy synthesis it saw before
        assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.85
        assert np.abs(got - want).mean() < 0.5 * np.abs(old - want).mean()
    with pytest.raises(ValueError, match="norm_patch"):
        transplant(det, base, [replace(d, norm_patch=None) for d in layout])


def test_transplant_control_is_reported_and_leaves_the_main_figures_alone(embedded_setup, report):
    det, synth, bank, hosts = embedded_setup
    j = report.to_json()
    assert 0.0 <= j["control_hit_rate"] <= 1.0 and 0.0 <= j["control_chance_hit_rate"] <= 1.0
    assert j["control_hit_rate_ci"][0] <= j["control_hit_rate"] <= j["control_hit_rate_ci"][1]
    assert list(j["control_hit_rate_by_count"]) == list(j["control_severity_by_count"]) == ["1", "2", "4", "8", "16"]
    # real lesions pasted into the healthy synthesis raise its severity too
    assert j["control_severity_by_count"]["16"] > j["severity_by_count"]["0"]
    bare = koch_test(det, synth, bank, hosts, config=KochConfig(trials=6, seed=1, control=False), progress=False)
    b = bare.to_json()
    assert b["control_hit_rate"] is None and b["control_hit_rate_by_count"] is None
    for k in ("hit_rate", "chance_hit_rate", "spurious_rate", "severity", "hit_rate_by_count"):
        assert b[k] == j[k], k


def test_nested_layouts_only_add_lesions(embedded_setup):
    from koch_explore.koch.test import COUNTS, dose_layouts

    _, _, bank, hosts = embedded_setup
    fov = hosts[0]["fov"]
    nested = dose_layouts(bank, COUNTS, fov, seed=3, nested=True)
    assert nested[0] is None
    boxes = {n: [d.bbox for d in nested[n]] for n in COUNTS if n}
    for a, b in zip(COUNTS[1:], COUNTS[2:]):
        assert boxes[b][: len(boxes[a])] == boxes[a], (a, b)  # the larger dose contains the smaller
    indep = dose_layouts(bank, COUNTS, fov, seed=3, nested=False)
    assert [d.bbox for d in indep[4]] != boxes[16][:4]


def test_broken_synthesizer_gives_low_hit_rate(embedded_setup, report):
    det, synth, bank, hosts = embedded_setup
    broken = koch_test(det, NoiseSynthesizer(synth.cfg.size), bank, hosts, config=KochConfig(trials=6, seed=1),
                            progress=False, vessel_model=False)
    # Noise gives big boxes that contain placements and decoys alike: the raw hit rate stays, the
    # part above chance and the severity rise vanish.
    assert broken.hit_above_chance < 0.1 and broken.hit_above_chance < report.hit_above_chance - 0.15
    # ... and the map no longer ranks placements above random places.
    assert abs(broken.placement_auc - 0.5) < 0.1 and report.placement_auc > broken.placement_auc + 0.1
    assert broken.mask_hit_rate - broken.mask_chance_hit_rate < 0.1
    assert report.mask_hit_rate - report.mask_chance_hit_rate > broken.mask_hit_rate - broken.mask_chance_hit_rate + 0.15
    assert broken.spearman_severity_count < 0.4


def test_report_html_is_self_contained(report, tmp_path):
    from koch_explore.koch.report import write_report

    path = write_report(report, tmp_path / "r", title="phantom")
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 4 and "hit rate" in page and "<script" not in page
    assert "on-component hit rate" in page
    assert json.loads((tmp_path / "r" / "report.json").read_text())["n_trials"] == 6


def test_koch_test_cli_json(capsys):
    from koch_explore.cli import main

    assert main(["koch-test", "--data", "phantom", "--trials", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(k in out for k in KEYS) and out["data"] == "phantom" and out["n_trials"] == 2
    assert out["hit_rate_by_type"]  # the phantom bank is typed
    # re-isolated by the default rule and its cut, whatever rule cut the bank (the shipped banks: the global one)
    assert out["config"]["rule"] == "peaks" and out["config"]["threshold"] == 0.3 and out["config"]["nested"] is True
    assert out["control_hit_rate"] is not None and out["config"]["control"] is True  # the shipped bank has norm patches
    assert main(["koch-test", "--data", "phantom", "--trials", "1", "--threshold", "otsu", "--independent-layouts",
                 "--no-control", "--json"]) == 0
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert other["config"]["threshold"] == "otsu" and other["config"]["nested"] is False
    assert other["control_hit_rate"] is None and other["config"]["control"] is False
    with pytest.raises(SystemExit):
        main(["koch-test", "--data", "phantom", "--threshold", "1.5"])
    assert "threshold" in capsys.readouterr().err


def test_koch_test_cli_missing_weights(tmp_path, capsys):
    from koch_explore.cli import main

    assert main(["koch-test", "--data", "phantom", "--synthesizer", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors" in capsys.readouterr().err
    assert main(["koch-test", "--data", "phantom", "--weights", str(tmp_path / "other.safetensors")]) == 2
    assert "other.safetensors" in capsys.readouterr().err


def test_reisolates_from_the_layer_the_bank_was_cultured_from(embedded_setup, report):
    from koch_explore.culture.bank import DescriptorBank

    det, synth, bank, hosts = embedded_setup
    assert report.config["method"] == "guided-gradcam" and report.config["start"] == "conv8"  # the shipped bank's
    quick = dict(trials=1, seed=0, control=False)
    # Another method than the bank's does not inherit the bank's layer.
    other = koch_test(det, synth, bank, hosts, config=KochConfig(method="deconvnet", **quick), progress=False, vessel_model=False)
    assert other.config["method"] == "deconvnet" and other.config["start"] == "dense2"
    dec = DescriptorBank(list(bank), detector_hash=bank.detector_hash, info={**bank.info, "method": "deconvnet", "start": "dense1"})
    assert koch_test(det, synth, dec, hosts, config=KochConfig(**quick), progress=False, vessel_model=False).config["start"] == "dense1"
    # The layer changes the maps, so it changes what is re-isolated.
    own = koch_test(det, synth, bank, hosts, config=KochConfig(**quick), progress=False, vessel_model=False)
    coarse = koch_test(det, synth, bank, hosts, config=KochConfig(start="conv11", **quick), progress=False, vessel_model=False)
    assert coarse.config["start"] == "conv11" and coarse.components_per_image != own.components_per_image


@pytest.mark.real_data
def test_unseen_hosts_are_healthy_held_out_photos_with_segmented_trees():
    from koch_explore.data.datasets import index_graded_images, patient_split
    from koch_explore.data.roots import resolve_data_root
    from koch_explore.koch.hosts import unseen_hosts

    root = resolve_data_root()
    if root is None or not (root / "EyePACS").is_dir():
        pytest.skip("EyePACS not available (set KOCH_DATA)")
    hosts = unseen_hosts("eyepacs-val", root, size=256, count=3, seed=1)
    assert len(hosts) == 3 and len({h["name"] for h in hosts}) == 3
    items = index_graded_images(root / "EyePACS" / "images_256", root / "EyePACS" / "trainLabels.csv")
    grades = {it.name: it.grade for it in items}
    train, _ = patient_split(list(grades), 0.15, 0)  # the detector's split: these patients trained it
    train_patients = {n.split("_")[0] for n in train}
    for h in hosts:
        name = h["name"].split("/", 1)[1]
        assert grades[name] == 0 and name.split("_")[0] not in train_patients
        assert h["image"].shape == (256, 256, 3) and h["fov"].dtype == bool and 0.5 < h["fov"].mean() < 0.95
        tree = h["vessels"] > 0.5
        assert 0.03 < tree[h["fov"]].mean() < 0.3 and not tree[~h["fov"]].any()  # a vessel tree, inside the FOV
    assert unseen_hosts("eyepacs-val", root, size=256, count=3, seed=1)[0]["name"] == hosts[0]["name"]  # same seed, same hosts


def test_unseen_hosts_need_real_data_and_a_known_source(capsys):
    from koch_explore.cli import main
    from koch_explore.koch.hosts import unseen_hosts

    with pytest.raises(ValueError, match="hosts 'drive'"):
        unseen_hosts("drive")
    with pytest.raises(ValueError, match="need --data real"):
        default_setup("embedded", hosts="eyepacs-val")
    assert main(["koch-test", "--data", "phantom", "--hosts", "aptos-val", "--trials", "1"]) == 2
    assert "need --data real" in capsys.readouterr().err
