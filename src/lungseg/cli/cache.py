"""``lungseg cache``: what the local cache of Azure downloads holds, and clearing it."""

from __future__ import annotations

from typing import Annotated

import typer

from lungseg.cli import app


@app.command("cache")
def cache_command(
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete cached files (all, or those selected).")
    ] = False,
    container: Annotated[
        str | None, typer.Option(help="Only this container's files.", show_default="all")
    ] = None,
    older_than: Annotated[
        float | None,
        typer.Option(
            help="With --clear: only files downloaded more than DAYS ago.", metavar="DAYS"
        ),
    ] = None,
) -> None:
    """Show or clear the local cache of files read from az:// datasets ($LUNGSEG_CACHE_DIR)."""
    import datetime

    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    from lungseg.core.errors import LungsegError
    from lungseg.storage.blob_cache import cache_root, cache_usage, clear_cache

    root = cache_root()
    if clear:
        files, nbytes = clear_cache(root, container=container, older_than_days=older_than)
        typer.echo(f"removed {files} cached files ({decimal(nbytes)}) from {root}")
        return
    if older_than is not None:
        raise LungsegError("--older-than selects what --clear deletes; add --clear")
    usage = [u for u in cache_usage(root) if container is None or u.container == container]
    if not usage:
        typer.echo(f"{root}: no cached files" + (f" of container {container}" if container else ""))
        return
    table = Table(title=f"Azure download cache: {root}")
    for column in ("account", "container", "files", "size", "unfinished", "last download"):
        table.add_column(column, justify="right" if column in ("files", "size") else "left")
    for u in usage:
        when = datetime.datetime.fromtimestamp(u.newest).isoformat(sep=" ", timespec="minutes")
        table.add_row(
            u.account, u.container, f"{u.files:,}", decimal(u.bytes), str(u.partial), when
        )
    Console(soft_wrap=True).print(table)
    total = sum(u.bytes for u in usage)
    typer.echo(f"total {decimal(total)}; free it with: lungseg cache --clear [--older-than DAYS]")
