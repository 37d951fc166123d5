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


def assert_snapshot(widget, text: str) -> None:
    """The static picture of a widget: a matplotlib figure outside pyplot whose caption is the status."""
    import io

    fig = widget.snapshot()
    captions = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert text in captions, captions
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


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
    assert_snapshot(te, f"{te.count} lesion")
    te.close()
    assert live_widgets() == n0


def test_threshold_explorer_shows_both_rules_side_by_side(sick):
    """The peaks rule splits what the global cut joins: on a grade-3 phantom's lesion map both panels are
    drawn, each with the components culture.cut.segment finds under its rule."""
    from koch_explore.widgets import ThresholdExplorer

    from koch_explore.culture.cut import segment

    ev = sum(m.astype(np.float32) for m in sick.lesions.values())
    n0 = live_widgets()
    te = ThresholdExplorer(sick.image, ev, sick.fov, threshold=0.1, rule="both")
    glob, peaks = len(segment(ev, sick.fov, 0.1, rule="global").boxes), len(segment(ev, sick.fov, 0.1, rule="peaks").boxes)
    assert peaks > glob > 0
    assert [len(te.segmentations[r].boxes) for r in ("global", "peaks")] == [glob, peaks]
    assert te.view.value.count('class="koch-box"') == glob and te.peaks_view.value.count('class="koch-box"') == peaks
    assert f"global: {glob} · peaks: {peaks}" in te.count_label.value
    fig = te.snapshot()
    assert len([a for a in fig.axes if a.images]) == 2  # one picture per rule in the static report
    te.set_rule("peaks")
    assert te.count == peaks and te.peaks_view.value == ""
    with pytest.raises(ValueError, match="rule 'blobs'"):
        te.set_rule("blobs")
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
    assert_snapshot(lb, "top-K")  # the picture carries the status line, a bad spec included
    lb.close()
    assert lb.net.detector is None


def test_lesion_picker_click_toggle_save_load(phantom_models, sick, tmp_path):
    from koch_explore.widgets import LesionPicker

    from koch_explore.culture.bank import DescriptorBank

    det, _, bank = phantom_models
    lp = LesionPicker(det, sick.image.astype(np.float32), method=bank.info.get("method", "deconvnet"))
    assert lp.candidates, "the phantom has lesions the detector isolates"
    seen = []
    lp.on_change(lambda b: seen.append(len(b)))
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
    assert seen == [1, 0, 1, 0, 1]  # every click, toggle and load told the listener
    assert_snapshot(lp, "loaded 1 descriptors")
    lp.close()
    one_cut = LesionPicker(det, sick.image.astype(np.float32), method="guided-backprop", rule="global")
    assert len(lp.candidates) > len(one_cut.candidates)  # the default, one component per peak: lesion-sized candidates
    one_cut.close()


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
    assert_snapshot(dp, "6 lesions placed")
    dp.clear()
    assert len(dp.layout) == 0
    dp.set_bank(bank.select(indices=[2]))  # a picker hands over its selection ...
    assert dp.place(xs[c], ys[c]) and dp.layout[0].area == bank[2].area and "1 picked descriptor" in dp.info.value
    dp.set_bank(bank.select(indices=[]))  # ... and an empty one means the bank it was given
    assert dp.bank is bank and dp.selected == list(range(len(bank))) and len(dp.layout) == 1
    dp.close()


def test_descriptor_placer_in_local_mode_clicks_on_the_photo_and_grows_lesions_only_there():
    from koch_explore.widgets import DescriptorPlacer

    import koch_explore as ke
    from koch_explore.synthesis.local import placement_region

    det, synth, bank, hosts, _ = ke.default_setup("embedded", mode="local")
    host = hosts[0]
    with pytest.raises(ValueError, match="photo="):
        DescriptorPlacer(synth, bank, host.get("vessels"), host["fov"], detector=det)
    dp = DescriptorPlacer(synth, bank, host.get("vessels"), host["fov"], detector=det, photo=host["image"])
    assert np.array_equal(dp.figure.data[0].z, (np.clip(host["image"], 0, 1) * 255 + 0.5).astype(np.uint8))  # the photo to click on
    ys, xs = np.nonzero(host["fov"])
    assert dp.place(xs[len(xs) // 3], ys[len(ys) // 3]) and dp.place(xs[2 * len(xs) // 3], ys[2 * len(ys) // 3])
    img = dp.synthesize()
    region = np.zeros(host["fov"].shape, bool)
    for d in dp.layout:
        m = np.zeros(region.shape, np.uint8)
        m[d.bbox[1]:d.bbox[3], d.bbox[0]:d.bbox[2]] = d.mask
        region |= placement_region(m, synth.cfg)
    assert np.array_equal(img[~region], host["image"][~region]) and np.abs(img - host["image"])[region].max() > 0.02
    assert "host photo: 2 placed" in dp.snapshot().axes[0].get_title()
    dp.close()


@pytest.mark.slow
def test_synth_trainer_pause_resume_device_and_retrain_on_layout(phantom_models, tmp_path):
    from koch_explore.widgets import DescriptorPlacer, SynthTrainer

    from koch_explore.culture.bank import DescriptorBank
    from koch_explore.synthesis.trainer import SynthTrainConfig, healthy_set

    det, synth, bank = phantom_models
    bank_file = resolve_weights("bank", "phantom")
    host = healthy_set(SynthTrainConfig(data="phantom"), synth.cfg.size)[0]
    placer = DescriptorPlacer(synth, bank, host["vessels"], host["fov"], selected=[0, 1])
    placer.set_count(2)
    cfg = SynthTrainConfig(data="phantom", steps=40, batch_size=1, bank=str(bank_file), out=str(tmp_path / "run"),
                           sample_every=0, num_threads=2, init=str(resolve_weights("synthesizer", "phantom")))
    tr = SynthTrainer(cfg, placer=placer, preview_every=2)
    assert tr.curves.value[:4] == b"\x89PNG" and "step 0 of 40" in tr.status.value  # drawn before the first step
    assert tr.device_dropdown.options[:2] == ("auto", "cpu") and tr.device_dropdown.value == "auto"
    empty = tr.curves.value
    import torch

    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    torch.set_num_threads(1)  # the kernel's setting; the run asks for 2
    t0 = time.time()
    assert tr.start()
    assert tr.running  # start returns at once: the cell that shows the widget is not blocked
    assert tr.start() is False and "already running" in tr.status.value  # a second start says why it does nothing
    while tr.step < 3 and time.time() - t0 < 300:
        time.sleep(0.2)
    tr.pause()
    stopped_at = tr.step
    assert 3 <= stopped_at < 40 and not tr.running and tr.state == "paused"
    # the kernel's torch settings are back as they were before the run (train() sets threads and seeds)
    assert torch.get_num_threads() == 1 and torch.equal(torch.get_rng_state(), rng)
    torch.set_num_threads(threads)
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "generator.safetensors").exists()
    assert tr.curves.value != empty and tr.preview_image is not None  # redrawn on the way out, preview of the layout
    tr.set_device("cpu")
    assert tr.config.device == "cpu" and "device cpu" in tr.status.value
    with pytest.raises(ValueError):
        tr.set_device("tpu")
    tr.steps_box.value = stopped_at + 2
    tr.resume()
    tr.wait(300)
    assert tr.result["step"] == stopped_at + 2 and tr.state == "finished"  # resumed from the checkpoint, not from 0
    bank_path = tr.retrain_on_layout(steps=2)
    tr.wait(300)
    run = tmp_path / "run_layout1"
    assert (run / "generator.safetensors").exists() and tr.result["step"] == 2 and tr.config.out == str(run)
    assert len(DescriptorBank.load(bank_path)) == 2 and tr.trained_layout is placer.layout and tr.config.max_lesions == 2
    assert tr.config.init == str(tmp_path / "run" / "generator.safetensors")  # fine-tunes the generator it trained
    assert tr.synthesizer().synthesize(host["vessels"], host["fov"], placer.layout).shape == (synth.cfg.size, synth.cfg.size, 3)
    assert_snapshot(tr, "step 2 of 2")
    assert tr.close(timeout=60)
    assert not any(t.name == "koch-synth-trainer" and t.is_alive() for t in threading.enumerate())


def test_show_adds_a_static_picture_where_nobody_clicks(sick, monkeypatch):
    import koch_explore.widgets.static as static
    from IPython.display import Image
    from koch_explore.widgets import ThresholdExplorer, is_interactive, show

    ev = sum(m.astype(np.float32) for m in sick.lesions.values())
    te = ThresholdExplorer(sick.image, ev, sick.fov, threshold=0.1)
    assert not is_interactive()  # no kernel here: nobody to click
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))
    show(te)
    assert shown[0] is te and isinstance(shown[1], Image) and shown[1].data[:4] == b"\x89PNG"
    shown.clear()
    monkeypatch.setattr(static, "is_interactive", lambda: True)
    show(te)
    assert shown == [te]  # a person's frontend shows the live widget only
    te.close()


class FrontendKernel:
    """What ``is_interactive`` reads of a running ipykernel: the request of the cell being run."""

    def __init__(self, allow_stdin: bool):
        self.allow_stdin = allow_stdin

    def get_parent(self):
        return {"content": {"allow_stdin": self.allow_stdin}}


def test_the_interactive_switch_decides_the_picture_whatever_the_guess(sick, monkeypatch):
    """Voila runs a notebook with ``allow_stdin`` off, as papermill does, while a person looks at the page: the
    guess says nobody is there. ``interactive=True`` shows the live widget only; ``False`` adds its picture
    even where the guess says a person clicks; None falls back on the guess; ``static`` overrides both."""
    from IPython.display import Image
    from koch_explore.widgets import (
        ThresholdExplorer,
        is_interactive,
        resolve_interactive,
        show,
    )

    kernel = FrontendKernel(allow_stdin=False)  # Voila's (and papermill's) execute request
    monkeypatch.setattr("IPython.get_ipython", lambda: type("Shell", (), {"kernel": kernel})())
    ev = sum(m.astype(np.float32) for m in sick.lesions.values())
    te = ThresholdExplorer(sick.image, ev, sick.fov, threshold=0.1)
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))

    def shows(**switches) -> list[str]:
        shown.clear()
        show(te, **switches)
        assert shown[0] is te
        return ["widget", *("picture" for obj in shown[1:] if isinstance(obj, Image) and obj.data[:4] == b"\x89PNG")]

    assert not is_interactive() and resolve_interactive(None) is False
    assert resolve_interactive(True) is True and resolve_interactive(False) is False
    assert shows(interactive=True) == ["widget"]  # a person in Voila: no second copy of the widget
    assert shows() == shows(interactive=None) == ["widget", "picture"]  # the guess: nobody
    kernel.allow_stdin = True  # JupyterLab's request
    assert is_interactive() and resolve_interactive(None) is True and resolve_interactive(False) is False
    assert shows() == ["widget"]
    assert shows(interactive=False) == ["widget", "picture"]  # a report run from a frontend: the switch wins
    assert shows(static=False, interactive=False) == ["widget"] and shows(static=True, interactive=True) == ["widget", "picture"]
    te.close()


def test_eye_catalogue_and_explorer_switch_eyes_at_the_same_cut(phantom_models):
    from koch_explore.widgets import EyeCatalogue, EyeThresholdExplorer

    from koch_explore.culture.cut import segment
    from koch_explore.evidence.base import explain

    eyes = EyeCatalogue("embedded")
    assert eyes.labels == ["phantom 11 (grade 3)", "phantom 12 (grade 4)", "phantom 13 (grade 2)", "phantom 14 (grade 1)",
                           "healthy photo (scikit-image)"]
    image, fov = eyes.load("phantom 12 (grade 4)")
    assert image.shape == (256, 256, 3) and image.dtype == np.float32 and fov.dtype == bool and fov.mean() > 0.4
    assert eyes.load("phantom 12 (grade 4)")[0] is image  # read once
    with pytest.raises(KeyError, match="no eye"):
        eyes.load("phantom 99")
    with pytest.raises(ValueError, match="empty catalogue"):
        EyeCatalogue("embedded", phantoms=0, healthy=False)

    det = phantom_models[0]
    n0 = live_widgets()
    app = EyeThresholdExplorer(det, eyes, method="guided-backprop")
    assert app.label == "phantom 11 (grade 3)" and "phantom 11 (grade 3)" in app.explorer._header.value
    app.explorer.set_threshold(0.5)
    first_severity = app.severity
    app.choose("phantom 12 (grade 4)")
    ev = explain(det, image, "guided-backprop").maps[0]
    assert app.label == "phantom 12 (grade 4)" and app.explorer.threshold == 0.5  # the cut stays
    assert app.explorer.count == len(segment(ev, fov, 0.5).boxes) and app.explorer.view.value.count('class="koch-box"') == app.explorer.count
    assert app.severity != first_severity and f"{app.severity:.2f}" in app.status.value
    with pytest.raises(KeyError):
        app.choose("phantom 99")
    assert_snapshot(app, f"{app.explorer.count} lesion")
    app.close()
    assert live_widgets() == n0


def test_eye_catalogue_lists_eyepacs_validation_eyes_when_found():
    from koch_explore.widgets import EyeCatalogue

    from koch_explore.data.roots import resolve_data_root

    root = resolve_data_root()
    if root is None or not (root / "EyePACS").is_dir():
        pytest.skip("no data root (KOCH_DATA or ../shared/data) with EyePACS")
    eyes = EyeCatalogue("auto", phantoms=0, healthy=False, eyepacs=2)
    assert len(eyes.labels) == 2 and all(label.startswith("EyePACS ") and "(grade " in label for label in eyes.labels)
    assert all(grade >= 3 for _, grade, _ in eyes.eyepacs)
    image, fov = eyes.load(eyes.labels[0])
    assert image.shape == (256, 256, 3) and fov.any()
    assert not any(label.startswith("EyePACS") for label in EyeCatalogue("embedded").labels)


def test_lesions_picked_on_a_phantom_grow_in_the_photo_without_its_tree(phantom_models):
    """The pick-and-grow app's chain: the EyePACS detector's picks on a phantom, placed on the embedded photo
    (no vessel tree: local mode reads none), grown there by the local synthesizer."""
    from koch_explore.widgets import (
        DescriptorPlacer,
        EyeCatalogue,
        LesionPicker,
    )

    import koch_explore as ke
    from koch_explore.synthesis.local import placement_region

    host = ke.embedded_hosts(trees=False)[0]
    assert set(host) == {"image", "fov", "name"}
    _, phantom_synth, phantom_bank = phantom_models
    with pytest.raises(ValueError, match="vessel tree"):
        DescriptorPlacer(phantom_synth, phantom_bank, None, host["fov"])  # the whole-fundus generator needs one
    det, synth = ke.load_detector(), ke.load_synthesizer("local")
    image, fov = EyeCatalogue("embedded").load("phantom 11 (grade 3)")
    picker = LesionPicker(det, image, fov, rule="peaks")
    # the boxes travel with the figure's first state: a page that connects after the cell ran (Voila) draws them
    assert len(picker.figure.get_state()["_widget_layout"]["shapes"]) == len(picker.candidates) > 0
    placer = DescriptorPlacer(synth, ke.load_bank("local"), None, host["fov"], detector=det, photo=host["image"])
    picker.on_change(placer.set_bank)
    k = min(range(len(picker.candidates)), key=lambda i: picker.candidates[i].area)
    picker.toggle(k)
    assert picker.figure.layout.shapes[k].line.color == "#00ff66" and len(placer.bank) == 1
    ys, xs = np.nonzero(host["fov"])
    assert placer.place(xs[len(xs) // 2], ys[len(ys) // 2]) and len(placer.figure.layout.shapes) == 1
    img = placer.synthesize()
    m = np.zeros(host["fov"].shape, np.uint8)
    d = placer.layout[0]
    m[d.bbox[1]:d.bbox[3], d.bbox[0]:d.bbox[2]] = d.mask
    region = placement_region(m, synth.cfg)
    assert np.array_equal(img[~region], host["image"][~region]) and np.abs(img - host["image"])[region].max() > 0.02
    assert "detector severity" in placer.info.value and placer.severity is not None
    picker.close()
    placer.close()


def test_koch_test_runner_runs_on_its_button_and_says_why():
    from koch_explore.widgets import KochTestRunner

    import koch_explore as ke

    det, synth, bank = ke.load_detector(), ke.load_synthesizer("local"), ke.load_bank("local")
    n0 = live_widgets()
    runner = KochTestRunner(det, synth, bank, ke.embedded_hosts(trees=False)[:1], trials=1, counts=(0, 2), control=False)
    assert runner.report is None and "not run yet" in runner.status.value
    assert_snapshot(runner, "not run yet")
    runner.run_button.click()  # what a person's press does
    rep = runner.report
    assert rep is not None and rep.n_trials == 1 and rep.counts == [0, 2] and not runner.run_button.disabled
    assert f'<span class="koch-test-state">{rep.verdict}</span>' in runner.status.value and rep.verdict == "inconclusive"
    assert "Verdict:" in runner.verdict.value and "only 1 distinct host" in runner.verdict.value
    assert runner.severity_view.value[:4] == b"\x89PNG" and runner.case_view.value[:4] == b"\x89PNG"
    assert_snapshot(runner, "The placed lesions were re-found at")
    runner.close()
    assert live_widgets() == n0
    broken = KochTestRunner(det, synth, bank, ke.embedded_hosts(trees=False)[:1], trials=1, counts=(2, 8))
    with pytest.raises(ValueError, match="counts must hold 0"):
        broken.run()
    assert "failed" in broken.status.value and "counts must hold 0" in broken.status.value and not broken.run_button.disabled
    broken.close()
