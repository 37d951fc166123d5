"""``ThresholdExplorer``: slide the isolation threshold and watch the lesions appear and merge.

The evidence map is computed once; a slider move only re-thresholds the cached blurred map and
re-labels its components (no network, no blur), then redraws an SVG: the fundus (encoded once), a
transparent mask overlay, one ``rect.koch-box`` per component. That keeps a redraw at 512 px well
under 30 ms (``benchmarks/bench_widgets.py``).

The rule buttons switch between the paper's global cut (every pixel above the threshold, components as
they connect), the peaks rule (one component per local maximum, grown to a fraction of its own height;
docs/findings/evidence.md#peaks-rule) and both side by side, so a class sees why clustered lesions
share a box under one rule and not under the other.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from koch_explore.culture.cut import (
    DEFAULT_RULE,
    RULE_THRESHOLDS,
    RULES,
    Segmentation,
    cut_components,
    default_blur_sigma,
    default_min_area,
    default_threshold,
    peak_components,
    segment,
)

from ._render import (
    close_widgets,
    data_url,
    plain_text,
    snapshot_panels,
    svg_view,
    to_uint8,
)

__all__ = ["ThresholdExplorer"]


class ThresholdExplorer:
    """Fundus + evidence map, a threshold slider, an Otsu button, the rule (global, peaks or both side
    by side), the live mask, boxes and count.

    Plain-Python API: :meth:`set_threshold`, :meth:`otsu`, :meth:`set_rule`, :meth:`set_eye` (another image and
    map, same threshold and rule), :attr:`segmentation` (the
    shown rule's; the global one under "both"), :attr:`segmentations` (rule -> segmentation shown),
    :attr:`count`, :attr:`last_redraw_ms`, :meth:`snapshot`; :meth:`close` releases the widgets and
    their observers.
    """

    def __init__(self, image: np.ndarray, evidence: np.ndarray, fov: np.ndarray | None = None,
                 threshold: float | None = None, rule: str = DEFAULT_RULE,
                 min_area: int | None = None, width: int = 512, title: str = ""):
        import ipywidgets as W

        if threshold is None:  # the rule's own default ("both" starts at the default rule's)
            threshold = default_threshold(rule if rule in RULE_THRESHOLDS else DEFAULT_RULE)
        if rule not in (*RULES, "both"):
            raise ValueError(f"rule {rule!r}: one of {(*RULES, 'both')}")
        self._min_area_given = min_area
        self.width = width
        self.segmentations: dict[str, Segmentation] = {}
        self.last_redraw_ms = float("nan")
        self._take_eye(image, evidence, fov, threshold)

        self.slider = W.FloatSlider(value=float(threshold), min=0.0, max=1.0, step=0.01, description="threshold",
                                    continuous_update=True, readout_format=".2f", layout=W.Layout(width="420px"))
        self.otsu_button = W.Button(description="Otsu", tooltip="set the threshold by Otsu's method")
        self.rule_buttons = W.ToggleButtons(options=[*RULES, "both"], value=rule, description="rule",
                                            tooltips=["every pixel above the cut (the paper's)",
                                                      "one component per local maximum", "both side by side"])
        self.count_label = W.HTML()
        self.view = W.HTML()
        self.peaks_view = W.HTML()  # the second panel, shown under "both"
        self.slider.observe(self._on_slider, names="value")
        self.rule_buttons.observe(self._on_slider, names="value")
        self.otsu_button.on_click(lambda _b: self.otsu())
        self._header = W.HTML(self._title_markup(title))
        self._row = W.HBox([self.slider, self.otsu_button, self.count_label])
        self._views = W.HBox([self.view, self.peaks_view])
        self.widget = W.VBox([self._header, self._row, self.rule_buttons, self._views])
        self.redraw()

    # -- API -----------------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        return float(self.slider.value)

    @property
    def rule(self) -> str:
        return str(self.rule_buttons.value)

    @property
    def count(self) -> int:
        return len(self.segmentation.boxes)

    def set_rule(self, rule: str) -> None:
        """"global", "peaks" or "both" (side by side); the observer redraws."""
        if rule not in (*RULES, "both"):
            raise ValueError(f"rule {rule!r}: one of {(*RULES, 'both')}")
        self.rule_buttons.value = rule

    def set_threshold(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"threshold is a fraction of the map's maximum in [0, 1], got {value}")
        self.slider.value = float(value)  # the observer redraws

    def otsu(self) -> float:
        """Set the threshold by Otsu's method on the blurred map (inside the FOV); returns it."""
        values = np.round(self._blurred[self._fov] * 255).astype(np.uint8).reshape(1, -1)
        t = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0] if values.size else 255.0
        self.set_threshold(min(1.0, (t + 0.5) / 255.0))
        return self.threshold

    def set_eye(self, image: np.ndarray, evidence: np.ndarray, fov: np.ndarray | None = None, title: str = "") -> None:
        """Show another image and its evidence map (an eye chosen from a list), at the same threshold and
        rule: the map is blurred once, as at construction, and the view redrawn."""
        self._take_eye(image, evidence, fov, self.threshold)
        self._header.value = self._title_markup(title)
        self.redraw()

    def redraw(self) -> None:
        t0 = time.perf_counter()
        shown = list(RULES) if self.rule == "both" else [self.rule]
        self.segmentations = {r: self._segment(self.threshold, r) for r in shown}
        self.segmentation = self.segmentations[shown[0]]
        width = self.width // 2 if len(shown) > 1 else self.width
        for view, r in zip((self.view, self.peaks_view), shown):
            seg = self.segmentations[r]
            overlay = np.zeros((*self.shape, 4), np.uint8)
            overlay[seg.mask] = (255, 220, 0, 110)
            view.value = (f"<div style='font-size:11px'>{r}</div>" if len(shown) > 1 else "") + \
                svg_view(self._background, self.shape, data_url(overlay), seg.boxes, width=width)
        if len(shown) == 1:
            self.peaks_view.value = ""
        counts = [len(self.segmentations[r].boxes) for r in shown]
        text = " · ".join(f"{r}: {n}" if len(shown) > 1 else f"{n}" for r, n in zip(shown, counts))
        self.count_label.value = f'<span class="koch-count">{text} lesion{"s" if counts[-1] != 1 else ""}</span>'
        self.last_redraw_ms = (time.perf_counter() - t0) * 1000

    def snapshot(self):
        """The widget's current state as a matplotlib ``Figure``: the fundus with the mask and boxes."""
        from koch_explore.plotting import overlay_mask

        panels = []
        for r, seg in self.segmentations.items():
            shown = overlay_mask(self._image.astype(np.float32) / 255, seg.mask, alpha=0.45)
            panels.append({"image": shown, "boxes": seg.boxes, "colours": ["#00ff66"] * len(seg.boxes),
                           "title": f"{r} rule, threshold {self.threshold:.2f}"})
        return snapshot_panels(panels, plain_text(self.count_label.value), panel_size=4.2)

    def close(self) -> None:
        self.slider.unobserve(self._on_slider, names="value")
        self.rule_buttons.unobserve(self._on_slider, names="value")
        self.otsu_button._click_handlers.callbacks.clear()
        close_widgets(self.widget, self._header, self._row, self._views, self.slider, self.otsu_button, self.rule_buttons,
                      self.count_label, self.view, self.peaks_view)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- internals -----------------------------------------------------------------------------

    def _on_slider(self, _change) -> None:
        self.redraw()

    def _take_eye(self, image: np.ndarray, evidence: np.ndarray, fov: np.ndarray | None, threshold: float) -> None:
        img = to_uint8(image)
        shape = img.shape[:2]
        if np.shape(evidence) != shape:
            raise ValueError(f"evidence map {np.shape(evidence)} does not match the image {shape}")
        first = segment(evidence, fov, threshold)  # blurs once; later moves reuse `blurred`
        self.shape = shape
        self._blurred, self._fov = first.blurred, first.fov
        self._evidence = np.asarray(evidence, np.float32)
        self.min_area = default_min_area(shape) if self._min_area_given is None else int(self._min_area_given)
        self._image = img
        self._background = data_url(img, "jpeg")
        self.segmentation: Segmentation = first
        # the peaks rule keeps maxima one blur radius apart, as culture.cut.segment does
        self._min_distance = max(2, int(round(default_blur_sigma(shape))))

    @staticmethod
    def _title_markup(title: str) -> str:
        return f"<b>{title}</b>" if title else ""

    def _segment(self, cut: float, rule: str) -> Segmentation:
        if rule == "peaks":
            return peak_components(self._blurred, self._fov, cut, self.min_area, evidence=self._evidence,
                                   min_distance=self._min_distance)
        return cut_components(self._blurred, self._fov, cut, self.min_area, evidence=self._evidence)
