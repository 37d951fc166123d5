"""The lesson (notebooks/06_lesson_koch_for_cnns.ipynb) as an nbgrader assignment: the notebook is nbgrader's
*source* (answers between solution markers, hidden tests), the students' copy committed under
notebooks/assignment/release/ is exactly what ``nbgrader generate_assignment`` makes of it, and autograding
gives the source's answers full marks and the unanswered students' copy none. The course is built in a
temporary folder with notebooks/assignment/nbgrader_config.py, its gradebook there too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "notebooks" / "06_lesson_koch_for_cnns.ipynb"
COURSE = REPO / "notebooks" / "assignment"
NAME = "koch_lesson"
RELEASED = COURSE / "release" / NAME / f"{NAME}.ipynb"
SMALL = {"n": 3, "trials": 2}
"""The parameters the autograded submissions run with (the parameters cell is not an nbgrader cell: a student may
change it, and nbgrader keeps what was submitted): the class profile's own sizes take twice as long."""


def cells(path: Path = SOURCE) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def meta(cell: dict) -> dict:
    return cell["metadata"].get("nbgrader", {})


def src(cell: dict) -> str:
    return "".join(cell["source"])


def kind(cell: dict) -> str:
    m = meta(cell)
    if not m:
        return "plain"
    if m["solution"] and m["grade"]:
        return "written"  # a manually graded answer
    if m["solution"]:
        return "answer"  # an autograded answer: the test cell after it grades it
    if m["grade"]:
        return "tests"
    return "locked"


# ------------------------------------------------------------------------------------------------ the source


def test_the_lesson_is_an_nbgrader_source_with_an_answer_and_hidden_tests_per_exercise():
    cs = cells()
    graded = [c for c in cs if meta(c)]
    ids = [meta(c)["grade_id"] for c in graded]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    assert all(meta(c)["schema_version"] == 3 for c in graded)
    params = [c for c in cs if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and not meta(params[0]), "one parameters cell, left to the student (no nbgrader metadata)"
    assert re.search(r"^profile = None\b", src(params[0]), re.M)
    assert any('ke.use_profile(globals(), "06_lesson_koch_for_cnns")' in src(c) and kind(c) == "locked" for c in cs)
    for i, c in enumerate(cs):
        k = kind(c)
        if k == "answer":
            assert c["cell_type"] == "code" and "### BEGIN SOLUTION" in src(c) and "### END SOLUTION" in src(c), meta(c)["grade_id"]
            assert kind(cs[i + 1]) == "tests", f"{meta(c)['grade_id']}: its test cell must follow it"
            question = src(cs[i - 1])
            assert cs[i - 1]["cell_type"] == "markdown" and re.match(r"\*\*Exercise \w+\*\* \(code, \d+ points?\)", question)
            assert f"{meta(cs[i + 1])['points']} point" in question, "the question states the points its test gives"
        elif k == "tests":
            assert meta(c)["locked"] and meta(c)["points"] > 0 and kind(cs[i - 1]) == "answer"
            visible, _, rest = src(c).partition("### BEGIN HIDDEN TESTS\n")
            hidden = rest.partition("### END HIDDEN TESTS")[0]
            assert "assert" in visible and hidden.count("assert") >= 2, f"{meta(c)['grade_id']}: visible and hidden checks"
        elif k == "written":
            assert c["cell_type"] == "markdown" and meta(c)["points"] > 0
            assert re.match(r"\*\*Question \d+\*\* \(in words, \d+ points?\)", src(cs[i - 1]))
    kinds = [kind(c) for c in cs]
    assert kinds.count("answer") == kinds.count("tests") >= 6 and kinds.count("written") >= 4
    md = "\n".join(src(c) for c in cs if c["cell_type"] == "markdown")
    assert "**Learning objectives.**" in src(cs[0]) and "## What you learned" in md
    # the plan names every section, says its minutes are an estimate, and links the measured compute
    sections = re.findall(r"^## (\d) · ", md, re.M)
    assert sections == ["1", "2", "3", "4"]
    assert all(f"| {s} · " in src(cs[0]) for s in sections)
    assert "(estimate)" in src(cs[0]) and "teaching.md#plan" in src(cs[0])


# ------------------------------------------------------------------------------------------------ nbgrader


def nbgrader(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run nbgrader in the course ``root``. nbgrader runs ``alembic`` from PATH, so the interpreter's bin folder
    goes first (``make test`` runs .venv/bin/python without activating the venv)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    run = subprocess.run([sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={root}",
                          f"--CourseDirectory.db_url=sqlite:///{root / 'gradebook.db'}"],
                         cwd=root, env={**os.environ, "PATH": path, **env}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course root with the lesson as ``source/koch_lesson/koch_lesson.ipynb``, generated once."""
    pytest.importorskip("nbgrader")
    root = tmp_path_factory.mktemp("course")
    (root / "source" / NAME).mkdir(parents=True)
    shutil.copy(SOURCE, root / "source" / NAME / f"{NAME}.ipynb")
    shutil.copy(COURSE / "nbgrader_config.py", root / "nbgrader_config.py")
    nbgrader(root, "generate_assignment", NAME, "--force")
    return root


def test_committed_student_copy_is_what_generate_assignment_makes(course):
    made = json.loads((course / "release" / NAME / f"{NAME}.ipynb").read_text())
    assert RELEASED.is_file(), f"{RELEASED.relative_to(REPO)} is missing: see notebooks/assignment/README.md"
    assert json.loads(RELEASED.read_text()) == made, (
        f"{RELEASED.relative_to(REPO)} differs from what nbgrader generate_assignment makes of the lesson: regenerate it "
        "(notebooks/assignment/README.md)")
    text = RELEASED.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
        assert marker not in text, f"the students' copy shows {marker!r}"
    student = cells(RELEASED)
    assert len(student) == len(cells())
    answers = [c for c in student if kind(c) == "answer"]
    assert answers and all("raise NotImplementedError()" in src(c) for c in answers)
    assert all(src(c) == "YOUR ANSWER HERE" for c in student if kind(c) == "written")
    assert not any(c.get("outputs") for c in student if c["cell_type"] == "code")


def submit(course: Path, student: str, notebook: Path, **parameters) -> None:
    """``notebook`` as ``student``'s submission, with ``parameters`` written into its parameters cell."""
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    text = src(cell)
    for key, value in parameters.items():
        text, found = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", text, flags=re.M)
        assert found == 1, f"no parameter {key!r}"
    cell["source"] = text
    out = course / "submitted" / student / NAME / f"{NAME}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(nb))


@pytest.mark.slow
def test_autograde_gives_the_answers_full_marks_and_the_unanswered_copy_none(course, tmp_path):
    """The source as submitted (its answers in place) and the students' copy as handed out (nothing answered),
    autograded in the class profile on one thread; the scores are read from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    submit(course, "teacher", SOURCE, **SMALL)
    submit(course, "blank", RELEASED, **SMALL)
    empty = tmp_path / "no_data"
    empty.mkdir()
    nbgrader(course, "autograde", NAME, "--force", KOCH_PROFILE="class", OMP_NUM_THREADS="1", KOCH_DATA=str(empty))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: {g.name: (g.cell_type, g.auto_score, g.max_score) for g in gb.find_submission_notebook(NAME, NAME, s).grades}
                  for s in ("teacher", "blank")}
    code = {name: (auto, top) for name, (t, auto, top) in scores["teacher"].items() if t == "code"}
    assert len(code) >= 6 and sum(top for _, top in code.values()) >= 15
    short = {name: f"{auto} of {top}" for name, (auto, top) in code.items() if auto != top}
    assert not short, f"the source's own answers lose marks: {short}"
    assert all(auto is None for t, auto, _ in scores["teacher"].values() if t == "markdown"), "written answers are the teacher's to grade"
    given = {name: auto for name, (_, auto, _) in scores["blank"].items() if auto != 0}
    assert not given and set(scores["blank"]) == set(scores["teacher"]), f"the unanswered copy scores: {given}"
    ran = json.loads((course / "autograded" / "teacher" / NAME / f"{NAME}.ipynb").read_text())
    errors = [f"{meta(c).get('grade_id')}: {o.get('ename')}" for c in ran["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"the answers raised: {errors}"
    printed = "".join("".join(o.get("text", "")) for c in ran["cells"] for o in c.get("outputs", []))
    assert "profile class: 1 torch thread" in printed and f"{SMALL['n']} healthy and {SMALL['n']} grade-4 phantoms" in printed
