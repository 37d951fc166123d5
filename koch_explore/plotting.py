"""Pictures the notebooks and reports share: image grids, mask overlays, boxes.

Everything returns a matplotlib ``Figure`` (or draws on a given ``Axes``) so notebooks display it
and reports save it; nothing here calls ``plt.show()``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np


def pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget", "ipympl"):
        try:
            get_ipython  # type: ignore[name-defined]  # noqa: B018
        except NameError:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    cols: int = 4,
    size: float = 2.6,
    cmap: str | None = None,
    suptitle: str | None = None,
):
    """A grid of images (float RGB in [0,1], or 2-D maps shown with ``cmap``)."""
    plt = pyplot()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        ax.imshow(np.clip(img, 0, 1) if img.ndim == 3 else img, cmap=cmap if img.ndim == 2 else None)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour=(1.0, 0.9, 0.0), alpha: float = 0.5) -> np.ndarray:
    """Blend a binary mask onto an RGB image in one colour."""
    out = np.array(image, dtype=np.float32, copy=True)
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, dtype=np.float32)
    return out


def draw_boxes(ax, boxes: Sequence[Sequence[float]], colour: str = "yellow", labels: Sequence[str] | None = None, lw: float = 1.2):
    """Draw (x0, y0, x1, y1) boxes (x1/y1 exclusive) on a matplotlib Axes."""
    from matplotlib.patches import Rectangle

    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, lw=lw))
        if labels is not None:
            ax.text(x0, y0 - 2, labels[i], color=colour, fontsize=6, va="bottom")


def lesion_legend(ax, colours: Mapping[str, Sequence[float]]):
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=k) for k, c in colours.items()], loc="lower right", fontsize=6, framealpha=0.6)


def grade_histogram(grades: Sequence[int], title: str = "grades", ax=None):
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.5, 2.4))
    else:
        fig = ax.figure
    counts = np.bincount(np.asarray(grades, dtype=int), minlength=5)
    ax.bar(range(len(counts)), counts, color="#b5523b")
    ax.set_xticks(range(len(counts)))
    ax.set_xlabel("grade")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def isolation_steps(image: np.ndarray, evidence: np.ndarray, blurred: np.ndarray, mask: np.ndarray, boxes: Sequence[Sequence[float]], size: float = 2.8, title: str | None = None):
    """The isolation in four panels: evidence map, blurred and normalised map, thresholded mask,
    component boxes over the fundus (:func:`koch_explore.culture.segment` returns all of them)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(4 * size, size))
    panels = [(evidence, "evidence map", "magma"), (blurred, "blurred / max", "magma"), (mask, "mask", "gray"), (image, f"{len(boxes)} components", None)]
    for ax, (img, name, cmap) in zip(axes, panels):
        img = np.asarray(img)
        ax.imshow(np.clip(img, 0, 1) if img.ndim == 3 else img, cmap=cmap if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    draw_boxes(axes[3], boxes, colour="cyan")
    draw_boxes(axes[2], boxes, colour="red", lw=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# Pixel mosaics without a figure (uint8 RGB): the widgets redraw with them, the report embeds them.


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] or uint8, gray or RGB -> uint8 RGB."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def colourise(values: np.ndarray, cmap: int = cv2.COLORMAP_MAGMA) -> np.ndarray:
    """A map in [0, 1] (NaN: black) -> uint8 RGB via an OpenCV colour map."""
    v = np.nan_to_num(np.asarray(values, np.float32), nan=0.0)
    return cv2.cvtColor(cv2.applyColorMap((np.clip(v, 0, 1) * 255).astype(np.uint8), cmap), cv2.COLOR_BGR2RGB)


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
