"""Inputs read right before any verdict is built on them (issue 39): pixel values in any container, exact
lesion doses, one synthesizer protocol, and every public call leaving the model's train/eval mode as it found it."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
import torch.nn as nn

import koch_explore as ke
from koch_explore.core.images import ImageValueError, as_image_batch
from koch_explore.data.io import FundusReadError


class SmallGrader(nn.Module):
    """A plain regression CNN without any normalisation of its own: its severity moves with the raw scale
    of its input, so a uint8 tensor read as 0-255 would show."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, 4, 2), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def phantom_u8():
    ph = ke.generate_phantom(7, grade=3)
    image, _ = ke.prepare_fundus(ph.image, 256)
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def graders():
    return {"shipped": ke.load_detector(), "phantom": ke.load_detector("phantom"), "adapted": ke.adapt(SmallGrader(), output="regression")}


@pytest.mark.parametrize("which", ["shipped", "phantom", "adapted"])
def test_uint8_tensor_and_array_grade_the_same(which, graders, phantom_u8):
    model = graders[which]
    reference = ke.predict_severity(model, phantom_u8)
    t = torch.from_numpy(phantom_u8)
    same = {
        "uint8 tensor HWC": t,
        "uint8 tensor CHW": t.permute(2, 0, 1),
        "uint8 array CHW": phantom_u8.transpose(2, 0, 1),
        "uint16 array": phantom_u8.astype(np.uint16) * 257,
        "uint16 tensor": torch.from_numpy(phantom_u8.astype(np.int32) * 257).to(torch.uint16),
        "float array": phantom_u8.astype(np.float32) / 255,
        "float64 tensor CHW": t.permute(2, 0, 1).double() / 255,
    }
    for name, image in same.items():
        np.testing.assert_allclose(ke.predict_severity(model, image), reference, atol=1e-5, err_msg=name)
    # the evidence maps read the same pixels too
    a = ke.explain(model, phantom_u8, method="gradient").maps
    b = ke.explain(model, t.permute(2, 0, 1), method="gradient").maps
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_small_grader_would_show_a_misread_scale(graders, phantom_u8):
    """The control: the adapted model's severity does move when the same pixels are read as 0-255."""
    model = graders["adapted"]
    right = ke.predict_severity(model, phantom_u8)
    misread = model(torch.from_numpy(phantom_u8).permute(2, 0, 1)[None].float()).detach().numpy()
    assert abs(float(right[0]) - float(misread.ravel()[0])) > 1e-3


def test_a_float_image_in_0_255_is_refused_in_one_line(graders, phantom_u8):
    bad = phantom_u8.astype(np.float32)
    for call in (lambda: ke.predict_severity(graders["shipped"], bad), lambda: ke.explain(graders["shipped"], bad),
                 lambda: as_image_batch(torch.from_numpy(bad))):
        with pytest.raises(ImageValueError) as exc:
            call()
        text = str(exc.value)
        assert "\n" not in text and "[0, 1]" in text and "0 to 255" in text and "uint8" in text
    with pytest.raises(FundusReadError, match=r"\[0, 1\]"):
        ke.prepare_fundus(bad, 256)
    with pytest.raises(ImageValueError, match="finite"):
        as_image_batch(np.full((8, 8, 3), np.nan, np.float32))
    # float error just outside [0, 1] is clipped, not refused
    assert float(as_image_batch(np.full((8, 8, 3), 1.0004, np.float32)).max()) == 1.0


def test_integer_and_bool_images_are_scaled_by_their_range():
    u16 = np.full((4, 4, 3), 65535, np.uint16)
    assert float(as_image_batch(u16).max()) == 1.0
    assert float(as_image_batch(torch.ones(3, 4, 4, dtype=torch.bool)).min()) == 1.0
    assert float(as_image_batch(torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)).max()) == 1.0
    image, _ = ke.prepare_fundus(torch.from_numpy((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).permute(2, 0, 1), 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.float32


# -- exact doses -----------------------------------------------------------------------------------


def test_random_layout_places_exactly_count_or_says_why():
    bank = ke.load_bank("phantom")
    fov = np.zeros((256, 256), bool)
    fov[120:136, 120:136] = True  # a 16 px field of view: no room for 40 lesions
    with pytest.raises(ValueError, match=r"placed \d+ of 40 descriptors.*no place"):
        ke.random_layout(bank, 40, fov, seed=0)
    host_fov = ke.embedded_hosts()[0]["fov"]
    for n in (1, 8, 16, 40):
        assert len(ke.random_layout(bank, n, host_fov, seed=n)) == n
    with pytest.raises(ValueError, match="empty"):
        ke.random_layout(bank, 2, np.zeros((256, 256), bool))


def test_the_koch_test_records_the_dose_it_gave_and_refuses_one_it_cannot(graders):
    synth, bank = ke.load_synthesizer("local"), ke.load_bank("local")
    host = ke.embedded_hosts()[0]
    cfg = ke.KochConfig(counts=(0, 2, 4), control=False)
    report = ke.koch_test(graders["shipped"], synth, bank, [host], trials=2, progress=False, config=cfg, vessel_model=False)
    assert report.placed_counts == [[0, 2, 4], [0, 2, 4]]
    assert report.cli_json()["lesions_placed_by_count"] == {"0": [0], "2": [2], "4": [4]}
    tiny = dict(host, fov=np.zeros_like(host["fov"]), name="pinhole")
    tiny["fov"][124:132, 124:132] = True
    with pytest.raises(ValueError, match="host 'pinhole': placed .* of 4 descriptors"):
        ke.koch_test(graders["shipped"], synth, bank, [tiny], trials=1, progress=False, config=cfg, vessel_model=False)


# -- one synthesizer protocol ----------------------------------------------------------------------


def test_both_shipped_synthesizers_answer_the_same_calls():
    assert typing.get_type_hints(ke.load_synthesizer)["return"] is ke.Synthesizer
    host = ke.embedded_hosts()[0]
    layout = ke.random_layout(ke.load_bank("local"), 4, host["fov"], seed=0)
    for name in ("local", "real"):
        synth = ke.load_synthesizer(name)
        assert isinstance(synth, ke.Synthesizer)
        bank = ke.load_bank(name)
        lay = ke.random_layout(bank, 4, host["fov"], seed=0)
        from_photo = synth.inoculate(host["image"], host["fov"], lay, seed=3)
        from_host = synth.synthesize_host(host, lay, seed=3)
        assert from_photo.shape == (256, 256, 3) and from_photo.dtype == np.float32
        if name == "local":  # the photo is the host: the same pixels either way
            np.testing.assert_array_equal(from_photo, from_host)
            assert not hasattr(synth, "synthesize")  # no whole-fundus signature whose vessels it would ignore
    assert layout is not None


def test_koch_test_refuses_an_object_that_is_not_a_synthesizer(graders):
    class OldStandIn:
        def synthesize(self, vessels, fov, layout=None, z=None, seed=0):
            return np.zeros((*fov.shape, 3), np.float32)

    with pytest.raises(TypeError, match="synthesize_host"):
        ke.koch_test(graders["shipped"], OldStandIn(), ke.load_bank("local"), ke.embedded_hosts(), trials=1, progress=False)


def test_generate_phantom_defaults_to_the_models_input_size():
    assert ke.generate_phantom(3).image.shape[:2] == (256, 256) == (ke.load_detector("phantom").input_size,) * 2


# -- train/eval mode restored -----------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_every_public_call_restores_the_mode_it_found(training, phantom_u8):
    from koch_explore.synthesis.evaluate import embedding_features

    model = ke.load_detector("phantom")
    images = np.stack([phantom_u8, phantom_u8])
    host = ke.embedded_hosts()[0]
    calls = {
        "predict_severity": lambda: ke.predict_severity(model, images),
        "explain": lambda: ke.explain(model, images),
        "isolate": lambda: ke.isolate(ke.explain(model, images), images, model),
        "embedding_features": lambda: embedding_features(model, images.astype(np.float32) / 255),
        "koch_test": lambda: ke.koch_test(model, ke.load_synthesizer("local"), ke.load_bank("local"), [host], trials=1,
                                          progress=False, vessel_model=False, config=ke.KochConfig(counts=(0, 2), control=False)),
    }
    for name, call in calls.items():
        model.train(training)
        call()
        assert model.training is training, name
    adapted = ke.adapt(SmallGrader(), output="regression").train(training)
    ke.fine_tune(adapted, images, [3, 3], steps=1, progress=False)
    assert adapted.training is training, "fine_tune"
