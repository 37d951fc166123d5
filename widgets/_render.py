"""Pixels for the widgets: fast encodings and an SVG view whose boxes a browser (and a test) can see.

Widgets draw with OpenCV into uint8 arrays and send compressed bytes: a matplotlib figure per slider
move would cost 50-100x the 30 ms budget of a redraw.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

__all__ = ["to_uint8", "encode", "data_url", "colourise", "svg_view", "mosaic", "close_widgets"]


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] or uint8, gray or RGB -> uint8 RGB."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


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


def colourise(values: np.ndarray, cmap: int = cv2.COLORMAP_MAGMA) -> np.ndarray:
    """A map in [0, 1] (NaN: black) -> uint8 RGB via an OpenCV colour map."""
    v = np.nan_to_num(np.asarray(values, np.float32), nan=0.0)
    return cv2.cvtColor(cv2.applyColorMap((np.clip(v, 0, 1) * 255).astype(np.uint8), cmap), cv2.COLOR_BGR2RGB)


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


def mosaic(tiles: list[np.ndarray], titles: list[str] | None = None, tile: int = 128, cols: int = 4) -> np.ndarray:
    """uint8 RGB tiles (any sizes) resized into a grid with small captions."""
    if not tiles:
        return np.zeros((tile, tile, 3), np.uint8)
    cols = max(1, min(cols, len(tiles)))
    rows = int(np.ceil(len(tiles) / cols))
    cap = 14 if titles else 0
    out = np.zeros((rows * (tile + cap), cols * tile, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        t = to_uint8(t)
        s = tile / max(t.shape[:2])
        t = cv2.resize(t, (max(1, round(t.shape[1] * s)), max(1, round(t.shape[0] * s))), interpolation=cv2.INTER_NEAREST if s > 1 else cv2.INTER_AREA)
        y, x = r * (tile + cap) + cap, c * tile
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
        if titles:
            cv2.putText(out, titles[i][:22], (x + 2, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return out


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
