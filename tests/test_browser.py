"""A real browser on the real product: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

Opens ``02_isolate`` (a parametrised copy: phantom section only, guided-backprop evidence, which
isolates single phantom lesions), runs all cells, raises the threshold slider with the arrow keys, and checks that the lesion count changes and box overlays are drawn. The
screenshot lands in ``reports/browser_threshold.png``. ``make test`` installs Chromium (apt) when it
runs as root; elsewhere the test skips and says what is missing.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("KOCH_CHROMIUM", "/usr/bin/chromium"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def lab(tmp_path):
    """A JupyterLab server over a scratch copy of the notebook (the committed one stays output-free)."""
    papermill = pytest.importorskip("papermill")
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    (root / "reports").mkdir()
    os.symlink(REPO / "koch_explore", root / "koch_explore")
    papermill.execute_notebook(str(REPO / "notebooks" / "02_isolate.ipynb"), str(root / "notebooks" / "02_isolate.ipynb"),
                               parameters=dict(data="phantom", n_phantoms=4, n_show=3, method="guided-backprop"), prepare_only=True, kernel_name="python3")
    port, token = _free_port(), "koch-browser-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--ServerApp.open_browser=False", "--allow-root", "--LabApp.extension_manager=readonly", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_threshold_slider_in_jupyterlab(lab):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make test does, as root) to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed (pip install playwright)")
    url, token = lab
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                           "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/lab/tree/notebooks/02_isolate.ipynb?token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], .jp-Toolbar-kernelStatus", timeout=120_000)
        time.sleep(2)  # let the kernel connection settle before the first execute
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        count = page.locator(".koch-count").first
        count.wait_for(timeout=300_000)
        before = count.inner_text()
        assert page.locator("svg.koch-view rect.koch-box").count() >= 1, "no box overlay drawn"

        handle = page.locator(".widget-slider .noUi-handle").first
        readout = page.locator(".widget-slider .widget-readout").first
        handle.scroll_into_view_if_needed()
        start_value = readout.inner_text()
        after = before
        for _ in range(18):  # raise the cut 0.05 at a time (arrow keys on the focused handle)
            handle.focus()
            for _ in range(5):
                page.keyboard.press("ArrowRight")
            deadline = time.time() + 5
            while time.time() < deadline and count.inner_text() == after:
                time.sleep(0.1)
            after = count.inner_text()
            if after != before and not after.startswith("0 "):
                break
        moved_value = readout.inner_text()
        out = REPO / "reports"
        out.mkdir(exist_ok=True)
        time.sleep(1)  # the SVG is replaced on every redraw: let the last one land
        widget = page.locator(".jp-OutputArea-output:has(.koch-count)").first
        widget.screenshot(path=str(out / "browser_threshold.png"))
        boxes = page.locator("svg.koch-view rect.koch-box").count()
        browser.close()
    assert moved_value != start_value, f"the slider did not move ({start_value})"
    assert after != before, f"lesion count did not change after moving the slider ({before!r})"
    assert re.search(r"\d+ lesion", after) and boxes >= 1
