"""Notebooks run end to end under papermill with small parameters; executed copies land in
reports/executed/ (kept as CI artefacts)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXECUTED = REPO / "reports" / "executed"


def run_notebook(name: str, tag: str, **parameters) -> dict:
    """Execute a notebook from a fresh folder outside the checkout: a notebook must not depend on
    the working directory (users open them from anywhere, papermill reports run elsewhere)."""
    papermill = pytest.importorskip("papermill")
    EXECUTED.mkdir(parents=True, exist_ok=True)
    out = EXECUTED / f"{Path(name).stem}{tag}.ipynb"
    with tempfile.TemporaryDirectory(prefix="koch-nb-") as cwd:
        papermill.execute_notebook(
            str(REPO / "notebooks" / name), str(out), parameters=parameters, cwd=cwd,
            kernel_name="python3", progress_bar=False,
        )
    return json.loads(out.read_text())


def images_in(nb: dict) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def test_notebooks_are_committed_without_outputs():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), f"{path}: no parameters cell"


def text_of(nb: dict) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def has_real(*datasets: str) -> bool:
    from koch_explore.data.roots import resolve_data_root

    root = resolve_data_root()
    return root is not None and all((root / d).is_dir() for d in datasets)


@pytest.mark.slow
def test_quickstart_on_embedded_data_only(tmp_path):
    nb = run_notebook("00_quickstart.ipynb", "_phantom", data="phantom", n_phantoms=4, size=256,
                      out_dir=str(tmp_path / "phantoms"), koch_trials=3, real_trials=0, report_dir=str(tmp_path / "koch"))
    text = text_of(nb)
    # phantom grids, truth, retina, isolation steps, culture gallery, inoculation grid, Koch figures
    assert images_in(nb) >= 9
    assert len(list((tmp_path / "phantoms" / "images").glob("*.png"))) == 4
    assert "Koch test on the skimage retina host, 3 trials" in text and "above chance" in text and "real-data Koch test skipped" in text
    assert "transplant control (the bank's real lesions" in text  # the shipped bank carries its norm patches
    page = (tmp_path / "koch" / "index.html").read_text()
    assert "data:image/png;base64," in page and "Spearman" in page and "transplant control: hit rate" in page


@pytest.mark.slow
def test_quickstart_with_real_data_when_present(tmp_path):
    if not has_real("DRIVE", "EyePACS", "CHASE_DB1"):
        pytest.skip("no real data root (KOCH_DATA or ../shared/data) with DRIVE, CHASE_DB1 and EyePACS")
    nb = run_notebook("00_quickstart.ipynb", "_auto", data="auto", n_phantoms=4, size=256, koch_trials=2, real_trials=2,
                      out_dir=str(tmp_path / "phantoms"), report_dir=str(tmp_path / "koch"))
    text = text_of(nb)
    assert "DRIVE          found" in text and "EyePACS        found" in text
    assert "real hosts (DRIVE + CHASE_DB1)" in text and (tmp_path / "koch_report_real" / "index.html").exists()


@pytest.mark.slow
def test_detector_notebook(tmp_path):
    real = has_real("EyePACS", "DRIVE")
    nb = run_notebook("01_detector.ipynb", "_auto" if real else "_phantom", data="auto", n_val=60, n_phantoms=20)
    text = text_of(nb)
    assert "QWK" in text and "conv1" in text and images_in(nb) >= 1
    assert ("DRIVE" in text and "EyePACS grade >= 2" in text) if real else "comparison skipped" in text


@pytest.mark.slow
def test_culture_notebook_on_phantoms(tmp_path):
    nb = run_notebook("03_culture.ipynb", "_phantom", data="phantom", n_eyes=4, bank_file=str(tmp_path / "bank.safetensors"))
    text = text_of(nb)
    assert "descriptors from 4 phantoms" in text and "saved and reloaded" in text and "types:" in text
    assert (tmp_path / "bank.safetensors").exists() and images_in(nb) >= 3


@pytest.mark.slow
def test_reisolate_notebook(tmp_path):
    nb = run_notebook("05_reisolate.ipynb", "", trials=3, compare_methods="deconvnet", compare_trials=2,
                      report_dir=str(tmp_path / "report"))
    text = text_of(nb)
    if has_real("DRIVE", "CHASE_DB1"):
        assert "hit rate" in text and "severity~count" in text and (tmp_path / "report" / "index.html").exists()
        assert "transplant ctl" in text and "(transplant control)" in text
        assert images_in(nb) >= 5
    else:
        assert "this notebook needs real hosts" in text


@pytest.mark.slow
def test_lesson_notebook():
    nb = run_notebook("06_lesson_koch_for_cnns.ipynb", "", n=3, trials=2)
    text = text_of(nb)
    assert "noise synthesizer" in text and "Spearman" in text and images_in(nb) >= 2


@pytest.mark.slow
def test_isolate_notebook_phantom_section():
    nb = run_notebook("02_isolate.ipynb", "_phantom", data="phantom", n_phantoms=4, n_show=3)
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "4 phantoms" in text and "EyePACS not found: section skipped" in text
    assert images_in(nb) >= 3  # the isolation steps of three phantoms


@pytest.mark.slow
def test_isolate_notebook_on_real_data_when_present():
    from koch_explore.data.roots import resolve_data_root

    root = resolve_data_root()
    if root is None or not (root / "EyePACS").is_dir() or not (root / "IDRiD_lesions").is_dir():
        pytest.skip("no real data root (KOCH_DATA or ../shared/data) with EyePACS and IDRiD_lesions")
    nb = run_notebook("02_isolate.ipynb", "_auto", data="auto", n_phantoms=4, n_show=3, n_per_grade=4, n_sanity=6,
                      sanity_methods="deconvnet,gradient-x-input,gradient,random")
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "mean lesions isolated" in text and "union" in text and "input dep" in text
    assert images_in(nb) >= 6  # steps x3, EyePACS grid, lesions per grade, methods side by side


@pytest.mark.slow
def test_inoculate_notebook_on_phantoms(tmp_path):
    nb = run_notebook("04_inoculate.ipynb", "_phantom", data="phantom", retrain_steps=3, n_hosts=1, n_lesions=2,
                      run_dir=str(tmp_path / "retrain"))
    text = text_of(nb)
    assert "phantom setup" in text and "picked:" in text and "retrained 3 steps" in text
    assert (tmp_path / "retrain" / "run" / "generator.safetensors").exists()
    assert images_in(nb) >= 2  # the grid and the before/after retraining row
