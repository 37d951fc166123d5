"""The phantom generator: determinism, exact masks, the grade rule and lesion looks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from koch_explore import cli
from koch_explore.data.io import read_image, read_mask
from koch_explore.data.phantom import (
    ALL_LESION_TYPES,
    LESION_COLOURS,
    LESION_TYPES,
    PhantomConfig,
    PhantomFundus,
    generate_phantom,
    grade_from_instances,
    overlay_lesions,
    phantom_seed,
    write_phantom_dataset,
)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cli_datasets(tmp_path_factory) -> tuple[Path, Path]:
    """The same CLI call twice, into two folders."""
    a, b = tmp_path_factory.mktemp("phantom_a"), tmp_path_factory.mktemp("phantom_b")
    for out in (a, b):
        assert cli.main(["phantom", "--out", str(out), "--count", "8", "--seed", "3"]) == 0
    return a, b


@pytest.fixture(scope="module")
def batch() -> list[PhantomFundus]:
    """Every grade twice at 512 px, grade 4 four times (it alone has NV): enough lesions of
    every type for the statistics below."""
    return [generate_phantom(100 + 10 * g + k, 512, grade=g) for g in range(5) for k in range(4 if g == 4 else 2)]


# --- determinism and dataset layout ------------------------------------------------------------


def test_cli_runs_are_byte_identical(cli_datasets):
    a, b = cli_datasets
    files_a, files_b = _tree(a), _tree(b)
    assert files_a.keys() == files_b.keys()
    for name in files_a:
        assert files_a[name] == files_b[name], f"{name} differs between two runs with the same seed"
    assert not any(name.endswith(".tmp") for name in files_a)


def test_dataset_layout_and_labels(cli_datasets):
    root = cli_datasets[0]
    names = [f"phantom_{i:05d}" for i in range(8)]
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == names
    instances = json.loads((root / "instances.json").read_text())
    assert sorted(instances) == names
    for row in rows:
        name = row["image"]
        image = read_image(root / "images" / f"{name}.png")
        assert image.shape == (512, 512, 3)
        for sub in ("vessels", "fov", *(f"lesions/{t}" for t in ALL_LESION_TYPES)):
            raw = cv2.imread(str(root / sub / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            assert raw is not None and raw.shape == (512, 512), sub
            assert set(np.unique(raw)) <= {0, 255}, f"{sub} is not a 0/255 mask"
        # labels.csv agrees with the rule applied to the instances, and both with the masks.
        assert int(row["level"]) == grade_from_instances(instances[name])
        for t in ALL_LESION_TYPES:
            mask = read_mask(root / "lesions" / t / f"{name}.png").astype(np.uint8)
            n = cv2.connectedComponents(mask, connectivity=8)[0] - 1
            assert n == sum(r["type"] == t for r in instances[name]), (name, t)


def test_same_seed_same_phantom_different_seed_different():
    a, b, c = generate_phantom(5, 256), generate_phantom(5, 256), generate_phantom(6, 256)
    assert np.array_equal(a.image, b.image) and a.instances == b.instances
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.vessels, c.vessels)


def test_dataset_seed_changes_images(tmp_path, cli_datasets):
    write_phantom_dataset(tmp_path, 2, seed=4, progress=False)
    a = (cli_datasets[0] / "images" / "phantom_00000.png").read_bytes()
    assert (tmp_path / "images" / "phantom_00000.png").read_bytes() != a
    assert phantom_seed(3, 0) != phantom_seed(4, 0) != phantom_seed(3, 1)


# --- image and anatomy ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [256, 300, 512])
def test_shapes_types_and_range(size):
    ph = generate_phantom(size, size)
    assert ph.image.shape == (size, size, 3) and ph.image.dtype == np.float32
    assert np.isfinite(ph.image).all() and ph.image.min() >= 0.0 and ph.image.max() <= 1.0
    for mask in (ph.vessels, ph.fov, *ph.lesions.values()):
        assert mask.shape == (size, size) and mask.dtype == bool
    assert set(ph.lesions) == set(ALL_LESION_TYPES)
    assert not ph.image[~ph.fov].any(), "outside the FOV must be black"
    assert ph.image[ph.fov].mean() > 0.1
    # The FOV is a centred disc covering most of the frame.
    assert 0.55 < ph.fov.mean() < 0.78


def test_fundus_is_orange_red_and_disc_is_bright(batch):
    for ph in batch:
        inside = ph.image[ph.fov & ~ph.vessels]
        r, g, b = inside.mean(axis=0)
        assert r > g > b, "fundus background must be red > green > blue"
        yy, xx = np.mgrid[0 : ph.size, 0 : ph.size]
        cx, cy = ph.disc_center
        on_disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.6 * ph.disc_radius) ** 2) & ~ph.vessels
        assert ph.image[on_disc].mean() > inside.mean() * 1.3, "the optic disc must be bright"
        # Disc and fovea: ~2.5 disc diameters apart, on opposite sides as the eye says.
        dist = np.hypot(ph.fovea_center[0] - cx, ph.fovea_center[1] - cy)
        assert 2.1 < dist / (2 * ph.disc_radius) < 2.9
        assert (cx > ph.fovea_center[0]) == (ph.eye == "OD")


def test_vessel_tree_is_one_tree_from_the_disc(batch):
    for ph in batch:
        assert 0.03 < ph.vessels[ph.fov].mean() < 0.25
        n, labels, stats, _ = cv2.connectedComponentsWithStats(ph.vessels.astype(np.uint8), connectivity=8)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        assert stats[largest, cv2.CC_STAT_AREA] >= 0.98 * ph.vessels.sum()
        cx, cy = (int(round(v)) for v in ph.disc_center)
        r = int(ph.disc_radius)
        assert (labels[cy - r : cy + r, cx - r : cx + r] == largest).any(), "the tree must start on the disc"
        assert not (ph.vessels & ~ph.fov).any()


# --- lesions: exact truth --------------------------------------------------------------------


def test_instances_are_the_connected_components_of_the_masks(batch):
    for ph in batch:
        for t in ALL_LESION_TYPES:
            n, _, stats, centroids = cv2.connectedComponentsWithStats(ph.lesions[t].astype(np.uint8), connectivity=8)
            from_masks = sorted(
                (int(x), int(y), int(x + w), int(y + h), int(a), round(float(c[0]), 3), round(float(c[1]), 3))
                for (x, y, w, h, a), c in zip(stats[1:], centroids[1:])
            )
            records = sorted((*r["bbox"], r["area"], *r["centroid"]) for r in ph.instances if r["type"] == t)
            assert records == from_masks, (ph.seed, t)
            assert ph.lesion_counts[t] == n - 1


def test_lesions_stay_in_the_fov_off_vessels_and_off_the_disc(batch):
    for ph in batch:
        yy, xx = np.mgrid[0 : ph.size, 0 : ph.size]
        cx, cy = ph.disc_center
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= (1.15 * ph.disc_radius) ** 2
        union = np.zeros_like(ph.fov)
        for t, mask in ph.lesions.items():
            assert not (mask & ~ph.fov).any(), f"{t} outside the FOV"
            assert not (mask & ph.vessels).any(), f"{t} on a vessel"
            assert not (mask & disc).any(), f"{t} on the optic disc"
            assert not (mask & union).any(), f"{t} overlaps another lesion"
            union |= mask


def test_lesion_sizes():
    ph = generate_phantom(7, 512, grade=3)
    ma = [r for r in ph.instances if r["type"] == "MA"]
    assert ma
    for r in ma:
        x0, y0, x1, y1 = r["bbox"]
        assert 2 <= max(x1 - x0, y1 - y0) <= 5, "microaneurysms are 2-5 px across at 512"
    he = [r["area"] for r in ph.instances if r["type"] == "HE"]
    assert np.median(he) > 3 * np.median([r["area"] for r in ma]), "haemorrhages are larger than MA"


# --- grade rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("grade", range(5))
def test_requested_grade_is_drawn(grade):
    for seed in range(3):
        ph = generate_phantom(seed, 256, grade=grade)
        assert ph.grade == grade == grade_from_instances(ph.instances)
        types = {r["type"] for r in ph.instances}
        if grade == 0:
            assert not types
        elif grade == 1:
            assert types == {"MA"}
        elif grade == 4:
            assert "NV" in types
        else:
            assert "NV" not in types and types & {"HE", "EX", "SE"}


def test_grade_rule_on_hand_made_records():
    cfg = PhantomConfig()

    def recs(**counts):
        out = []
        for key, n in counts.items():
            kind, _, quadrant = key.partition("_")
            out += [{"type": kind, "quadrant": quadrant or "ST"}] * n
        return out

    assert grade_from_instances([]) == 0
    assert grade_from_instances(recs(MA=cfg.mild_ma_max)) == 1
    assert grade_from_instances(recs(MA=cfg.mild_ma_max + 1)) == 2
    assert grade_from_instances(recs(MA=1, EX=1)) == 2
    assert grade_from_instances(recs(SE=1)) == 2
    assert grade_from_instances(recs(HE=cfg.severe_he_total - 1)) == 2
    assert grade_from_instances(recs(HE=cfg.severe_he_total)) == 3
    q = cfg.severe_he_per_quadrant
    assert grade_from_instances(recs(HE_ST=q, HE_SN=q, HE_IT=q, HE_IN=q)) == 3
    assert grade_from_instances(recs(HE_ST=q, HE_SN=q, HE_IT=q, HE_IN=q - 1)) == 2
    assert grade_from_instances(recs(NV=1)) == 4


def test_sampled_grades_cover_all_levels_and_load_grows_with_grade():
    phantoms = [generate_phantom(phantom_seed(11, i), 256) for i in range(40)]
    grades = [ph.grade for ph in phantoms]
    assert set(grades) == set(range(5))
    load = [np.mean([len(ph.instances) for ph in phantoms if ph.grade == g]) for g in range(5)]
    assert all(a < b for a, b in zip(load[:4], load[1:4])), load
    assert load[4] >= 0.8 * load[3], load


def test_config_validation():
    with pytest.raises(ValueError):
        PhantomConfig(grade_probs=(1, 0, 0))
    with pytest.raises(ValueError):  # moderate HE load that would already be severe
        PhantomConfig(he_counts=((0, 0), (0, 0), (0, 25), (18, 32), (16, 34)))
    with pytest.raises(ValueError):
        generate_phantom(-1)
    with pytest.raises(ValueError):
        generate_phantom(0, grade=5)
    only_severe = PhantomConfig(grade_probs=(0, 0, 0, 1, 0))
    assert generate_phantom(3, 256, config=only_severe).grade == 3


# --- lesion looks ----------------------------------------------------------------------------


def _colour_contrast(ph: PhantomFundus, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean RGB inside, mean RGB of a thin ring of clean background around) per instance."""
    taken = ph.vessels | ~ph.fov
    for mask in ph.lesions.values():
        taken = taken | mask
    taken = cv2.dilate(taken.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    out = []
    for r in ph.instances:
        if r["type"] != kind:
            continue
        x0, y0, x1, y1 = r["bbox"]
        pad = 6
        ys, xs = slice(max(y0 - pad, 0), y1 + pad), slice(max(x0 - pad, 0), x1 + pad)
        inside = ph.lesions[kind][ys, xs]
        ring = cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~taken[ys, xs]
        if ring.sum() < 8:
            continue
        out.append((ph.image[ys, xs][inside].mean(axis=0), ph.image[ys, xs][ring].mean(axis=0)))
    return out


def test_lesion_colour_signatures(batch):
    pairs = {t: [p for ph in batch for p in _colour_contrast(ph, t)] for t in ALL_LESION_TYPES}
    for t in ALL_LESION_TYPES:
        assert len(pairs[t]) >= 3, f"too few {t} to judge"

    def share(t, predicate):
        return np.mean([predicate(i, b) for i, b in pairs[t]])

    # Red lesions: darker than the background around them in green (haemoglobin absorbs it).
    assert share("MA", lambda i, b: i[1] < 0.85 * b[1]) >= 0.9
    assert share("HE", lambda i, b: i[1] < 0.85 * b[1]) >= 0.9
    assert share("NV", lambda i, b: i[1] < b[1]) >= 0.9
    # Hard exudates: brighter and yellower (green up a lot, blue stays low relative to it).
    assert share("EX", lambda i, b: i[1] > 1.3 * b[1] and (i[0] + i[1]) / 2 - i[2] > (b[0] + b[1]) / 2 - b[2]) >= 0.9
    # Cotton-wool spots: paler (brighter, less saturated) than the fundus around them.
    sat = lambda c: (c.max() - c.min()) / max(c.max(), 1e-6)  # noqa: E731
    assert share("SE", lambda i, b: i.mean() > 1.1 * b.mean() and sat(i) < sat(b)) >= 0.9


def test_every_type_appears_across_a_batch(batch):
    for t in ALL_LESION_TYPES:
        assert sum(ph.lesion_counts[t] for ph in batch) > 0, t


# --- overlay and CLI ---------------------------------------------------------------------------


def test_overlay_lesions_colours_only_lesion_pixels():
    ph = generate_phantom(1, 256, grade=4)
    out = overlay_lesions(ph, alpha=1.0)
    assert out.dtype == np.float32 and out.shape == ph.image.shape
    union = np.zeros_like(ph.fov)
    for t in ALL_LESION_TYPES:
        if ph.lesions[t].any():
            assert np.allclose(out[ph.lesions[t]], LESION_COLOURS[t])
        union |= ph.lesions[t]
    assert np.array_equal(out[~union], ph.image[~union])
    half = overlay_lesions((ph.image * 255).astype(np.uint8), {"MA": ph.lesions["MA"]})
    assert half.dtype == np.float32 and 0.0 <= half.min() and half.max() <= 1.0
    assert set(LESION_TYPES) < set(LESION_COLOURS)


def test_cli_summary_and_grade_flag(tmp_path, capsys):
    argv = ["phantom", "--out", str(tmp_path), "--count", "3", "--seed", "1", "--size", "128", "--grade", "2"]
    assert cli.main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert "3 images" in line and "2:3" in line and line.count("\n") == 0
    levels = (tmp_path / "labels.csv").read_text().splitlines()
    assert levels[0] == "image,level" and all(row.endswith(",2") for row in levels[1:])
