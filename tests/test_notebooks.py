"""Notebooks run end to end under papermill with small parameters; executed copies land in
reports/executed/ (kept as CI artefacts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXECUTED = REPO / "reports" / "executed"


def run_notebook(name: str, tag: str, **parameters) -> dict:
    papermill = pytest.importorskip("papermill")
    EXECUTED.mkdir(parents=True, exist_ok=True)
    out = EXECUTED / f"{Path(name).stem}{tag}.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / name), str(out), parameters=parameters, cwd=str(REPO / "notebooks"),
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


@pytest.mark.slow
def test_quickstart_on_embedded_data_only(tmp_path):
    nb = run_notebook("00_quickstart.ipynb", "_phantom", data="phantom", n_phantoms=4, size=256,
                      out_dir=str(tmp_path / "phantoms"))
    # phantom grid, overlay grid, one phantom's truth, skimage retina
    assert images_in(nb) >= 4
    assert len(list((tmp_path / "phantoms" / "images").glob("*.png"))) == 4


@pytest.mark.slow
def test_quickstart_with_real_data_when_present(tmp_path):
    from koch_explore.data import resolve_data_root

    root = resolve_data_root()
    if root is None or not (root / "DRIVE").is_dir():
        pytest.skip("no real data root (KOCH_DATA or ../shared/data) with DRIVE")
    nb = run_notebook("00_quickstart.ipynb", "_auto", data="auto", n_phantoms=8, size=512,
                      out_dir=str(tmp_path / "phantoms"))
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "DRIVE          found" in text and "EyePACS        found" in text
    assert images_in(nb) >= 7


@pytest.mark.slow
def test_isolate_notebook_phantom_section():
    nb = run_notebook("02_isolate.ipynb", "_phantom", data="phantom", n_phantoms=4, n_show=3)
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "4 phantoms" in text and "EyePACS not found: section skipped" in text
    assert images_in(nb) >= 3  # the isolation steps of three phantoms


@pytest.mark.slow
def test_isolate_notebook_on_real_data_when_present():
    from koch_explore.data import resolve_data_root

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
    nb = run_notebook("04_inoculate.ipynb", "_phantom", data="phantom", train_steps=4, n_hosts=2, n_lesions=2)
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "training a small one on phantoms" in text and "picked:" in text
    assert images_in(nb) >= 1
