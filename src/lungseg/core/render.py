"""Text rendered from Jinja2 templates: the comparison report, the model card, BENCHMARKS.md.

The code that produces a document computes its data (rows of formatted cells, sentences,
base64 images); the template only lays it out. Templates of the package live in
``lungseg/templates/``; scripts and benchmarks keep theirs next to them and pass their folder.

A value a template names but is not given is an error (``StrictUndefined``), not a blank.
Every template has the filter ``fmt``: Python's ``format`` (``{{ dice | fmt(".4f") }}``), so a
number reads the same as from an f-string.
HTML templates (``*.html.j2``) escape every value; Markdown templates escape nothing.
Whitespace: a block tag's line leaves no blank line behind (``trim_blocks``, ``lstrip_blocks``)
and a template's final newline is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def render(
    template: str,
    folder: str | Path | None = None,
    filters: dict[str, Callable[..., Any]] | None = None,
    **data: Any,
) -> str:
    """Render ``template`` with ``data``.

    Args:
        template: file name, e.g. ``report.md.j2``.
        folder: where the template is; default the package's ``lungseg/templates/``.
        filters: extra Jinja2 filters (small formatting helpers), by name.
        **data: the template's variables.

    Returns:
        The rendered text.
    """
    import jinja2

    loader = (
        jinja2.PackageLoader("lungseg", "templates")
        if folder is None
        else jinja2.FileSystemLoader(Path(folder))
    )
    env = jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt=_format, **(filters or {}))
    return env.get_template(template).render(**data)


def _format(value: Any, spec: str) -> str:
    """``format(value, spec)``; a missing value raises the error that names it."""
    import jinja2

    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError here ("... has no attribute 'x'")
    return format(value, spec)
