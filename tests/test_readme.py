"""The README's Python tour is the API's first promise: it runs, as written, on the embedded data."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_code() -> str:
    text = README.read_text()
    section = text.split("## Python tour", 1)
    assert len(section) == 2, "README has no '## Python tour' section"
    block = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert block, "the Python tour has no python code block"
    return block.group(1)


LOCAL_PAIR = 'ke.load_bank("local"), ke.load_synthesizer("local")'


@pytest.mark.parametrize("mode", ["local", "whole"])
def test_the_python_tour_runs_on_the_embedded_data(mode, tmp_path, monkeypatch, capsys):
    """As written (local mode), and with the whole-fundus pair its comment offers: both shipped synthesizers
    answer the same calls (issue 39)."""
    monkeypatch.chdir(tmp_path)
    # an empty data root: the tour must need nothing but the wheel
    (tmp_path / "no-data").mkdir()
    monkeypatch.setenv("KOCH_DATA", str(tmp_path / "no-data"))
    code = tour_code()
    assert LOCAL_PAIR in code, "the tour no longer loads the local pair this test swaps"
    if mode == "whole":
        code = code.replace(LOCAL_PAIR, 'ke.load_bank("real"), ke.load_synthesizer("real")')
    script = tmp_path / "tour.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "severity" in out and "descriptors" in out and "hit rate" in out and "placement AUC" in out
    assert (tmp_path / "reports" / "tour" / "index.html").is_file()
