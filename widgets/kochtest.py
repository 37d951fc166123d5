"""``KochTestRunner``: the Koch test (postulate 4) on a button, for a class that has no code to run.

One press inoculates the hosts with 0 and more lesions, re-isolates them with the detector, and shows the
verdict with its reasons, the severity by lesion count, and one inoculated host with the placed lesions
(cyan) and what the detector re-isolated (green on a placed lesion, red elsewhere). The test runs in the
click's handler: a few trials on the embedded hosts take seconds, and the status line says it is running
before it starts (a widget's new value is sent at once, even from a busy handler).
"""

from __future__ import annotations

import html
import time

import numpy as np

from koch_explore.koch.report import figure_severity, verdict_block
from koch_explore.koch.test import KochConfig, koch_test

from ._render import (
    BLANK_PNG,
    close_widgets,
    encode,
    figure_png,
    new_figure,
    plain_text,
    snapshot_panels,
    to_uint8,
)

__all__ = ["KochTestRunner"]


class KochTestRunner:
    """A trials box and a "run the Koch test" button over ``hosts`` (dicts as :func:`koch_explore.koch_test`
    takes them; for a local-mode synthesizer {"image", "fov", "name"} is enough, e.g.
    :func:`koch_explore.embedded_hosts` with ``trees=False``), placing ``counts`` lesions from ``bank``.

    Plain-Python API: :meth:`run` (what the button does; returns the :class:`~koch_explore.KochReport`),
    :attr:`report`, :meth:`snapshot`, :meth:`close`. ``control``: also transplant the real lesions to the
    same places (without it a lesion-driven verdict rests on the synthesized lesions alone, and a flat
    response cannot be called not-lesion-driven)."""

    def __init__(self, detector, synthesizer, bank, hosts, trials: int = 2, counts=(0, 2, 8), seed: int = 0,
                 max_trials: int = 16, control: bool = True):
        import ipywidgets as W

        if not len(hosts):
            raise ValueError("no host to inoculate")
        self.detector, self.synth, self.bank, self.hosts = detector, synthesizer, bank, list(hosts)
        self.counts, self.seed, self.control = tuple(int(c) for c in counts), int(seed), bool(control)
        self.report = None
        self.seconds: float | None = None
        self.trials_box = W.BoundedIntText(value=int(trials), min=1, max=int(max_trials), description="trials",
                                           layout=W.Layout(width="160px"))
        self.run_button = W.Button(description="run the Koch test", button_style="primary", layout=W.Layout(width="auto"),
                                   tooltip="inoculate the hosts, re-isolate, score, decide")
        self.status = W.HTML()
        self.verdict = W.HTML()
        # a transparent pixel until the first run: an empty image widget draws a broken-image icon
        self.severity_view = W.Image(value=BLANK_PNG, format="png", layout=W.Layout(width="460px"))
        self.case_view = W.Image(value=BLANK_PNG, format="png", layout=W.Layout(width="690px"))
        self.run_button.on_click(lambda _b: self.run())
        self._rows = [W.HBox([self.trials_box, self.run_button, self.status]), self.verdict,
                      W.HBox([self.severity_view, self.case_view])]
        self.widget = W.VBox(self._rows)
        self._say("not run yet", f"press the button: {'/'.join(map(str, self.counts))} lesions placed on "
                                 f"{len(self.hosts)} host{'s' if len(self.hosts) != 1 else ''}")

    # -- API -----------------------------------------------------------------------------------

    def run(self, trials: int | None = None):
        """Run the test with ``trials`` (default: the trials box) and show it; returns the report."""
        n = int(trials or self.trials_box.value)
        self.run_button.disabled = True
        self._say("running", f"{n} trial{'s' if n != 1 else ''}, {'/'.join(map(str, self.counts))} lesions each")
        t0 = time.perf_counter()
        try:
            report = koch_test(self.detector, self.synth, self.bank, self.hosts, progress=False,
                               config=KochConfig(trials=n, counts=self.counts, seed=self.seed, control=self.control))
        except Exception as exc:  # shown where the person looks, then raised for a caller of run()
            self._say("failed", str(exc))
            raise
        finally:
            self.run_button.disabled = False
        self.report, self.seconds = report, time.perf_counter() - t0
        self.verdict.value = verdict_block(report) + f"<p>{html.escape(report.reading())}</p>"
        self.severity_view.value = figure_png(self._severity_figure())
        self.case_view.value = encode(self._case_picture())
        self._say(report.verdict, f"{report.n_trials} trials in {self.seconds:.1f} s")
        return report

    def snapshot(self):
        """The widget's current state as a matplotlib ``Figure``: the severity by count and the inoculated
        host (or a note that the test has not run), with the status line and the reading below."""
        if self.report is None:
            panels = [{"draw": lambda ax: (ax.axis("off"), ax.text(0.5, 0.5, "not run yet", ha="center", transform=ax.transAxes))}]
            return snapshot_panels(panels, plain_text(self.status.value))
        case = self.report.cases[0]
        panels = [{"draw": lambda ax: figure_severity(self.report, ax=ax), "title": "severity by placed lesions"},
                  {"image": np.clip(case.inoculated, 0, 1), "boxes": case.placed_boxes,
                   "title": f"{len(case.placed_boxes)} lesions placed on {case.host}"}]
        return snapshot_panels(panels, plain_text(self.status.value) + " · " + self.report.reading(), panel_size=4.0)

    def close(self) -> None:
        self.run_button._click_handlers.callbacks.clear()
        close_widgets(self.widget, *self._rows, self.trials_box, self.run_button, self.status, self.verdict,
                      self.severity_view, self.case_view)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- internals -----------------------------------------------------------------------------

    def _say(self, state: str, detail: str) -> None:
        self.status.value = f'<span class="koch-test-state">{html.escape(state)}</span>: {html.escape(detail)}'

    def _severity_figure(self):
        fig = new_figure(4.6, 3.2)
        figure_severity(self.report, ax=fig.add_subplot(1, 1, 1))
        fig.tight_layout()
        return fig

    def _case_picture(self) -> np.ndarray:
        """One kept case side by side: the healthy host, the inoculated one with the placed boxes (cyan), and
        its evidence map over it with the re-isolated boxes (green on a placed lesion, red elsewhere)."""
        import cv2

        from koch_explore.plotting import mosaic, overlay_evidence

        c = self.report.cases[0]
        inoculated = to_uint8(np.clip(c.inoculated, 0, 1))
        evidence = overlay_evidence(inoculated, np.where(c.fov, c.evidence, 0.0), c.fov, alpha=0.55)
        for (x0, y0, x1, y1) in c.placed_boxes:
            cv2.rectangle(inoculated, (x0, y0), (x1 - 1, y1 - 1), (0, 229, 255), 1)
        for (x0, y0, x1, y1), spurious in zip(c.found_boxes, c.spurious):
            cv2.rectangle(evidence, (x0, y0), (x1 - 1, y1 - 1), (255, 40, 40) if spurious else (0, 255, 102), 1)
        severities = c.severities
        n = max(severities)
        titles = [f"healthy ({severities[0]:.2f})", f"{n} placed ({severities[n]:.2f})",
                  f"re-isolated: {sum(c.hits)}/{len(c.hits)} found"]
        return mosaic([to_uint8(np.clip(c.healthy, 0, 1)), inoculated, evidence], titles, tile=c.inoculated.shape[1], cols=3)
