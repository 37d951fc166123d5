"""Widgets driven through their plain-Python API, on a phantom and the shipped phantom models."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

W = pytest.importorskip("ipywidgets")

from koch_explore.core.weights import resolve_weights
from koch_explore.data.phantom.generate import generate_phantom
from koch_explore.koch.hosts import shipped_models


@pytest.fixture(scope="module")
def phantom_models():
    return shipped_models("phantom")


@pytest.fixture(scope="module")
def sick():
    return generate_phantom(11, size=256, grade=3)


def live_widgets() -> int:
    from ipywidgets.widgets.widget import _instances

    return len(_instances)


def test_threshold_explorer_counts_change_and_nothing_grows(sick):
    from koch_explore.widgets import ThresholdExplorer

    from koch_explore.culture.cut import segment

    ev = sum(m.astype(np.float32) for m in sick.lesions.values())
    n0 = live_widgets()
    te = ThresholdExplorer(sick.image, ev, sick.fov, threshold=0.1)
    assert te.count == len(segment(ev, sick.fov, 0.1).boxes) > 0
    low = te.count
    te.set_threshold(0.95)
    assert te.count < low  # a higher cut keeps fewer components
    assert te.view.value.count('class="koch-box"') == te.count and f"{te.count} lesion" in te.count_label.value
    n1 = live_widgets()
    for v in np.linspace(0.05, 0.9, 100):
        te.set_threshold(float(v))
    assert live_widgets() == n1
    t = te.otsu()
    assert 0 < t < 1 and te.count == len(segment(ev, sick.fov, "otsu").boxes)
    with pytest.raises(ValueError):
        te.set_threshold(1.5)
    te.close()
    assert live_widgets() == n0


def test_layer_browser_projects_from_any_start(phantom_models, sick):
    from koch_explore.widgets import LayerBrowser
    from koch_explore.widgets.layers import parse_channels

    det = phantom_models[0]
    lb = LayerBrowser(det, sick.image.astype(np.float32))
    assert lb.projection.start == "dense2" and lb.view.value[:4] == b"\x89PNG"
    lb.set_start("conv5")
    assert lb.projection.start == "conv5" and "conv5" in lb.status.value
    lb.set_channels("top-4")
    assert int(lb.projection.mask.sum()) == 4
    lb.set_channels("nonsense")
    assert "top-K" in lb.status.value  # a bad spec is reported, the last projection stays
    assert parse_channels("3,17") == [3, 17] and parse_channels("all") is None
    assert not det._forward_hooks and not any(m._forward_hooks for m in det.modules())
    lb.close()
    assert lb.net.detector is None


def test_lesion_picker_click_toggle_save_load(phantom_models, sick, tmp_path):
    from koch_explore.widgets import LesionPicker

    from koch_explore.culture.bank import DescriptorBank

    det, _, bank = phantom_models
    lp = LesionPicker(det, sick.image.astype(np.float32), method=bank.info.get("method", "deconvnet"))
    assert lp.candidates, "the phantom has lesions the detector isolates"
    d = lp.candidates[0]
    cx, cy = (d.bbox[0] + d.bbox[2] - 1) / 2, (d.bbox[1] + d.bbox[3] - 1) / 2
    assert lp.click(cx, cy) is not None and len(lp.bank) == 1
    assert lp.click(-50, -50) is None and len(lp.bank) == 1
    assert lp.detail.value[:4] == b"\x89PNG"
    lp.click(cx, cy)
    assert len(lp.bank) == 0
    lp.toggle(0)
    path = lp.save(tmp_path / "picked.safetensors")
    lp.toggle(0)
    assert len(lp.bank) == 0
    lp.load(path)
    assert len(lp.bank) == 1 and lp.selected == [0]
    assert len(DescriptorBank.load(path, detector=det)) == 1
    lp.close()


def test_descriptor_placer_place_rotate_count_synthesize(phantom_models):
    from koch_explore.widgets import DescriptorPlacer

    from koch_explore.synthesis.trainer import SynthTrainConfig, healthy_set

    det, synth, bank = phantom_models
    host = healthy_set(SynthTrainConfig(data="phantom"), synth.cfg.size)[0]
    dp = DescriptorPlacer(synth, bank, host["vessels"], host["fov"], detector=det, selected=[0, 1])
    ys, xs = np.nonzero(host["fov"])
    c = len(ys) // 2
    assert dp.place(xs[c], ys[c]) and len(dp.layout) == 1
    assert abs(dp.layout[0].centroid[0] - xs[c]) <= 8 and abs(dp.layout[0].centroid[1] - ys[c]) <= 8
    assert not dp.place(0, 0)  # the black corner is outside the FOV
    before = dp.layout[0].mask.copy()
    dp.rotate(90)
    dp.scale(1.5)
    assert dp.layout[0].area > before.sum() * 1.3
    dp.rotate(0)
    dp.scale(1.0)
    assert np.array_equal(dp.layout[0].mask, before)  # absolute transforms from the untouched placement
    dp.set_count(6)
    assert len(dp.layout) == 6
    img = dp.synthesize()
    assert img.shape == (synth.cfg.size, synth.cfg.size, 3) and "severity" in dp.info.value
    healthy = synth.synthesize(host["vessels"], host["fov"], None, seed=0)
    assert np.abs(img - healthy).mean() > 1e-3  # the lesions changed the picture
    dp.clear()
    assert len(dp.layout) == 0
    dp.close()


@pytest.mark.slow
def test_synth_trainer_pause_resume_and_retrain(phantom_models, tmp_path):
    from koch_explore.widgets import SynthTrainer

    from koch_explore.synthesis.trainer import SynthTrainConfig

    bank_file = resolve_weights("bank", "phantom")
    cfg = SynthTrainConfig(data="phantom", steps=40, batch_size=1, bank=str(bank_file), out=str(tmp_path / "run"),
                           sample_every=0, num_threads=2)
    tr = SynthTrainer(cfg, preview_every=2)
    tr.start()
    t0 = time.time()
    while tr.step < 3 and time.time() - t0 < 300:
        time.sleep(0.2)
    tr.pause()
    stopped_at = tr.step
    assert 3 <= stopped_at < 40 and not tr.running
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "generator.safetensors").exists()
    assert tr.curves.value[:4] == b"\x89PNG"
    tr.config.steps = stopped_at + 2
    tr.resume()
    tr.wait(300)
    assert tr.result["step"] == stopped_at + 2  # resumed from the checkpoint, not from 0
    tr.retrain_on(bank_file, steps=2)
    tr.wait(300)
    assert (tmp_path / "run_layout" / "generator.safetensors").exists() and tr.result["step"] == 2
    tr.close()
    assert not any(t.name == "koch-synth-trainer" and t.is_alive() for t in threading.enumerate())
