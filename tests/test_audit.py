"""``koch-explore audit`` / ``ke.audit`` on the embedded data: every section runs, says what it was measured on,
and the document (HTML, JSON, figures) is whole. Small settings: this checks the wiring, not the figures
(docs/findings/audit.md has those, measured at full size)."""

import json
import subprocess
import sys

import pytest

import koch_explore as ke

SMALL = dict(data="embedded", trials=2, counts=(0, 2), control=False, sanity_count=6, sanity_random=2, localisation_count=3,
             methods=("guided-gradcam", "random"), device="cpu")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    return ke.audit("phantom", out, progress=False, command=["test"], trained_on=("phantom,eyepacs",), **SMALL), out


def test_every_section_is_measured_and_says_on_what(audited):
    result, out = audited
    j = json.loads((out / "audit.json").read_text())
    assert {"verdict", "grading", "sanity", "localisation", "koch", "provenance"} <= set(j)
    assert j["verdict"] in ke.VERDICTS and j["verdict"] == j["koch"]["verdict"]
    # no real data asked for: grading is empty with its reason, the rest is labelled phantoms / the embedded photo
    assert j["grading"]["measured"] is False and "allow_phantom_grading" in j["grading"]["why"]
    assert j["sanity"]["source"] == "phantom" and list(j["localisation"]["sources"]) == ["phantom"]
    # the embedded hosts (skimage's photo, then grade-0 phantoms): 2 trials, 2 distinct hosts, competence on phantoms
    assert j["koch"]["source"] == "embedded" and j["koch"]["effects"]["distinct_hosts"] == 2
    assert "11 grade-0 phantoms" in j["koch"]["label"] and j["koch"]["competence"]["population"] == "phantom"
    # every figure with its CI and n
    pg = j["localisation"]["sources"]["phantom"]["methods"]["guided-gradcam"]["pointing_game"]
    assert set(pg) == {"mean", "ci", "n"} and pg["n"] == 3
    assert len(j["sanity"]["methods"]["guided-gradcam"]["input_dependence_ci"]) == 2
    # warnings: phantom sections; the model may have seen the phantoms (it was trained on them); no host reused
    text = " ".join(j["warnings"])
    assert "reuse one host" not in text and "measured on phantoms" in text and "trained on phantom" in text
    assert "trained on eyepacs" not in text  # no EyePACS image was read
    prov = j["provenance"]
    assert prov["model"]["weights_file_sha256"] and prov["model"]["tensors_sha256"] and prov["command"] == "test"
    assert prov["config"]["trained_on"] == ["phantom", "eyepacs"] and prov["data"]["images_read_by_dataset"] == {"phantom": 6}


def test_the_document_is_whole_and_offline(audited):
    _, out = audited
    page = (out / "index.html").read_text()
    assert page.index("Verdict:") < page.index("1 · Grading") < page.index("2 · Sanity") < page.index("3 · Localisation") < page.index("4 · The Koch test")
    assert "measured on 6 phantoms" in page and "not measured" in page and "Provenance" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched when opened offline
    for name in ("sanity", "localisation_phantom", "maps_phantom", "koch_severity"):
        assert (out / "figures" / f"{name}.svg").stat().st_size > 1000
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png[:4] == b"\x89PNG"


def test_phantom_grading_only_when_asked(tmp_path):
    from koch_explore.appendix.config import AuditConfig
    from koch_explore.appendix.sections import grading_section

    det = ke.load_detector("phantom")
    cfg = AuditConfig(**{**SMALL, "allow_phantom_grading": True})
    g = grading_section(det, cfg)
    assert g["measured"] and g["source"] == "phantom" and g["auc_referable"]["value"] > 0.9
    lo, hi = g["auc_referable"]["ci"]
    assert lo <= g["auc_referable"]["value"] <= hi
    assert sum(row["n"] for row in g["mean_severity_by_grade"]) == g["n"]


def test_the_cli_refuses_an_unknown_training_set_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "koch_explore", "audit", "--weights", "phantom", "--out", str(tmp_path / "a"),
                        "--data", "embedded", "--trained-on", "eyepacs,imagenet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "'imagenet' is not one of" in r.stderr
    assert not (tmp_path / "a" / "index.html").exists()


def test_a_gelu_model_is_audited_with_the_methods_its_layers_allow(tmp_path):
    """Guided backprop and guided Grad-CAM refuse GELU networks by name: the audit lists them as skipped (sanity,
    localisation) and re-isolates with Grad-CAM, saying so, instead of failing."""
    import torch
    from torch import nn

    class GeluGrader(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GELU(), nn.Conv2d(8, 16, 3, 2, 1), nn.GELU(),
                                          nn.Conv2d(16, 16, 3, 2, 1), nn.GELU())
            self.head = nn.Linear(16, 1)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    torch.manual_seed(0)
    model = ke.adapt(GeluGrader(), output="regression")
    result = ke.audit(model, tmp_path / "gelu", progress=False,
                      **{**SMALL, "methods": ("guided-gradcam", "gradcam", "random"), "localisation_count": 2, "sanity_count": 4})
    assert set(result.sanity["skipped"]) == {"guided-gradcam"} and "GELU" in result.sanity["skipped"]["guided-gradcam"]
    assert set(result.sanity["methods"]) == {"gradcam", "random"}
    assert set(result.localisation["sources"]["phantom"]["skipped"]) == {"guided-gradcam"}
    assert result.koch["method_note"].startswith("re-isolated with gradcam")
    assert "re-isolated with gradcam" in (tmp_path / "gelu" / "index.html").read_text()
