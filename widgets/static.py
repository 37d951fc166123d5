"""Widgets in executed notebooks: where no person runs the cell, a static picture of the widget too.

A widget needs a live kernel and a frontend; a notebook executed by papermill (or ``nbconvert
--execute``) and its HTML report have neither, so a widget cell would leave nothing to see. Each
widget's ``snapshot()`` draws its current state as a matplotlib figure, and :func:`show` puts that
picture under the widget when the cell is not run from a person's frontend (:func:`is_interactive`).
"""

from __future__ import annotations

__all__ = ["is_interactive", "show"]


def is_interactive() -> bool:
    """Whether the running cell was sent by a person's frontend (JupyterLab, Notebook, VS Code): their
    execute requests allow ``input()``. Papermill, nbclient and ``nbconvert --execute`` send theirs
    with ``allow_stdin`` off, and a plain Python process has no kernel: both are not interactive."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        if kernel is None or not hasattr(kernel, "get_parent"):
            return False
        return bool(kernel.get_parent().get("content", {}).get("allow_stdin", False))
    except Exception:  # no IPython, an old ipykernel: nobody can click
        return False


def show(widget, static: bool | None = None) -> None:
    """Display ``widget`` (any koch-explore widget), and below it its ``snapshot()`` as a PNG when the
    cell is not interactive (``static=None``), always (``True``) or never (``False``); the executed
    notebook and its HTML then show what the widget showed."""
    from IPython.display import Image, display

    from ._render import figure_png

    display(widget)
    if static or (static is None and not is_interactive()):
        display(Image(data=figure_png(widget.snapshot()), format="png"))
