"""Who clicks the widgets: a person (a picture would only repeat the live widget) or nobody (papermill, tests).

A widget needs a live kernel and a frontend; a notebook executed by papermill (or ``nbconvert
--execute``) and its HTML report have neither, so a widget cell would leave nothing to see. Each
widget's ``snapshot()`` draws its current state as a matplotlib figure, and :func:`show` puts that
picture under the widget when nobody is there to click.

Whether a person is there is a switch the notebook passes (``interactive``): True in JupyterLab and
in Voila apps, False in papermill reports and tests. Only when it is None does :func:`resolve_interactive`
fall back on :func:`is_interactive`, a guess from the kernel request, which Voila defeats: it executes a
notebook the way papermill does, with ``allow_stdin`` off, while a person is looking at the page.
"""

from __future__ import annotations

__all__ = ["is_interactive", "resolve_interactive", "show"]


def is_interactive() -> bool:
    """A guess at whether a person runs the cell: True when the running cell's execute request allows
    ``input()``, as JupyterLab, Notebook and VS Code send theirs. Papermill, nbclient and ``nbconvert
    --execute`` send theirs with ``allow_stdin`` off, and a plain Python process has no kernel: both
    guess False. So does Voila, although a person clicks there: pass ``interactive`` explicitly
    (:func:`resolve_interactive`) wherever the answer matters."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        if kernel is None or not hasattr(kernel, "get_parent"):
            return False
        return bool(kernel.get_parent().get("content", {}).get("allow_stdin", False))
    except Exception:  # no IPython, an old ipykernel: nobody can click
        return False


def resolve_interactive(interactive: bool | None = None) -> bool:
    """Whether a person clicks the widgets: ``interactive`` as given (True: JupyterLab, Voila; False:
    papermill reports, tests, where the notebook makes the clicks itself), or, when None, the guess of
    :func:`is_interactive`."""
    return is_interactive() if interactive is None else bool(interactive)


def show(widget, static: bool | None = None, interactive: bool | None = None) -> None:
    """Display ``widget`` (any koch-explore widget) and, when nobody clicks (``interactive`` False, or None
    and :func:`is_interactive` guesses so), its ``snapshot()`` below it as a PNG, so the executed notebook
    and its HTML show what the widget showed. ``static`` True or False adds the picture always or never,
    whoever clicks."""
    from IPython.display import Image, display

    from ._render import figure_png

    display(widget)
    if static if static is not None else not resolve_interactive(interactive):
        display(Image(data=figure_png(widget.snapshot()), format="png"))
