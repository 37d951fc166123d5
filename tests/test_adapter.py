"""The Koch test for a model the kit did not build: ``adapt`` any nn.Module DR classifier.

Two foreign architectures are defined here in plain torch (nothing from koch_explore): a ResNet-style
grader (BatchNorm + ReLU, residual blocks, global average pool, 5-class softmax head) and a GELU
regressor. Both are briefly trained on phantoms (the embedded graded data) so their evidence can mean
something, then every evidence method runs on them or refuses with an error naming the layer, no
hook is left behind, and the Koch test completes and writes its report.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import koch_explore as ke
from koch_explore.core.stats import roc_auc, spearman
from koch_explore.data.samples import phantom_samples
from koch_explore.detect.adapter import AdaptedModel, AdapterError, fine_tune

# -- two models a user might bring ------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.out = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.out(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.down(x))


class TinyResNet(nn.Module):
    """stem 1/4 -> residual stages on the 1/4, 1/8, 1/16, 1/32 grids -> GAP -> 5 logits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        self.stage1, self.stage2 = Block(16, 16, 1), Block(16, 32, 2)
        self.stage3, self.stage4 = Block(32, 48, 2), Block(48, 64, 2)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return self.head(x.mean(dim=(2, 3)))


class GeluNet(nn.Module):
    """Strided convs with GELU, global average pool, one regression output (B, 1)."""

    def __init__(self):
        super().__init__()
        chans = [3, 16, 24, 32, 48, 64]
        layers = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.GELU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
               for m in model.modules())


@pytest.fixture(scope="module")
def phantoms():
    train = ke.graded_eyes("train", 256, data="phantom")
    val = ke.graded_eyes("val", 256, data="phantom")
    return train, val


@pytest.fixture(scope="module")
def resnet(phantoms):
    torch.manual_seed(0)
    model = ke.adapt(TinyResNet(), mean=(0.5, 0.3, 0.2), std=(0.25, 0.2, 0.15), output="softmax")
    fine_tune(model, phantoms[0].images, phantoms[0].grades, steps=150, progress=False)
    return model


@pytest.fixture(scope="module")
def gelu(phantoms):
    torch.manual_seed(0)
    model = ke.adapt(GeluNet())
    fine_tune(model, phantoms[0].images, phantoms[0].grades, steps=60, progress=False)
    return model


def test_the_adapter_reads_the_layers_off_the_conv_grids():
    m = ke.adapt(TinyResNet(), output="softmax")
    strides = m.conv_strides()
    assert strides["stem.0"] == 2 and strides["stage1.conv2"] == 4 and strides["stage4.conv2"] == 32
    assert m.cam_layer == "stage4"  # the block, not its last bare conv: after the residual sum and ReLU
    assert m.feature_layers == ("stage1", "stage2")
    assert ke.adapt(GeluNet()).output == "regression"
    det = ke.load_detector("phantom")
    assert ke.adapt(det) is det  # the detector already speaks the protocol: no second path


def test_the_adapted_resnet_learned_the_phantom_grades(resnet, phantoms):
    val = phantoms[1]
    sev = ke.predict_severity(resnet, val.images)
    assert spearman(sev, val.grades.astype(float)) > 0.5
    assert roc_auc(val.grades >= 2, sev) > 0.8


def test_every_method_runs_on_the_resnet_and_leaves_no_hook(resnet, phantoms):
    val = phantoms[1]
    eye = val.images[int(np.argmax(val.grades))]
    before = _hooks(resnet)
    flags = [m.inplace for m in resnet.modules() if isinstance(m, nn.ReLU)]
    for method in ke.EVIDENCE_METHODS:
        if method == "deconvnet-excess":
            with pytest.raises(FileNotFoundError, match="healthy baseline"):
                ke.explain(resnet, eye, method)
            continue
        ev = ke.explain(resnet, eye, method)
        assert ev.maps.shape == (1, 256, 256) and np.isfinite(ev.maps).all()
        assert ev.maps.max() > 0, method
    assert _hooks(resnet) == before == 0
    assert [m.inplace for m in resnet.modules() if isinstance(m, nn.ReLU)] == flags  # in-place restored


def test_guided_gradcam_on_the_resnet_points_at_phantom_lesions(resnet):
    """The evidence means something: its pixel AUC against the phantoms' exact lesion masks beats
    the random map's on the same images."""
    samples = list(phantom_samples(8, 256, 256, seed=500))
    imgs = np.stack([(s.image * 255 + 0.5).astype(np.uint8) for s in samples])
    aucs = {}
    for method in ("guided-gradcam", "random"):
        maps = ke.explain(resnet, imgs, method).maps
        vals = []
        for s, m in zip(samples, maps):
            union = np.logical_or.reduce(list(s.lesions.values())) & s.fov
            if union.any():
                vals.append(roc_auc(union[s.fov], m[s.fov]))
        aucs[method] = float(np.mean(vals))
    assert aucs["guided-gradcam"] > aucs["random"] + 0.1, aucs


def test_the_gelu_model_refuses_rectified_methods_by_name(gelu, phantoms):
    eye = phantoms[1].images[0]
    for method in ("guided-backprop", "guided-gradcam", "deconvnet"):
        with pytest.raises(AdapterError, match=r"layer 'features.1' of GeluNet is GELU"):
            ke.explain(gelu, eye, method)
    for method in ("gradcam", "gradient-x-input", "occlusion", "gradient", "random"):
        assert np.isfinite(ke.explain(gelu, eye, method).maps).all()
    assert _hooks(gelu) == 0


def test_the_koch_test_runs_on_a_foreign_model_and_writes_its_report(resnet, tmp_path):
    _, synth, bank, hosts, _ = ke.default_setup("phantom", detector=resnet)
    rep = ke.koch_test(resnet, synth, bank, hosts, trials=2, seed=0, vessel_model=False, progress=False)
    assert 0.0 <= rep.hit_rate <= 1.0 and 0.0 <= rep.chance_hit_rate <= 1.0
    assert len(rep.severity) == 2 and rep.control_hit_rate is not None
    path = ke.write_report(rep, tmp_path / "report", title="Koch report, a foreign ResNet")
    assert "Koch report, a foreign ResNet" in path.read_text()
    assert _hooks(resnet) == 0


def test_sanity_measures_run_on_an_adapted_model(resnet, phantoms):
    rep = ke.sanity_report(resnet, phantoms[1].images[:8], None, ["gradcam", "gradient"], n_random=4, progress=False)
    for method in ("gradcam", "gradient"):
        r = rep["methods"][method]
        assert -1 <= r["input_dependence"] <= 1 and -1 <= r["randomization_similarity"] <= 1
    assert rep["start"] == resnet.cam_layer


def test_the_generic_path_reproduces_the_detectors_own_gradcam():
    """The detector wrapped as a bare nn.Module (its layers found by module path, hooks instead of its
    own forward_features) gives the same Grad-CAM as the detector itself."""
    det = ke.load_detector("phantom")
    eye = ke.generate_phantom(3, size=256).image
    wrapped = AdaptedModel(det, output="regression", cam_layer="layers.conv11")
    a = ke.explain(det, eye, "gradcam").maps
    b = ke.explain(wrapped, eye, "gradcam").maps
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.max()))
    with pytest.raises(AdapterError, match="no nn.ReLU modules"):
        ke.explain(wrapped, eye, "guided-backprop")  # its leaky ReLUs are functional: no module to rectify


def test_clear_errors_for_what_the_adapter_cannot_read(resnet):
    class ThreeOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, 2, 1)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    with pytest.raises(AdapterError, match=r"returns shape \(2, 3\): not a severity the adapter can read"):
        ke.adapt(ThreeOutputs())
    with pytest.raises(AdapterError, match="as output='softmax'"):
        ke.adapt(GeluNet(), output="softmax")
    with pytest.raises(AdapterError, match="no layer 'stage9'"):
        ke.adapt(TinyResNet(), cam_layer="stage9")
    with pytest.raises(ValueError, match="no layer 'stage9'"):
        ke.explain(resnet, np.zeros((256, 256, 3), np.uint8), "gradcam", start="stage9")
    small = ke.adapt(TinyResNet(), input_size=224, output="softmax")
    _, synth, bank, hosts, _ = ke.default_setup("phantom", detector=small)
    with pytest.raises(ValueError, match="takes 224 px images and the synthesizer serves 256 px"):
        ke.koch_test(small, synth, bank, hosts, trials=1, vessel_model=False, progress=False)


def test_the_cli_audits_a_model_from_a_factory_and_safetensors(resnet, tmp_path, capsys):
    from koch_explore.cli import main

    factory = tmp_path / "my_model.py"
    factory.write_text("import sys\nsys.path.insert(0, %r)\nfrom test_adapter import TinyResNet\n\ndef build():\n    return TinyResNet()\n"
                       % str(__import__("pathlib").Path(__file__).parent))
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.model.state_dict().items()}, str(weights))
    eye = tmp_path / "eye.png"
    import cv2

    cv2.imwrite(str(eye), ke.generate_phantom(7, size=256, grade=4).image[..., ::-1].__mul__(255).astype(np.uint8))
    opts = ["--model", f"{factory}:build", "--weights", str(weights), "--output", "softmax",
            "--mean", "0.5", "0.3", "0.2", "--std", "0.25", "0.2", "0.15"]
    assert main(["detector", "predict", str(eye), "--json", "--device", "cpu", *opts]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    np.testing.assert_allclose(row["severity"], float(ke.predict_severity(resnet, ke.read_image(eye))[0]), atol=0.05)
    # a file that is not this model's weights: one line naming it, no traceback
    bad = tmp_path / "bad.safetensors"
    save_file({"stem.0.weight": torch.zeros(1)}, str(bad))
    assert main(["detector", "predict", str(eye), *opts[:2], "--weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors: weights do not fit TinyResNet" in err and "Traceback" not in err
    assert main(["detector", "predict", str(eye), "--model", "no_such_module:build"]) == 2
    assert "cannot import 'no_such_module'" in capsys.readouterr().err


def test_the_synthesizer_trains_on_a_foreign_models_features(resnet, tmp_path):
    """Culture a bank with the user's model and train the synthesizer on its feature layers (a few
    steps: the plumbing, not a useful generator)."""
    from koch_explore.synthesis.trainer import SynthTrainConfig, train

    factory = tmp_path / "my_model.py"
    factory.write_text("import sys\nsys.path.insert(0, %r)\nfrom test_adapter import TinyResNet\n\ndef build():\n    return TinyResNet()\n"
                       % str(__import__("pathlib").Path(__file__).parent))
    weights = resnet.save(tmp_path / "tiny.safetensors")  # the adapter's options travel in the header
    cfg = SynthTrainConfig(data="phantom", model=f"{factory}:build", detector=str(weights), out=str(tmp_path / "run"),
                           steps=2, bank_images=8, bank_method="guided-gradcam", sample_every=1000, device="cpu")
    train(cfg, progress=False)
    synth = ke.load_synthesizer(tmp_path / "run" / "generator.safetensors")
    assert synth.cfg.canvas_channels == {"stage1": 16, "stage2": 32}  # the canvases are the ResNet's features
    bank = ke.load_bank(tmp_path / "run" / "bank.safetensors")
    assert len(bank) > 0 and bank.info["start"] == "stage4"
