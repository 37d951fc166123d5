"""``LayerBrowser``: choose where the activation network starts and see its projection at every layer.

One projection per change (the deconvnet walks down once and keeps every intermediate map); the view
is a mosaic of the channel-averaged |map| of each layer, input first, each normalised to its own
maximum so a deep 8x8 map is as readable as the 256x256 input.
"""

from __future__ import annotations

import numpy as np
import torch

from koch_explore.core.images import as_image_batch
from koch_explore.evidence.deconvnet import ActivationNetwork

from ._render import (
    close_widgets,
    colourise,
    encode,
    mosaic,
    plain_text,
    snapshot_panels,
    to_uint8,
)

__all__ = ["LayerBrowser", "parse_channels"]


def parse_channels(text: str):
    """"all" -> None, "top-8" -> 8 (the 8 strongest channels), "3,17" -> [3, 17]."""
    t = (text or "all").strip().lower()
    if t in ("", "all"):
        return None
    if t.startswith("top-"):
        k = int(t[4:])
        if k < 1:
            raise ValueError(f"channels {text!r}: top-k needs k >= 1")
        return k
    try:
        return [int(v) for v in t.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"channels {text!r}: 'all', 'top-K' or a comma list of channel indices") from exc


class LayerBrowser:
    """Start-layer dropdown + channel selection -> the projection at every layer below.

    Plain-Python API: :meth:`set_start`, :meth:`set_channels`, :attr:`projection`, :meth:`snapshot`; :meth:`close`
    releases the activation network (its folded detector copy) and the widgets.
    """

    def __init__(self, detector, image: np.ndarray, start: str = "dense2", channels: str = "all", tile: int = 160):
        import ipywidgets as W

        self.net = ActivationNetwork(detector)
        self.x = as_image_batch(image[None] if np.ndim(image) == 3 else image)[:1].to(next(detector.parameters()).device)
        self.image = to_uint8(self.x[0].permute(1, 2, 0).cpu().numpy())
        names = [n for n in detector.layer_names if n != "norm"]
        self.start_dropdown = W.Dropdown(options=names, value=start, description="start layer")
        self.channel_text = W.Text(value=channels, description="channels", placeholder="all | top-8 | 3,17",
                                   continuous_update=False)
        self.status = W.HTML()
        self.view = W.Image(format="png")
        self.tile = tile
        self.projection = None
        self._mosaic: np.ndarray | None = None
        self.start_dropdown.observe(self._on_change, names="value")
        self.channel_text.observe(self._on_change, names="value")
        self._row = W.HBox([self.start_dropdown, self.channel_text])
        self.widget = W.VBox([self._row, self.status, self.view])
        self.update()

    def set_start(self, name: str) -> None:
        self.start_dropdown.value = name

    def set_channels(self, text: str) -> None:
        self.channel_text.value = text

    def update(self) -> None:
        try:
            channels = parse_channels(self.channel_text.value)
        except ValueError as exc:
            self.status.value = f"<span style='color:#c00'>{exc}</span>"
            return
        with torch.no_grad():
            p = self.net.project(self.x, self.start_dropdown.value, channels)
        self.projection = p
        layers = ["input"] + [n for n in reversed(list(p.maps)) if n != "norm"]
        tiles, titles = [self.image], ["image"]
        for n in layers:
            t = p[n][0]
            if t.ndim != 3:  # dense layers and the RMS pool have no spatial map to show
                continue
            m = t.detach().abs().float().mean(0).cpu().numpy()
            tiles.append(colourise(m / (m.max() + 1e-12)))
            titles.append(f"{n} {m.shape[0]}x{m.shape[1]}")
        self._mosaic = mosaic(tiles, titles, tile=self.tile, cols=6)
        self.view.value = encode(self._mosaic)
        sev = float(p.output.reshape(-1)[0])
        self.status.value = (f"projected from <b>{p.start}</b> ({int(p.mask.sum())} of {p.mask.shape[1]} channels), "
                             f"severity {sev:.2f}")

    def snapshot(self):
        """The widget's current state as a matplotlib ``Figure``: the mosaic of every layer's map."""
        h, w = self._mosaic.shape[:2]
        title = f"start layer {self.start_dropdown.value}, channels {self.channel_text.value}"
        return snapshot_panels([{"image": self._mosaic, "title": title}],
                               plain_text(self.status.value), panel_size=9.0, aspect=h / w)

    def close(self) -> None:
        self.start_dropdown.unobserve(self._on_change, names="value")
        self.channel_text.unobserve(self._on_change, names="value")
        self.net.close()
        self.projection = None
        close_widgets(self.widget, self._row, self.start_dropdown, self.channel_text, self.status, self.view)

    def _on_change(self, _change) -> None:
        self.update()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
