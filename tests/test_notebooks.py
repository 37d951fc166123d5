"""Notebooks run end to end under papermill with small parameters; executed copies land in
reports/executed/ (kept as CI artefacts)."""

from __future__ import annotations

import ast
import json
import re
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXECUTED = REPO / "reports" / "executed"


def run_notebook(name: str, tag: str, twice: bool = False, **parameters) -> dict:
    """Execute a notebook from a fresh folder outside the checkout: a notebook must not depend on
    the working directory (users open them from anywhere, papermill reports run elsewhere). With
    ``twice`` it runs again in another fresh folder and every figure it printed or drew must be the
    same, byte for byte (same seed, same inputs, same report). The quickstart and the culture notebook
    run twice; the others once, to keep the suite inside its budget: what they compute is the library's,
    whose figures tests/test_determinism.py checks run after run."""
    papermill = pytest.importorskip("papermill")
    EXECUTED.mkdir(parents=True, exist_ok=True)
    runs = []
    for k in range(2 if twice else 1):
        out = EXECUTED / f"{Path(name).stem}{tag}{'_again' if k else ''}.ipynb"
        with tempfile.TemporaryDirectory(prefix="koch-nb-") as cwd:
            papermill.execute_notebook(
                str(REPO / "notebooks" / name), str(out), parameters=parameters, cwd=cwd,
                kernel_name="python3", progress_bar=False,
            )
        runs.append(json.loads(out.read_text()))
    if twice:
        first, again = (results_of(nb) for nb in runs)
        assert len(first) == len(again), f"{name}: another number of outputs on the second run"
        for a, b in zip(first, again):
            assert a == b, f"{name}: cell {a[0]} gave another {a[1]} on the second run"
    return runs[0]


def results_of(nb: dict) -> list[tuple[int, str, str]]:
    """(cell, kind, content) of what a reader sees: printed text, values and pictures. Progress bars
    (stderr), widget views (a fresh model id each run) and how long a step took are not results."""
    out = []
    for i, c in enumerate(nb["cells"]):
        printed = ""  # consecutive stdout chunks joined: how the kernel split one print is timing, not a result
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                if o.get("name") == "stdout":
                    printed += "".join(o["text"])
                continue
            if printed:
                out.append((i, "printed text", _untimed(printed)))
                printed = ""
            for kind in ("text/plain", "text/html", "image/png"):
                if kind in o.get("data", {}) and "application/vnd.jupyter.widget-view+json" not in o["data"]:
                    v = o["data"][kind]
                    out.append((i, kind, "".join(v) if isinstance(v, list) else v))
        if printed:
            out.append((i, "printed text", _untimed(printed)))
    return out


def _untimed(text: str) -> str:
    return re.sub(r"\bin \d+(\.\d+)? ?(s|min)\b", "in <time>", text)


def test_twice_run_check_compares_printed_text_not_how_the_kernel_chunked_it():
    """One print can arrive as one stdout chunk or as the sentence and a lone newline (issue 39); a
    progress bar on stderr between them changes nothing a reader sees. Another sentence still differs."""
    def nb(*outputs):
        return {"cells": [{"cell_type": "code", "outputs": list(outputs)}]}

    def out(name, text):
        return {"output_type": "stream", "name": name, "text": text}

    one = nb(out("stdout", "severity rose in 3.2 s\n"))
    split = nb(out("stdout", ["severity rose in 4 s"]), out("stderr", "100%|####|"), out("stdout", "\n"))
    assert results_of(one) == results_of(split)
    assert results_of(one) != results_of(nb(out("stdout", "severity fell\n")))
    picture = {"output_type": "display_data", "data": {"image/png": "AAAA"}}
    # text printed before and after a picture stays two results, in order
    assert [k for _, k, _ in results_of(nb(out("stdout", "a\n"), picture, out("stdout", "b\n")))] == [
        "printed text", "image/png", "printed text"]


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
def test_quickstart_on_embedded_data_only(empty_root, tmp_path):
    """Default parameters (fewer trials) under a data root that holds none of the datasets: one chain
    from phantom eyes to the skimage retina host and grade-0 phantom hosts, the lesions cultured being the
    ones placed."""
    nb = run_notebook("00_quickstart.ipynb", "_embedded", twice=True, n_eyes=4, koch_trials=2, report_dir=str(tmp_path / "koch"))
    text = text_of(nb)
    assert "Data: embedded. Diseased eyes: 4 phantoms; healthy hosts: the skimage retina photo and 11 grade-0 phantoms" in text
    assert "of them lie on a drawn lesion" in text  # isolation checked against the exact masks
    assert "descriptors are the lesions placed and re-isolated below" in text  # the cultured bank is the placed one
    assert "local synthesis" in text  # the mode that measures best (docs/findings/synthesizer.md#local-mode)
    assert "On skimage-retina the photo without lesions is graded" in text and "from healthy to 16 lesions" in text
    assert "severity rose by" in text  # visible lesions the detector grades: more of them, sicker
    assert "2 inoculations, on 2 of 12 hosts (the skimage retina photo and 11 grade-0 phantoms). Verdict: inconclusive — only 2 distinct hosts" in text
    assert "The real lesions transplanted to the same places" in text
    # eyes, isolation steps, culture gallery, inoculation grid and zooms, Koch cases, severity, hits
    assert images_in(nb) >= 8
    assert (tmp_path / "koch" / "cultured_bank.safetensors").exists()
    page = (tmp_path / "koch" / "index.html").read_text()
    assert "data:image/png;base64," in page and "Spearman" in page and "transplant control: hit rate" in page


@pytest.mark.slow
def test_quickstart_with_real_data_when_present(tmp_path):
    if not has_real("DRIVE", "EyePACS", "CHASE_DB1"):
        pytest.skip("no real data root (KOCH_DATA or ../shared/data) with DRIVE, CHASE_DB1 and EyePACS")
    nb = run_notebook("00_quickstart.ipynb", "_auto", n_eyes=4, koch_trials=2, report_dir=str(tmp_path / "koch"))
    text = text_of(nb)
    assert "Data: real. Diseased eyes: 4 eyes of the EyePACS validation split" in text
    assert "DRIVE + CHASE_DB1 photos with their manual vessel trees" in text and "EyePACS carries no lesion masks" in text
    assert "descriptors are the lesions placed and re-isolated below" in text
    assert "2 inoculations, on 2 of 68 hosts (the 68 DRIVE" in text and "The placed lesions were re-found at" in text
    assert (tmp_path / "koch" / "index.html").exists()


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    """A data root that holds none of the datasets: a notebook must tell its story on the embedded data."""
    root = tmp_path / "empty_root"
    root.mkdir()
    monkeypatch.setenv("KOCH_DATA", str(root))
    return root


def needs_real(*datasets: str) -> None:
    if not has_real(*datasets):
        pytest.skip(f"no real data root (KOCH_DATA or ../shared/data) with {', '.join(datasets)}")


MINE = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REFERENCE_VALUES = {"0.1", "0.3", "0.5", "0.9", "1", "95%"}
"""Numbers a markdown cell may state: definitions (chance = 0.5, the sanity bars), never measurements."""


def cells_of(name: str) -> list[dict]:
    return json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())["cells"]


@pytest.mark.parametrize("name", MINE)
def test_notebook_parameters_name_data_device_and_paths_from_the_working_directory(name):
    params = "".join(next(c for c in cells_of(name) if "parameters" in c["metadata"].get("tags", []))["source"])
    assert re.search(r"^data = ", params, re.M) and re.search(r'^device = "auto"', params, re.M), name
    assert "../" not in params, f"{name}: a path relative to notebooks/ (papermill runs from anywhere)"
    code = "".join("".join(c["source"]) for c in cells_of(name) if c["cell_type"] == "code")
    assert "../reports" not in code and ".permute(0, 3, 1, 2)" not in code, name  # ke.predict_severity / ke.explain take arrays


@pytest.mark.parametrize("name", MINE)
def test_notebook_glossary_links_resolve(name):
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', (REPO / "docs" / "glossary.md").read_text()))
    md = "".join("".join(c["source"]) for c in cells_of(name) if c["cell_type"] == "markdown")
    links = re.findall(r"\]\(\.\./docs/glossary\.md#([^)]+)\)", md)
    assert links, f"{name} links no glossary term"
    assert not set(links) - anchors, f"{name}: glossary anchors missing: {sorted(set(links) - anchors)}"
    assert len(links) == len(set(links)), f"{name}: a term linked twice (link it at its first appearance only)"


@pytest.mark.parametrize("name", MINE)
def test_notebook_cells_can_be_rerun_without_rebinding_a_parameter(name):
    """A cell that rebinds a parameter (05 once turned `hosts` from a name into a list) fails when run again;
    the only rebinding allowed is the idempotent `x = x or default`."""
    cells = cells_of(name)
    params = {t.id for node in ast.parse("".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])).body
              if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    wrong = []
    for c in cells:
        if c["cell_type"] != "code" or "parameters" in c["metadata"].get("tags", []):
            continue
        src = "\n".join(line for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.For)) else []
            names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)} & params
            idempotent = (isinstance(node, ast.Assign) and isinstance(node.value, ast.BoolOp) and isinstance(node.value.op, ast.Or)
                          and isinstance(node.value.values[0], ast.Name) and {node.value.values[0].id} == names)
            if names and not idempotent:
                wrong.append(f"line {node.lineno}: {sorted(names)}")
    assert not wrong, f"{name} rebinds parameters: {wrong}"


@pytest.mark.parametrize("name", MINE)
def test_no_markdown_cell_states_a_measured_figure(name):
    """Figures go stale in prose: every measured number a reader sees is printed by a cell."""
    md = "".join("".join(c["source"]) for c in cells_of(name) if c["cell_type"] == "markdown")
    md = re.sub(r"\]\([^)]*\)|`[^`]*`", "", md)  # link targets and code spans are not figures
    assert not stated_figures(md), f"{name}: markdown states {stated_figures(md)}; print them from a cell instead"


def stated_figures(md: str) -> list[str]:
    """Figures a run computes, stated in prose: decimals and percentages (but the definitions in
    REFERENCE_VALUES), and integers in claims: a time or a size a run measures ("57 s", "2 GB") and a count
    out of a total ("52 of the eye's 62 lesions", "6 of them"). Integers that define (grades, the dose
    counts 0-16, image sizes in px, section numbers, years) are not claims."""
    decimals = set(re.findall(r"\b\d+\.\d+\b|\b\d+ ?%", md)) - REFERENCE_VALUES
    measured = set(re.findall(r"\b\d+(?:\.\d+)? ?(?:ms|s|sec|seconds?|GB|MB|kB)\b", md))
    out_of = set(re.findall(r"\b\d+ of (?:them\b|[^.,;:\d]{0,25}\d+\b(?! ?px))", md))
    return sorted(decimals | measured | out_of)


def test_the_stale_figure_check_sees_integers_in_claims_and_leaves_definitions():
    assert stated_figures("Section 4 takes 57 s and 1 GB; the boxes hold 52 of the eye's 62 lesions, 6 of them HE.") == [
        "1 GB", "52 of the eye's 62", "57 s", "6 of them"]
    assert stated_figures("Postulate 4 places 0, 1, 2, 4, 8 and 16 of the lesions on 256 px hosts of grade 3-4 (2019); "
                          "postulates 1-2 of the chain.") == []
    assert stated_figures("a severity of 1.45 in 95% of eyes, cut at 0.3") == ["1.45"]


def test_lesson_exercises_follow_a_picture_and_each_has_an_answer_and_its_tests():
    """06 is an nbgrader source (tests/test_assignment.py checks the assignment): every exercise comes after a
    picture of its section, then the cell with its answer (between solution markers, so the notebook runs
    top to bottom) and the test cell that grades it."""
    cells = cells_of("06_lesson_koch_for_cnns")
    exercises = [j for j, c in enumerate(cells) if re.match(r"\*\*Exercise \w+\*\*", "".join(c["source"]))]
    assert len(exercises) >= 6
    for j in exercises:
        section = max(i for i in range(j) if "".join(cells[i]["source"]).startswith("## "))
        name = "".join(cells[j]["source"]).split("**")[1]
        assert any(c["cell_type"] == "code" and "plt.show()" in "".join(c["source"]) for c in cells[section:j]), \
            f"{name} comes without a picture drawn before it"
        answer, tests = (cells[j + 1]["metadata"].get("nbgrader", {}), cells[j + 2]["metadata"].get("nbgrader", {}))
        assert answer.get("solution") and "### BEGIN SOLUTION" in "".join(cells[j + 1]["source"]), f"{name}: no answer cell after it"
        assert tests.get("grade") and tests.get("points"), f"{name}: no test cell after its answer"


@pytest.mark.slow
def test_detector_notebook_on_embedded_data(empty_root):
    nb = run_notebook("01_detector.ipynb", "_embedded")
    text = text_of(nb)
    assert "Between the photo and the severity lie" in text
    assert "phantom validation eyes the detector's grades agree with the graders' at QWK" in text
    assert "DRIVE / EyePACS not found, so the healthy photo is scikit-image's: the EyePACS detector grades it" in text
    assert images_in(nb) == 2  # grading panels, the healthy photo


@pytest.mark.slow
def test_detector_notebook_on_real_data_when_present():
    needs_real("EyePACS", "DRIVE")
    nb = run_notebook("01_detector.ipynb", "_real")
    text = text_of(nb)
    assert "EyePACS validation eyes the detector's grades agree with the graders' at QWK" in text
    assert "DRIVE's photos average severity" in text and images_in(nb) == 2


SMALL_02 = dict(n_phantoms=4, n_show=3, n_per_grade=4, n_sanity=6, sanity_methods="deconvnet,guided-gradcam,gradient,random")


@pytest.mark.slow
def test_isolate_notebook_on_embedded_data(empty_root, tmp_path):
    nb = run_notebook("02_isolate.ipynb", "_embedded", picked_bank=str(tmp_path / "picked.safetensors"), **SMALL_02)
    text = text_of(nb)
    assert "sections 2 and 4 read 60 phantom validation eyes" in text
    assert "components and" in text and "the boxes found" in text and "to pick from" in text
    assert "phantom validation eyes of grade 3 or 4" in text and "Eyes of grade 0 yield" in text
    assert "puts the most evidence on the phantoms' true lesions" in text and "sanity lines" in text
    assert images_in(nb) >= 7  # steps x3, severe eyes, lesions per grade, pixel AUC bars, methods side by side


@pytest.mark.slow
def test_isolate_notebook_on_real_data_when_present(tmp_path):
    needs_real("EyePACS", "IDRiD_lesions")
    nb = run_notebook("02_isolate.ipynb", "_real", picked_bank=str(tmp_path / "picked.safetensors"), **SMALL_02)
    text = text_of(nb)
    assert "EyePACS validation eyes of grade 3 or 4" in text and "Eyes of grade 0 yield" in text
    assert "the IDRiD experts' lesions" in text and "sanity lines" in text
    assert images_in(nb) >= 7


@pytest.mark.slow
def test_culture_notebook_on_embedded_data(empty_root, tmp_path):
    nb = run_notebook("03_culture.ipynb", "_embedded", twice=True, n_eyes=4, bank_file=str(tmp_path / "bank.safetensors"),
                      picked_bank=str(tmp_path / "picked.safetensors"))
    text = text_of(nb)
    assert "descriptors from 4 phantoms" in text and "types:" in text and "Half of the descriptors cover fewer than" in text
    assert "select kept" in text and "relocate moved #0 by" in text and "count(12) added 9 copies" in text
    assert "saved and reloaded" in text and "(identical Gram matrices)" in text
    assert (tmp_path / "bank.safetensors").exists() and images_in(nb) == 4  # gallery, histograms, operations, the picker's picture


@pytest.mark.slow
def test_culture_notebook_on_real_data_when_present(tmp_path):
    needs_real("EyePACS")
    nb = run_notebook("03_culture.ipynb", "_real", n_eyes=4, bank_file=str(tmp_path / "bank.safetensors"),
                      picked_bank=str(tmp_path / "picked.safetensors"))
    text = text_of(nb)
    assert "descriptors from 4 EyePACS grade >= 2 validation eyes (guided-gradcam from conv8)" in text
    assert "select kept" in text and "saved and reloaded" in text and images_in(nb) == 4


@pytest.mark.slow
def test_reisolate_notebook_on_embedded_data(empty_root, tmp_path):
    """05 without data: the whole Koch test on scikit-image's photo and grade-0 phantoms, a complete report."""
    nb = run_notebook("05_reisolate.ipynb", "_embedded", trials=2, compare_methods="deconvnet", compare_trials=1,
                      report_dir=str(tmp_path / "report"))
    text = text_of(nb)
    assert "Hosts: scikit-image's healthy retina photo and 11 grade-0 phantoms (no data found)" in text
    assert "Koch test on embedded data, 2 trials" in text and "The placed lesions were re-found at" in text
    assert "placed lesions were re-found and" in text and "The mean severity went from" in text
    assert "synthesized lesions were re-found at" in text and "Re-isolated by deconvnet, the placed lesions were re-found at" in text
    assert (tmp_path / "report" / "index.html").exists() and images_in(nb) >= 5


@pytest.mark.slow
def test_reisolate_notebook_in_local_mode_without_data(empty_root, tmp_path):
    """05 with mode="local": the lesions grown in scikit-image's photo, the rest of it untouched."""
    nb = run_notebook("05_reisolate.ipynb", "_local", mode="local", trials=2, compare_methods="", report_dir=str(tmp_path / "report"))
    text = text_of(nb)
    assert "local synthesis, the synthesizer trained" in text and "Koch test on embedded data, 2 trials on 2 distinct hosts, local synthesis" in text
    assert "The placed lesions were re-found at" in text and "transplanted real ones at" in text
    assert (tmp_path / "report" / "index.html").exists()


@pytest.mark.slow
def test_reisolate_notebook_on_real_data_when_present(tmp_path):
    needs_real("DRIVE", "CHASE_DB1")
    nb = run_notebook("05_reisolate.ipynb", "_real", trials=3, compare_methods="deconvnet", compare_trials=2,
                      report_dir=str(tmp_path / "report"))
    text = text_of(nb)
    assert "Hosts: 68 healthy DRIVE + CHASE_DB1 hosts" in text and "Koch test on real data (trees hosts), 3 trials" in text
    assert "The placed lesions were re-found at" in text and "transplanted real ones at" in text
    assert (tmp_path / "report" / "index.html").exists() and images_in(nb) >= 5


@pytest.mark.slow
def test_lesson_notebook_on_embedded_data(empty_root):
    """The teacher's copy (answers and hidden tests in place) runs top to bottom and reads its answers."""
    nb = run_notebook("06_lesson_koch_for_cnns.ipynb", "_embedded", n=3, trials=2)
    text = text_of(nb)
    assert "Healthy phantoms get severity" in text and "of the 3 grade-4 phantoms are graded 3 or 4" in text
    assert "components per phantom; recall" in text and "Cut at half of its peak, the deconvnet finds" in text
    assert "On 3 grade-4 phantoms with the 'phantom' detector," in text and "randomisation similarity" in text
    assert "12 healthy hosts (skimage-retina, phantom-host-0, phantom-host-1, ...): the Koch test below inoculates 2 distinct ones" in text
    assert "With the synthesizer: Verdict: inconclusive — only 2 distinct hosts" in text and "With the noise synthesizer:" in text
    assert "Breaking the synthesizer moved the hit rate" in text
    assert images_in(nb) == 7  # a picture per section, and the answers of exercises 1, 2 and 4 drawn


def widget_pictures(nb: dict) -> int:
    """Static pictures that follow a widget's view in the same cell (what an HTML report shows of it)."""
    return sum(1 for c in nb["cells"] for i, o in enumerate(c.get("outputs", []))
               if "image/png" in o.get("data", {}) and any("application/vnd.jupyter.widget-view+json" in p.get("data", {})
                                                          for p in c["outputs"][:i]))


@pytest.mark.slow
def test_inoculate_notebook_on_embedded_data(empty_root, tmp_path):
    """Default parameters (a few steps) under a data root that holds none of the datasets: the grid on
    the embedded photo, then picking, placing and retraining on phantoms (the trainer has no embedded
    training set), the clicks made through the widgets' own calls."""
    nb = run_notebook("04_inoculate.ipynb", "_embedded", retrain_steps=4, preview_every=2, n_hosts=1,
                      run_dir=str(tmp_path / "retrain"))
    text = text_of(nb)
    assert "embedded setup: generator synth_cpu256" in text and "from the shipped bank" in text
    assert "hands-on: phantom setup (not embedded" in text and "the EyePACS detector grades what you place" in text
    assert "picked: 3 of" in text and "3 lesions placed on phantom_" in text
    # the lesions a student places raise the severity (the phantom detector's would stay flat)
    placed, healthy = map(float, re.search(r"grades the synthesis (\d+\.\d+), the same host without lesions (\d+\.\d+)", text).groups())
    assert placed > healthy + 0.05, (placed, healthy)
    assert "retrained 4 steps on 3 placed lesions" in text and "The retrained generator changes its healthy drawing" in text
    assert "3 lesions grown in the photo skimage-retina" in text and "all within a few px of a lesion" in text
    assert (tmp_path / "retrain" / "run_layout1" / "generator.safetensors").exists()
    assert widget_pictures(nb) == 4  # picker, placer, local placer, trainer: each widget leaves its picture
    assert images_in(nb) == 6  # + the grid and the before/after row


@pytest.mark.slow
def test_inoculate_notebook_on_real_data_with_03s_bank(tmp_path):
    if not has_real("DRIVE", "CHASE_DB1", "EyePACS"):
        pytest.skip("no real data root (KOCH_DATA or ../shared/data) with DRIVE, CHASE_DB1 and EyePACS")
    import koch_explore as ke

    bank_file = tmp_path / "culture_bank.safetensors"
    ke.load_bank("real").select(indices=list(range(6))).save(bank_file)  # what 03_culture saves: a bank of this detector
    nb = run_notebook("04_inoculate.ipynb", "_real", retrain_steps=4, preview_every=2, n_hosts=1, bank_file=str(bank_file),
                      run_dir=str(tmp_path / "retrain"))
    text = text_of(nb)
    assert "real setup: generator synth_cpu256" in text and f"6 descriptors from 03's bank {bank_file}" in text
    assert "hands-on: real setup (as above)" in text and "you pick on EyePACS" in text
    assert "retrained 4 steps on 3 placed lesions" in text and "3 lesions grown in the photo DRIVE/" in text
    assert widget_pictures(nb) == 4 and images_in(nb) == 6


@pytest.mark.slow
def test_audit_notebook_builds_trains_and_audits_its_own_model(empty_root, tmp_path):
    """07 with default parameters but smaller sections, under a data root that holds none of the datasets: it
    builds a small ResNet, trains it on phantoms, adapts it and audits it with ke.audit on phantoms, its population."""
    nb = run_notebook("07_audit_your_model.ipynb", "_embedded", trials=2, train_steps=60, sanity_count=6,
                      sanity_random=2, localisation_count=3, report_dir=str(tmp_path / "report"))
    text = text_of(nb)
    assert "The adapter reads the output as 'softmax'; Grad-CAM uses 'stage4' (32 px per cell" in text
    assert "verdict: inconclusive (only 2 distinct hosts (at least 8 needed))" in text
    assert "grading: referable AUC" in text and "(phantom)" in text and "localisation (phantom): guided-gradcam: pointing game" in text
    assert "read with care: measured on phantoms" in text
    assert images_in(nb) >= 6  # grading, sanity, localisation, maps, Koch cases, severity, re-isolation
    page = (tmp_path / "report" / "index.html").read_text()
    assert "data:image/png;base64," in page and "grade-0 phantom hosts" in page
    assert (tmp_path / "report" / "figures" / "grading.svg").is_file() and (tmp_path / "report" / "audit.json").is_file()
