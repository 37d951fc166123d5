"""The Voila apps of notebooks/apps/ run headless as Voila runs them: every cell in one kernel, a person
to click (``interactive = True``), no dataset. They must not block, must click nothing themselves, and
must leave only widgets on the page (no printed text, no picture a person would see twice).

tests/test_notebooks.py globs only the numbered notebooks; tests/test_browser.py serves the apps with
Voila in a real browser."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APPS = sorted((REPO / "notebooks" / "apps").glob("*.ipynb"))

CHECKS = {
    # run in the app's kernel after its cells: what a person finds when the page appears
    "threshold_explorer": "assert explorer.label == 'phantom 11 (grade 3)' and explorer.explorer.count > 0\n"
                          "assert not any(label.startswith('EyePACS') for label in explorer.eyes.labels)  # no dataset here\n"
                          "before = explorer.explorer.view.value\n"
                          "explorer.choose('healthy photo (scikit-image)')\n"
                          "assert explorer.label.startswith('healthy') and explorer.explorer.view.value != before  # redrawn",
    "pick_and_grow": "assert picker.candidates and picker.selected == []  # nothing picked for the person\n"
                     "assert len(placer.layout) == 0 and placer.image is None and placer.local  # nothing placed or grown\n"
                     "picker.toggle(0)\n"
                     "assert placer.bank is not placer.default_bank and len(placer.bank) == 1  # the placer follows the picker",
    "koch_test": "assert runner.report is None  # the test runs when the button is pressed, not before",
}


def test_every_app_has_its_check_and_sets_a_person_to_click():
    """Each app's parameters cell says ``interactive = True`` and every ``show`` passes it: an app never
    clicks for the person, and never falls back on the kernel-request guess, which Voila fools."""
    assert {p.stem for p in APPS} == set(CHECKS), "an app without a check here, or a check without its app"
    for path in APPS:
        cells = json.loads(path.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), f"{path.name}: committed with outputs"
        params = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
        values = {t.id: node.value for node in ast.parse("".join(params["source"])).body if isinstance(node, ast.Assign)
                  for t in node.targets}
        assert isinstance(values.get("interactive"), ast.Constant) and values["interactive"].value is True, path.name
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        shows = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "show"]
        assert shows and all(any(k.arg == "interactive" for k in n.keywords) for n in shows), f"{path.name}: show() without interactive="
        assert "is_interactive" not in code, path.name


@pytest.mark.parametrize("path", APPS, ids=[p.stem for p in APPS])
def test_app_runs_without_data_and_shows_only_widgets(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = tmp_path / "empty_root"
    root.mkdir()
    monkeypatch.setenv("KOCH_DATA", str(root))  # a data root that holds no dataset
    nb = nbformat.read(path, as_version=4)
    shown = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS[path.stem]))
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - t0
    outputs = [o for c in nb.cells[:shown] for o in c.get("outputs", [])]
    views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    others = [o.get("name") or sorted(o.get("data", {})) for o in outputs if o not in views]
    assert views, f"{path.name} shows no widget"
    assert not others, f"{path.name} leaves more than widgets on the page: {others}"
    assert seconds < 90, f"{path.name} took {seconds:.0f} s to appear (kernel start included)"
