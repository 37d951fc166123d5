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
    """A grid of images (float RGB in [0,1] or uint8 RGB, or 2-D maps shown with ``cmap``)."""
    plt = pyplot()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = np.asarray(images[i])
        ax.imshow(img if img.ndim == 2 or img.dtype == np.uint8 else np.clip(img, 0, 1), cmap=cmap if img.ndim == 2 else None)
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
    panels = [(evidence, "evidence map", "magma"), (blurred, "blurred / max", "magma"), (mask, "mask", "gray"), (image, f"{len(boxes)} component{'' if len(boxes) == 1 else 's'}", None)]
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


# Figures the notebooks read from: a grader's grading, evidence side by side, operations before/after.


def grading_panels(report: Mapping, title: str | None = None, size: float = 3.4):
    """How a grader grades, from a grading report (``detect.predict.grading_figures``, or
    ``core.stats.grading_report``): the confusion matrix (colour: share of each true grade, text:
    eyes) and the mean severity of each true grade, with the grade cuts dotted."""
    plt = pyplot()
    cm = np.asarray(report["confusion"], dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(2.6 * size, size))
    axes[0].imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        axes[0].text(j, i, str(int(v)), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.6 else "black")
    axes[0].set_xticks(range(len(cm)))
    axes[0].set_yticks(range(len(cm)))
    axes[0].set_xlabel("grade given by the model")
    axes[0].set_ylabel("true grade")
    axes[0].set_title("confusion (colour: share of each true grade)", fontsize=9)
    by = report["mean_severity_by_grade"]
    present = [g for g, v in enumerate(by) if v is not None]
    axes[1].bar(present, [by[g] for g in present], color="#c0504d")
    for t in report.get("thresholds", []):
        axes[1].axhline(t, color="k", ls=":", lw=0.8)
    axes[1].set_xticks(range(len(by)))
    axes[1].set_xlabel("true grade")
    axes[1].set_ylabel("mean severity (0-4)")
    axes[1].set_title("mean severity by true grade (dotted: grade cuts)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def maps_grid(images: Sequence[np.ndarray], maps: Mapping[str, Sequence[np.ndarray]], titles: Sequence[str] | None = None,
              boxes: Sequence[Sequence[Sequence[float]]] | None = None, size: float = 1.9, by_column: bool = False):
    """Photos beside their evidence maps: one row per image, the photo (with ``boxes`` when given)
    then one column per entry of ``maps`` (name -> one map per image, drawn on a square-root scale
    so weak evidence stays visible); ``by_column`` turns it so that each image is a column."""
    plt = pyplot()
    n, k = len(images), len(maps) + 1
    rows, cols = (k, n) if by_column else (n, k)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for i, img in enumerate(images):
        cells = [axes[j, i] for j in range(k)] if by_column else list(axes[i])
        cells[0].imshow(np.clip(img, 0, 1) if np.asarray(img).dtype != np.uint8 else img)
        if boxes is not None:
            draw_boxes(cells[0], boxes[i], colour="cyan", lw=1.0)
        if titles is not None:
            cells[0].set_title(titles[i], fontsize=7)
        for j, (name, ms) in enumerate(maps.items()):
            m = np.asarray(ms[i], dtype=np.float32)
            cells[j + 1].imshow(np.sqrt(np.clip(m, 0, None) / (m.max() + 1e-12)), cmap="magma")
            if i == 0:
                (cells[j + 1].set_ylabel if by_column else cells[j + 1].set_title)(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    fig.tight_layout()
    return fig


def boxed(image: np.ndarray, boxes: Sequence[Sequence[float]], colour=(0, 255, 255), thickness: int = 1) -> np.ndarray:
    """A uint8 RGB copy of ``image`` with (x0, y0, x1, y1) boxes drawn into its pixels, so that a
    crop or a zoom (:func:`zoom`) keeps them."""
    out = to_uint8(image).copy()
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(x0) - 1, int(y0) - 1), (int(x1), int(y1)), tuple(int(c) for c in colour), thickness)
    return out


def overlay_evidence(image: np.ndarray, evidence: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.6) -> np.ndarray:
    """``image`` (uint8 RGB) with ``evidence`` normalised to its maximum and drawn in magma colours over
    ``mask`` (default: wherever the evidence is positive), blended by ``alpha``."""
    out = to_uint8(image).astype(np.float32)
    ev = np.clip(np.asarray(evidence, np.float32), 0, None)
    col = colourise(ev / (ev.max() + 1e-12)).astype(np.float32)
    m = ev > 0 if mask is None else np.asarray(mask, bool)
    out[m] = (1 - alpha) * out[m] + alpha * col[m]
    return (out + 0.5).astype(np.uint8)


def zoom(image: np.ndarray, centre: Sequence[float], half: int = 24, factor: int = 4) -> np.ndarray:
    """The square of side ``2 * half`` around ``centre`` (x, y), kept inside the image and enlarged
    ``factor`` times with whole pixels (uint8 RGB)."""
    a = to_uint8(image)
    h, w = a.shape[:2]
    side = min(2 * half, h, w)
    x0 = int(np.clip(round(centre[0]) - side // 2, 0, w - side))
    y0 = int(np.clip(round(centre[1]) - side // 2, 0, h - side))
    return cv2.resize(a[y0 : y0 + side, x0 : x0 + side], None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def before_after(panels: Sequence[Sequence], cols: int = 2, size: float = 2.4, suptitle: str | None = None):
    """Operations as pictures: each panel ``(title, before, after)`` (RGB images, or 2-D maps) takes
    two axes side by side, "before" and "after"; ``cols`` operations per row."""
    plt = pyplot()
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(size * 2 * cols, size * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (title, before, after) in enumerate(panels):
        r, c = divmod(i, cols)
        for j, (img, word) in enumerate(((before, "before"), (after, "after"))):
            ax = axes[r, 2 * c + j]
            img = np.asarray(img)
            ax.imshow(img if img.dtype == np.uint8 else np.clip(img, 0, 1), cmap="magma" if img.ndim == 2 else None)
            ax.set_title(f"{title}\n{word}" if j == 0 else word, fontsize=8, loc="left" if j == 0 else "center")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig
