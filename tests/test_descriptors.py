"""Isolation -> descriptors: segmentation of planted maps, the descriptor bank and its files,
placement (relocate / rotate / scale / count), rendering, the pointing game, and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from koch_explore.cli import main
from koch_explore.core.stats import roc_auc
from koch_explore.culture.bank import BankFormatError, BankMismatchError, DescriptorBank
from koch_explore.culture.cut import segment
from koch_explore.culture.descriptor import Descriptor
from koch_explore.culture.evaluate import (
    Lesion,
    assign_types,
    lesion_instances,
    pointing_game,
)
from koch_explore.culture.isolation import default_feature_layers, isolate
from koch_explore.data.io import write_image
from koch_explore.data.phantom.generate import generate_phantom
from koch_explore.detect.model import Detector, DetectorConfig
from koch_explore.evidence.base import evidence_maps
from koch_explore.evidence.deconvnet import ActivationNetwork

SMALL = DetectorConfig(n=8, input_size=128, dense_units=64)
S = 128


def blobs(specs, size=S) -> np.ndarray:
    """Sum of Gaussian blobs (cx, cy, sigma, amplitude) on a size x size map."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    return sum(a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) for cx, cy, s, a in specs).astype(np.float32)


def fundus_batch(b: int, s: int = S, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(b, 3, s, s, generator=g)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    return x * (((yy - s / 2) ** 2 + (xx - s / 2) ** 2) < (0.45 * s) ** 2).float()


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return Detector(SMALL).eval()


@pytest.fixture(scope="module")
def cut(detector):
    """Descriptors cut by the small detector from two fundus-like images (deconvnet, dense2)."""
    x = fundus_batch(2)
    with ActivationNetwork(detector) as net:
        p = net.project(x, "dense2")
    # the paper's cut and no severity floor: an untrained detector's components are what these tests read
    return isolate(p, images=x, detector=detector, image_ids=["a", "b"], rule="global", min_share=0.0)


def make_descriptor(bbox, image=S, channels=(4, 6), seed=0, **kw) -> Descriptor:
    """A filled-rectangle descriptor with random feature/activation patches on the 1/2 and 1/8 grids."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = bbox
    sizes = {"conv2": (image // 2, image // 2), "conv5": (image // 8, image // 8)}
    d = Descriptor(bbox=bbox, centroid=((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2), area=(x1 - x0) * (y1 - y0),
                   mask=np.ones((y1 - y0, x1 - x0), bool), evidence=rng.random((y1 - y0, x1 - x0), dtype=np.float32),
                   image_size=(image, image), layer_sizes=sizes, **kw)
    feats = {}
    for (n, _), c in zip(sizes.items(), channels):
        lx0, ly0, lx1, ly1 = d.layer_box(n)
        feats[n] = rng.random((c, ly1 - ly0, lx1 - lx0), dtype=np.float32)
    from dataclasses import replace

    return replace(d, features=feats, activations={n: -f for n, f in feats.items()}).with_grams()


# ---------------------------------------------------------------------------------------------
# Segmentation on planted maps
# ---------------------------------------------------------------------------------------------

CENTRES = [(30, 40), (90, 30), (70, 95)]


def test_planted_map_gives_three_components_with_the_right_boxes():
    seg = segment(blobs([(cx, cy, 4, 1.0) for cx, cy in CENTRES]), threshold=0.5, rule="global")
    assert len(seg.boxes) == 3
    # Blur sigma 2.5 at 128 px: each blob becomes a Gaussian of sigma sqrt(4^2 + 2.5^2) whose
    # half-maximum radius is sigma * sqrt(2 ln 2).
    r = math.hypot(4, 2.5) * math.sqrt(2 * math.log(2))
    for (cx, cy), box, cen in zip(sorted(CENTRES, key=lambda c: (c[1], c[0])), sorted(seg.boxes, key=lambda b: (b[1], b[0])), sorted(seg.centroids, key=lambda c: (c[1], c[0]))):
        assert abs((box[0] + box[2] - 1) / 2 - cx) <= 0.5 and abs((box[1] + box[3] - 1) / 2 - cy) <= 0.5
        assert abs((box[2] - box[0]) - 2 * r) <= 2 and abs((box[3] - box[1]) - 2 * r) <= 2
        assert abs(cen[0] - cx) < 0.5 and abs(cen[1] - cy) < 0.5
    descs = isolate(blobs([(cx, cy, 4, 1.0) for cx, cy in CENTRES]), threshold=0.5, rule="global")[0]
    assert sorted(d.bbox for d in descs) == sorted(seg.boxes)
    for d in descs:
        assert d.mask.shape == (d.bbox[3] - d.bbox[1], d.bbox[2] - d.bbox[0]) and d.mask.sum() == d.area
        assert not d.features and not d.activations and math.isnan(d.severity_share)
        assert 0.5 < d.score <= 1.0


def test_otsu_and_fixed_thresholds():
    from skimage.filters import threshold_otsu

    m = blobs([(30, 40, 4, 1.0), (90, 30, 4, 0.6), (70, 95, 4, 0.25)])
    assert len(segment(m, threshold=0.5, rule="global").boxes) == 2
    assert len(segment(m, threshold=0.2, rule="global").boxes) == 3
    otsu = segment(m, threshold="otsu", rule="global")
    ref = threshold_otsu(np.round(otsu.blurred * 255).astype(np.uint8)) / 255
    assert abs(otsu.threshold - ref) <= 1.5 / 255
    assert not (otsu.mask & (otsu.blurred <= otsu.threshold)).any() and 0 < otsu.threshold < 0.5
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        segment(m, threshold=1.5, rule="global")
    with pytest.raises(ValueError, match="otsu"):
        segment(m, threshold="triangle", rule="global")


def test_min_area_drops_small_components_and_fov_limits_the_search():
    m = blobs([(30, 40, 5, 1.0), (90, 90, 0.7, 2.0)])
    both = segment(m, threshold=0.3, min_area=1, blur_sigma=1.0, rule="global")
    assert len(both.boxes) == 2
    small = min(both.areas)
    big = segment(m, threshold=0.3, min_area=small + 1, blur_sigma=1.0, rule="global")
    assert len(big.boxes) == 1 and big.areas[0] == max(both.areas)
    assert big.labels.max() == 1 and big.mask.sum() == big.areas[0]
    fov = np.zeros((S, S), bool)
    fov[60:, 60:] = True  # only the small blob is inside
    inside = segment(m, fov=fov, threshold=0.3, min_area=1, blur_sigma=1.0, rule="global")
    assert len(inside.boxes) == 1 and inside.boxes[0][0] >= 60 and not inside.blurred[~fov].any()


def test_evidence_methods_share_one_entry_point(detector):
    x = fundus_batch(2)
    for method in ("deconvnet", "gradient", "random"):
        maps = evidence_maps(detector, x, method)
        assert maps.shape == (2, S, S) and maps.dtype == np.float32 and (maps >= 0).all()
    assert np.array_equal(evidence_maps(detector, x, "random"), evidence_maps(detector, x, "random"))
    with pytest.raises(ValueError, match="unknown evidence method"):
        evidence_maps(detector, x, "lrp")
    assert default_feature_layers(detector) == ("conv2", "conv5")
    assert default_feature_layers(Detector("o_O-512")) == ("conv2", "conv5")


# ---------------------------------------------------------------------------------------------
# Descriptors from the detector, bank files
# ---------------------------------------------------------------------------------------------


def test_descriptors_carry_layer_patches_grams_and_severity_share(cut):
    descs = [d for ds in cut for d in ds]
    assert descs and {d.source for d in descs} <= {"a", "b"}
    for d in descs:
        assert set(d.features) == set(d.activations) == {"conv2", "conv5"}
        assert d.layer_sizes == {"conv2": (64, 64), "conv5": (16, 16)}
        for n, f in d.features.items():
            lx0, ly0, lx1, ly1 = d.layer_box(n)
            assert f.shape == (f.shape[0], ly1 - ly0, lx1 - lx0) and d.activations[n].shape == f.shape
            lm = d.layer_mask(n)
            fm = f[:, lm].astype(np.float64)
            assert np.allclose(d.grams[n], fm @ fm.T / lm.sum(), rtol=1e-4, atol=1e-6)
        assert math.isfinite(d.severity_share)


def test_descriptors_keep_what_conv1_saw_under_the_box(cut, detector):
    x = fundus_batch(2)
    with torch.no_grad():
        seen = detector.norm(x).numpy()
    for i, ds in enumerate(cut):
        for d in ds:
            x0, y0, x1, y1 = d.bbox
            assert d.norm_patch.shape == (3, y1 - y0, x1 - x0)
            assert np.allclose(d.norm_patch, seen[i, :, y0:y1, x0:x1], atol=1e-6)
    # A whole-pixel move copies the patch; a rotation warps it with the mask.
    d = cut[0][0]
    moved = d.relocated((64, 64))
    assert np.array_equal(moved.norm_patch, d.norm_patch)
    turned = d.rotated(90)
    assert turned.norm_patch.shape == (3, *turned.mask.shape)
    # Without the detector's images there is nothing to keep.
    assert isolate(blobs([(40, 40, 4, 1.0)]))[0][0].norm_patch is None


def test_bank_round_trip_is_lossless(cut, detector, tmp_path):
    bank = DescriptorBank(cut, detector_hash=detector.weights_hash(), info={"method": "deconvnet"})
    path = bank.save(tmp_path / "bank.safetensors")
    assert path.with_suffix(".json").is_file()
    back = DescriptorBank.load(path, detector=detector)
    assert len(back) == len(bank) and back.detector_hash == bank.detector_hash and back.info == bank.info
    for a, b in zip(bank, back):
        for f in ("bbox", "centroid", "area", "image_size", "layer_sizes", "source", "type", "score", "peak", "severity_share"):
            assert getattr(a, f) == getattr(b, f), f
        assert np.array_equal(a.mask, b.mask) and b.mask.dtype == bool and np.array_equal(a.evidence, b.evidence)
        assert a.norm_patch is not None and np.array_equal(a.norm_patch, b.norm_patch)
        for kind in ("features", "activations", "grams"):
            pa, pb = getattr(a, kind), getattr(b, kind)
            assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    # An empty bank round-trips too.
    empty = DescriptorBank(detector_hash="x").save(tmp_path / "empty.safetensors")
    assert len(DescriptorBank.load(empty)) == 0
    # A bank written before descriptors kept their normalised input loads with norm_patch None.
    old = DescriptorBank([replace(d, norm_patch=None) for d in bank], detector_hash=bank.detector_hash)
    side = old.save(tmp_path / "old.safetensors").with_suffix(".json")
    meta = json.loads(side.read_text())
    del meta["descriptors_sha256"]  # nor a checksum of their records
    for r in meta["descriptors"]:
        del r["norm_patch"]
    side.write_text(json.dumps(meta))
    assert all(d.norm_patch is None for d in DescriptorBank.load(tmp_path / "old.safetensors"))


def test_components_carry_their_peak_and_integrated_evidence_and_rank_by_them(cut, detector):
    descs = [d for ds in cut for d in ds]
    assert len(descs) >= 2
    for d in descs:
        assert 0 < d.score <= d.peak <= 1 and d.integrated == pytest.approx(d.score * d.area)
    # the component holding the blurred map's maximum peaks at 1 in the image it was cut from
    assert any(d.peak == pytest.approx(1.0) for d in descs)
    assert descs[0].integrated != descs[1].integrated
    bank = DescriptorBank(descs, detector_hash=detector.weights_hash())
    for key in ("integrated", "peak", "score", "severity_share"):
        values = [getattr(d, key) for d in bank.ranked(key)]
        assert values == sorted(values, reverse=True) and len(values) == len(bank), key
    with pytest.raises(ValueError, match="rank by 'area'"):
        bank.ranked("area")


def test_merging_bank_files_streams_them_into_one_bank_in_order(cut, detector, tmp_path):
    from koch_explore.culture.bank import merge_bank_files

    a = DescriptorBank(cut[0], detector_hash=detector.weights_hash(), info={"method": "deconvnet"})
    b = DescriptorBank(cut[1], detector_hash=detector.weights_hash(), info={"method": "deconvnet"})
    empty = DescriptorBank(detector_hash=detector.weights_hash(), info={"method": "deconvnet"})
    files = [x.save(tmp_path / f"{name}.safetensors") for name, x in (("a", a), ("empty", empty), ("b", b))]
    assert merge_bank_files(files, tmp_path / "all.safetensors", {"shards": 3}) == len(a) + len(b)
    merged = DescriptorBank.load(tmp_path / "all.safetensors", detector=detector)
    assert merged.info == {"method": "deconvnet", "shards": 3}
    for x, y in zip([*a, *b], merged, strict=True):
        assert (x.source, x.bbox, x.score) == (y.source, y.bbox, y.score) and np.array_equal(x.evidence, y.evidence)
        assert all(np.array_equal(x.features[k], y.features[k]) for k in x.features)
    other = DescriptorBank(cut[0], detector_hash="another", info={}).save(tmp_path / "other.safetensors")
    with pytest.raises(BankMismatchError, match="cut with another detector"):
        merge_bank_files([files[0], other], tmp_path / "bad.safetensors")


def test_bank_load_errors_name_the_file(cut, detector, tmp_path):
    path = DescriptorBank(cut, detector_hash=detector.weights_hash()).save(tmp_path / "bank.safetensors")
    torch.manual_seed(1)
    other = Detector(SMALL).eval()
    with pytest.raises(BankMismatchError) as exc:
        DescriptorBank.load(path, detector=other)
    msg = str(exc.value)
    assert str(path) in msg and detector.weights_hash() in msg and other.weights_hash() in msg
    side = path.with_suffix(".json")
    side.write_text("{not json")
    with pytest.raises(BankFormatError, match="bank.json"):
        DescriptorBank.load(path)
    side.unlink()
    with pytest.raises(BankFormatError, match="bank.json.*missing"):
        DescriptorBank.load(path)
    # Tensors that do not belong to their sidecar (e.g. an interrupted save) are caught.
    p2 = DescriptorBank(cut, detector_hash=detector.weights_hash()).save(tmp_path / "b2.safetensors")
    DescriptorBank(cut[:1], detector_hash=detector.weights_hash()).save(tmp_path / "b3.safetensors")
    p2.write_bytes((tmp_path / "b3.safetensors").read_bytes())
    with pytest.raises(BankFormatError, match="b2.safetensors.*checksum"):
        DescriptorBank.load(p2)


class Brightness(torch.nn.Module):
    """A stand-in detector whose severity is 100 x the mean red level: a lesion's share is known."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return 100 * x[:, 0].mean(dim=(1, 2))

    def forward_features(self, x, keep=None):
        return self(x), {}


def test_severity_share_is_the_drop_when_the_lesion_is_filled_with_background():
    yy, xx = np.mgrid[:S, :S]
    image = np.full((S, S, 3), 0.4, np.float32)
    spot = (xx - 40) ** 2 + (yy - 44) ** 2 <= 16
    image[spot] = 1.0
    descs = isolate(spot.astype(np.float32), images=image[None], detector=Brightness(), feature_layers=(), activation_layers=())[0]
    assert len(descs) == 1
    expected = 100 * 0.6 * spot.sum() / (S * S)
    assert descs[0].severity_share == pytest.approx(expected, rel=0.05)


# ---------------------------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------------------------


def test_relocate_snaps_to_the_8px_grid_and_copies_layer_patches():
    d = make_descriptor((36, 32, 45, 49))  # centroid (40, 40), on the grid
    bank = DescriptorBank([d, make_descriptor((80, 80, 90, 86), seed=1)])
    moved = bank.relocate(0, to=(100, 100))
    m = moved[0]
    assert m.centroid[0] in (96.0, 104.0) and m.centroid[1] in (96.0, 104.0)
    dx, dy = m.bbox[0] - d.bbox[0], m.bbox[1] - d.bbox[1]
    assert dx % 8 == 0 and dy % 8 == 0 and m.bbox == (d.bbox[0] + dx, d.bbox[1] + dy, d.bbox[2] + dx, d.bbox[3] + dy)
    for n in ("conv2", "conv5"):  # whole cells: exact copies
        assert np.array_equal(m.features[n], d.features[n]) and np.array_equal(m.grams[n], d.grams[n])
        assert m.layer_box(n)[0] - d.layer_box(n)[0] == dx * m.layer_sizes[n][1] // S
    assert np.array_equal(m.mask, d.mask) and np.array_equal(m.evidence, d.evidence)
    assert bank[0] is d and bank[0].bbox == (36, 32, 45, 49) and moved[1] is bank[1]  # originals untouched
    free = d.relocated((77.3, 61.8), snap=1)
    assert abs(free.centroid[0] - 77.3) <= 0.5 and abs(free.centroid[1] - 61.8) <= 0.5
    # A move past the border is pulled back inside, still on the grid.
    edge = d.relocated((126, 126))
    assert edge.bbox[2] <= S and edge.bbox[3] <= S and (edge.bbox[0] - d.bbox[0]) % 8 == 0
    group = bank.relocate(None, to=(64, 64), snap=1)
    assert np.allclose(np.mean([g.centroid for g in group], axis=0), (64, 64), atol=0.5)


def test_rotate_90_swaps_the_box_and_scale_2_quadruples_the_area():
    d = make_descriptor((40, 50, 50, 80))  # 10 wide, 30 high
    r = DescriptorBank([d]).rotate(0, 90)[0]
    w, h = r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1]
    assert abs(w - 30) <= 1 and abs(h - 10) <= 1
    assert abs(r.area - d.area) <= 0.1 * d.area and np.allclose(r.centroid, d.centroid, atol=1.0)
    for n in ("conv2", "conv5"):
        f = r.features[n]
        assert f.shape[-2:] == (r.layer_box(n)[3] - r.layer_box(n)[1], r.layer_box(n)[2] - r.layer_box(n)[0])
        lm = r.layer_mask(n)
        fm = f[:, lm].astype(np.float64)
        assert np.allclose(r.grams[n], fm @ fm.T / lm.sum(), rtol=1e-4)  # recomputed from the warped patch
    assert r.features["conv2"].shape[2] > r.features["conv2"].shape[1]  # now wider than high
    s = DescriptorBank([d]).scale(0, 2.0)[0]
    assert abs(s.area / d.area - 4.0) <= 0.15 * 4 and abs(s.scale / d.scale - 2.0) <= 0.1
    assert abs((s.bbox[2] - s.bbox[0]) - 20) <= 2 and abs((s.bbox[3] - s.bbox[1]) - 60) <= 2
    assert np.allclose(s.centroid, d.centroid, atol=1.0)
    assert d.bbox == (40, 50, 50, 80)


def test_count_subsamples_or_repeats_inside_the_fov():
    bank = DescriptorBank([make_descriptor((36, 32, 45, 49)), make_descriptor((80, 80, 90, 86), seed=1)])
    five = bank.count(5, seed=0)
    assert len(five) == 5 and five[0] is bank[0] and five[1] is bank[1]
    yy, xx = np.mgrid[:S, :S]
    for d in five:
        assert (d.centroid[0] - 63.5) ** 2 + (d.centroid[1] - 63.5) ** 2 <= (0.47 * S + 1) ** 2
    boxes = [d.bbox for d in five]
    assert len(set(boxes)) == 5  # copies went elsewhere
    one = bank.count(1, seed=3)
    assert len(one) == 1 and one[0] in list(bank)
    assert len(bank.count(0)) == 0
    assert [d.bbox for d in bank.count(5, seed=0)] == boxes  # seeded
    with pytest.raises(ValueError, match="empty bank"):
        DescriptorBank().count(2)


def test_render_places_masks_at_their_boxes_on_every_layer_grid():
    a = make_descriptor((36, 32, 45, 49))
    b = make_descriptor((80, 80, 90, 86), seed=1)
    lay = DescriptorBank([a, b]).render()
    assert lay.size == (S, S) and lay.boxes == [a.bbox, b.bbox]
    assert lay.features["conv2"].shape == (4, 64, 64) and lay.features["conv5"].shape == (6, 16, 16)
    assert lay.mask.sum() == a.area + b.area
    for d in (a, b):
        x0, y0, x1, y1 = d.bbox
        assert np.array_equal(lay.mask[y0:y1, x0:x1], d.mask)
        for n in ("conv2", "conv5"):
            lx0, ly0, lx1, ly1 = d.layer_box(n)
            lm = d.layer_mask(n)
            assert np.array_equal(lay.features[n][:, ly0:ly1, lx0:lx1][:, lm], d.features[n][:, lm])
            assert np.array_equal(lay.activations[n][:, ly0:ly1, lx0:lx1][:, lm], d.activations[n][:, lm])
    covered = lay.layer_masks["conv5"]
    assert not lay.features["conv5"][:, ~covered].any()
    big = DescriptorBank([a, b]).render(2 * S, layers=["conv5"])
    assert big.features["conv5"].shape == (6, 32, 32) and "conv2" not in big.features
    assert abs(big.mask.sum() / lay.mask.sum() - 4) < 0.3
    assert all(abs(bb[0] - 2 * ab[0]) <= 1 for bb, ab in zip(big.boxes, lay.boxes))
    fov = np.zeros((S, S), bool)
    fov[:, :64] = True
    half = DescriptorBank([a, b]).render(fov=fov)
    assert half.mask.sum() == a.area and not half.features["conv5"][:, :, 8:].any()
    with pytest.raises(KeyError, match="conv9"):
        DescriptorBank([a]).render(layers=["conv9"])


# ---------------------------------------------------------------------------------------------
# Evaluation helpers
# ---------------------------------------------------------------------------------------------


def test_pointing_game_on_a_hand_made_case():
    gt = [
        Lesion("MA", (8, 8, 13, 13), (10.0, 10.0)),
        Lesion("HE", (45, 45, 56, 56), (50.0, 50.0)),
        {"type": "EX", "bbox": [95, 95, 106, 106], "centroid": [100.0, 100.0]},
    ]
    boxes = [(5, 5, 15, 15), (52, 52, 70, 70), (200, 200, 210, 210)]
    r = pointing_game(boxes, gt, types=("MA", "HE", "EX", "SE"))
    # Box 1 holds the MA's centroid; box 2 overlaps the HE but not its centroid; box 3 hits nothing.
    assert r.recall() == {"EX": 0.0, "HE": 0.0, "MA": 1.0, "SE": None, "overall": pytest.approx(1 / 3)}
    p = r.precision()
    assert p["overall"] == pytest.approx(2 / 3) and p["MA"] == pytest.approx(1 / 3) and p["HE"] == pytest.approx(1 / 3) and p["EX"] == 0.0
    assert r.f1()["overall"] == pytest.approx(2 * (2 / 3) * (1 / 3) / (2 / 3 + 1 / 3))
    assert (r + r).recall()["overall"] == pytest.approx(1 / 3)
    # With a mask, overlap means overlap with lesion pixels, not with the lesion's box.
    ring = np.zeros((11, 11), bool)
    ring[5, 5] = True
    r2 = pointing_game([(52, 52, 70, 70)], [Lesion("HE", (45, 45, 56, 56), (50.0, 50.0), 1, ring)])
    assert r2.precision()["overall"] == 0.0


def test_lesion_instances_pixel_auc_and_types():
    m = np.zeros((S, S), bool)
    m[10:14, 10:14] = True
    m[50:60, 70:75] = True
    inst = lesion_instances({"EX": m, "HE": np.zeros_like(m)})
    assert [(i.type, i.bbox, i.area) for i in inst] == [("EX", (10, 10, 14, 14), 16), ("EX", (70, 50, 75, 60), 50)]
    ev = m.astype(np.float32) + 0.1 * np.random.default_rng(0).random(m.shape, dtype=np.float32)
    assert roc_auc(m, ev) == 1.0 and roc_auc(m, -ev) == 0.0 and math.isnan(roc_auc(np.zeros_like(m), ev))
    descs = isolate(m.astype(np.float32), blur_sigma=0.5, threshold=0.5, rule="global")[0]
    typed = assign_types(descs, {"EX": m, "HE": np.zeros_like(m)})
    assert {d.type for d in typed} == {"EX"} and all(d.type is None for d in descs)


def test_isolation_steps_picture(cut):
    from koch_explore.plotting import isolation_steps

    seg = segment(blobs([(cx, cy, 4, 1.0) for cx, cy in CENTRES]), rule="global")
    fig = isolation_steps(np.zeros((S, S, 3), np.float32), seg.evidence, seg.blurred, seg.mask, seg.boxes)
    assert len(fig.axes) == 4


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_isolate_and_eval(tmp_path, capsys):
    torch.manual_seed(0)
    weights = Detector(SMALL).save(tmp_path / "det.safetensors")
    images = []
    for i in range(2):
        images.append(str(write_image(tmp_path / f"ph{i}.png", generate_phantom(seed=10 + i, size=160).image)))
    out = tmp_path / "bank.safetensors"
    assert main(["isolate", "bank", *images, "--out", str(out), "--weights", str(weights), "--threshold", "0.4"]) == 0
    bank = DescriptorBank.load(out, detector=Detector.load(weights))
    assert {d.source for d in bank} <= {"ph0", "ph1"} and bank.info["threshold"] == 0.4
    assert all(d.layer_sizes["conv5"] == (16, 16) for d in bank)
    capsys.readouterr()
    assert main(["isolate", "eval", "--data", "phantom", "--count", "4", "--weights", str(weights), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("recall", "precision", "f1", "pixel_auc"):
        assert "overall" in rep[key] and {"MA", "HE", "EX", "SE"} <= set(rep[key])
    assert rep["n_images"] == 4 and rep["method"] == "guided-gradcam" and rep["start"] == "conv11"
    assert rep["rule"] == "peaks" and rep["threshold"] == 0.3 and rep["min_share"] == 0.01  # the defaults
    assert bank.info["method"] == "guided-gradcam" and bank.info["start"] == "conv11"  # the layer the default resolved to, recorded in the bank
    with pytest.raises(SystemExit) as exit_:
        main(["isolate", "bank", *images])  # no --out: argparse's usage error
    assert exit_.value.code == 2
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["isolate", "bank", str(bad), "--out", str(tmp_path / "x.safetensors"), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_isolate_sub_commands_have_their_own_defaults():
    from koch_explore.cli import build_parser

    parser = build_parser()
    ev = parser.parse_args(["isolate", "eval", "--data", "phantom"])
    sanity = parser.parse_args(["isolate", "sanity"])
    base = parser.parse_args(["isolate", "baseline"])
    assert (ev.count, sanity.count, base.count) == (16, 100, 400)
    assert ev.method == "guided-gradcam" and sanity.method is None  # sanity compares every method by default
    assert base.data == "eyepacs" and sanity.data is None
    with pytest.raises(SystemExit):
        parser.parse_args(["isolate", "eval"])  # --data is required there


def test_the_peaks_rule_gives_clustered_lesions_a_box_each():
    # Two lesions 10 px apart, one a third as strong as the other: one global cut joins them into one
    # box; one component per peak keeps each in a small box of its own, the faint one included.
    yy, xx = np.mgrid[:128, :128]
    blob = lambda cx, cy, a: a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.0**2))  # noqa: E731
    ev = (blob(50, 64, 1.0) + blob(60, 64, 0.35)).astype(np.float32)
    glob = segment(ev, threshold=0.1, blur_sigma=2.0, rule="global")
    peaks = segment(ev, threshold=0.1, blur_sigma=2.0, rule="peaks")
    assert len(glob.boxes) == 1
    assert len(peaks.boxes) == 2
    strong, faint = sorted(peaks.boxes)
    assert strong[0] <= 50 < strong[2] and faint[0] <= 60 < faint[2]
    assert strong[2] <= faint[0] + 1  # side by side, not nested
    assert all((b[2] - b[0]) * (b[3] - b[1]) < (glob.boxes[0][2] - glob.boxes[0][0]) * (glob.boxes[0][3] - glob.boxes[0][1]) for b in peaks.boxes)
    assert peaks.labels.max() == 2 and (peaks.labels > 0).sum() == sum(peaks.areas)
    with pytest.raises(ValueError, match="isolation rule 'blobs'"):
        segment(ev, rule="blobs")
    # a plateau is one peak: a flat map (a constructed colour grader's) is one component, not one per pixel
    flat = segment(np.ones((128, 128), np.float32), rule="peaks")
    assert len(flat.boxes) == 1 and flat.areas[0] == 128 * 128


def test_a_faint_peak_on_a_wide_low_map_keeps_a_small_box():
    # A strong lesion, and a faint one on a broad low swell (what a diffuse map looks like around a weak
    # peak): 0.3 of the faint peak's height lies below most of the swell, so uncapped its component spreads
    # over a third of the FOV; capped, it is cut nearer its peak until its box fits MAX_BOX_SHARE.
    from koch_explore.culture.cut import MAX_BOX_SHARE, peak_components

    yy, xx = np.mgrid[:128, :128]
    fov = (yy - 64) ** 2 + (xx - 64) ** 2 < 60**2
    bump = lambda cx, cy, a, s: a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2))  # noqa: E731
    m = (bump(40, 40, 1.0, 3) + bump(80, 80, 0.25, 30) + bump(80, 80, 0.15, 3)).astype(np.float32)
    m = np.where(fov, m / m[fov].max(), 0).astype(np.float32)
    share = lambda b: (b[2] - b[0]) * (b[3] - b[1]) / fov.sum()  # noqa: E731
    uncapped = peak_components(m, fov, 0.3, 4, min_distance=3, max_box_share=1.0)
    capped = peak_components(m, fov, 0.3, 4, min_distance=3)
    assert len(uncapped.boxes) == len(capped.boxes) == 2
    assert max(share(b) for b in uncapped.boxes) > 0.3
    assert max(share(b) for b in capped.boxes) <= MAX_BOX_SHARE <= 0.15
    faint = [b for b in capped.boxes if b[0] <= 80 < b[2] and b[1] <= 80 < b[3]]
    assert len(faint) == 1  # still around its own peak
    strong = [b for b in capped.boxes if b[0] <= 40 < b[2]]
    assert strong == [b for b in uncapped.boxes if b[0] <= 40 < b[2]]  # a box that fits is left alone


def test_instance_match_counts_lesions_one_by_one():
    from koch_explore.culture.evaluate import Lesion, instance_match

    ma1 = Lesion("MA", (10, 10, 12, 12), (10.5, 10.5), 4)
    ma2 = Lesion("MA", (16, 10, 18, 12), (16.5, 10.5), 4)
    he = Lesion("HE", (40, 40, 60, 60), (49.5, 49.5), 400)
    # one box around both MAs, one inside the haemorrhage, one on nothing
    res = instance_match([(8, 8, 20, 14), (44, 44, 56, 56), (80, 80, 90, 90)], [ma1, ma2, he], fov_area=10_000)
    fig = res.figures(["MA", "HE"])
    assert fig["instance_recall"] == {"HE": 1.0, "MA": 1.0, "all": 1.0}
    assert fig["instance_precision"]["all"] == pytest.approx(2 / 3) and fig["instance_precision"]["MA"] == pytest.approx(1 / 3)
    assert fig["multi_lesion_boxes"] == pytest.approx(1 / 3)  # the MA box holds two centroids
    assert fig["box_coverage"] == pytest.approx((72 + 144 + 100) / 3 / 10_000)
    missed = instance_match([(80, 80, 90, 90)], [ma1, he], fov_area=10_000).figures(["MA", "HE"])
    assert missed["instance_recall"]["all"] == 0.0 and missed["instance_precision"]["all"] == 0.0
