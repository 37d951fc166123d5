"""Pixels for the widgets: fast encodings and an SVG view whose boxes a browser (and a test) can see.

Widgets draw with OpenCV into uint8 arrays and send compressed bytes: a matplotlib figure per slider
move would cost 50-100x the 30 ms budget of a redraw.
"""

from __future__ import annotations

import base64
import html
import io
import re

import cv2
import numpy as np

from koch_explore.plotting import colourise, draw_boxes, mosaic, to_uint8

__all__ = ["to_uint8", "encode", "data_url", "colourise", "svg_view", "mosaic", "close_widgets", "new_figure", "figure_png",
           "plain_text", "snapshot_panels", "image_figure", "BLANK_PNG"]


def encode(img: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """RGB(A) uint8 -> PNG/JPEG bytes (OpenCV wants BGR(A))."""
    a = np.asarray(img)
    conv = cv2.COLOR_RGBA2BGRA if a.ndim == 3 and a.shape[2] == 4 else cv2.COLOR_RGB2BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"), cv2.cvtColor(a, conv), params)
    if not ok:
        raise ValueError(f"could not encode a {a.shape} image as {fmt}")
    return buf.tobytes()


def data_url(img: np.ndarray, fmt: str = "png") -> str:
    return f"data:image/{fmt};base64," + base64.b64encode(encode(img, fmt)).decode("ascii")


def svg_view(background_url: str, size: tuple[int, int], overlay_url: str | None = None, boxes=(), colours=None,
             labels=None, width: int = 512, css_class: str = "koch-view") -> str:
    """An inline SVG: the background image, an optional transparent overlay, and one ``<rect
    class="koch-box">`` per (x0, y0, x1, y1) box (x1/y1 exclusive) in image pixels."""
    h, w = size
    parts = [f'<svg class="{css_class}" viewBox="0 0 {w} {h}" width="{width}" height="{round(width * h / w)}" '
             f'xmlns="http://www.w3.org/2000/svg" style="background:#000">',
             f'<image href="{background_url}" x="0" y="0" width="{w}" height="{h}"/>']
    if overlay_url:
        parts.append(f'<image href="{overlay_url}" x="0" y="0" width="{w}" height="{h}"/>')
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        c = colours[i] if colours is not None else "#00ff66"
        parts.append(f'<rect class="koch-box" data-index="{i}" x="{x0 - 0.5}" y="{y0 - 0.5}" width="{x1 - x0}" '
                     f'height="{y1 - y0}" fill="none" stroke="{c}" stroke-width="{max(1.0, w / 400):.2f}"/>')
        if labels is not None:
            parts.append(f'<text x="{x0}" y="{max(6, y0 - 2)}" fill="{c}" font-size="{max(6, w // 60)}">{labels[i]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def image_figure(image: np.ndarray, width: int, shapes=()):
    """A plotly ``FigureWidget`` of ``image`` to click on (a click reports image pixels), ``width`` px wide,
    axes hidden, with ``shapes`` (boxes) drawn.

    The whole layout goes into the constructor: a figure inside another widget is not re-synced when the
    cell displays it, and a frontend that connects after the cell ran (Voila shows a page once every cell
    has run) gets the figure's state, not the relayout messages sent before it came; layout changes made
    after the first picture must happen while a frontend is connected (clicks and buttons do)."""
    import plotly.graph_objects as go

    h, w = image.shape[:2]
    layout = dict(width=width, height=round(width * h / w), margin=dict(l=0, r=0, t=0, b=0), xaxis=dict(visible=False),
                  yaxis=dict(visible=False), dragmode=False, shapes=list(shapes))
    return go.FigureWidget(go.Image(z=image, hoverinfo="x+y"), layout=layout)


BLANK_PNG = encode(np.zeros((1, 1, 4), np.uint8))
"""A transparent pixel: what an image widget shows before it has a picture (an empty one shows a broken-image icon)."""


def close_widgets(*widgets) -> None:
    """Close widgets with their ``layout`` and ``style`` models (``Widget.close`` leaves those
    registered in the kernel: 100 open/close cycles would leave 100s of models behind)."""
    for w in widgets:
        if w is None:
            continue
        for attr in ("layout", "style"):
            sub = getattr(w, attr, None)
            if sub is not None and hasattr(sub, "close"):
                sub.close()
        w.close()


# Static pictures of a widget's state (``snapshot()``): matplotlib figures that no pyplot registry holds,
# so they are never shown twice by the inline backend and can be drawn off the main thread.


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` with an Agg canvas, outside pyplot (never auto-displayed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plain_text(markup: str) -> str:
    """A widget's HTML status as one line of text."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " · ", re.sub(r"<(?!br)[^>]+>", "", markup or "")))).strip()


def snapshot_panels(panels, caption: str = "", panel_size: float = 3.6, aspect: float = 1.0):
    """One row of panels ``panel_size`` inches wide and ``aspect`` times as high, each a dict:
    ``image`` (array) or ``draw`` (a function of the Axes), optional ``boxes`` (x0, y0, x1, y1),
    ``colours`` (one per box, default cyan) and ``title``; the caption (a widget's status line) below."""
    import textwrap

    n = max(1, len(panels))
    lines = textwrap.wrap(caption, width=int(15 * panel_size * n)) if caption else []
    text_h = 0.17 * len(lines) + 0.1
    height = panel_size * aspect + 0.3
    fig = new_figure(panel_size * n, height + text_h)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, p in zip(axes, panels):
        if "draw" in p:
            p["draw"](ax)
        else:
            img = np.asarray(p["image"])
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
            ax.axis("off")
            colours = p.get("colours") or ["cyan"] * len(p.get("boxes", ()))
            for box, c in zip(p.get("boxes", ()), colours):
                draw_boxes(ax, [box], colour=c, lw=1.0)
        if p.get("title"):
            ax.set_title(p["title"], fontsize=8)
    fig.tight_layout(rect=(0, text_h / (height + text_h), 1, 1 - 0.1 / (height + text_h)))
    if lines:
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=7.5, va="bottom", ha="left", family="monospace")
    return fig
