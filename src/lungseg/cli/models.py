"""``lungseg models``: list the registered segmentation models."""

from __future__ import annotations

from lungseg.cli import app


@app.command("models")
def models() -> None:
    """List every model usable with --model: parameters, input size divisor, defaults."""
    from rich.console import Console
    from rich.table import Table

    from lungseg.models import list_models, model_info

    table = Table(title="Registered models")
    table.add_column("name", style="bold")
    table.add_column("parameters", justify="right")
    table.add_column("input divisor", justify="right")
    table.add_column("defaults")
    table.add_column("description")
    for name in list_models():
        info = model_info(name)
        defaults = ", ".join(f"{k}={v}" for k, v in info.defaults.items())
        table.add_row(
            name, f"{info.n_parameters:,}", str(info.input_divisor), defaults, info.description
        )
    Console().print(table)
