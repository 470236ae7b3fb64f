"""``lungseg upload``: copy a dataset folder to Azure Blob Storage, keeping its layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.core.errors import LungsegError


@app.command("upload")
def upload_command(
    data: Annotated[Path, typer.Option(help="Local dataset folder to upload.")],
    to: Annotated[str, typer.Option(help="Destination az://CONTAINER/PREFIX.")],
    create_container: Annotated[
        bool, typer.Option("--create-container", help="Create the container if it is missing.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Parallel uploads.")] = 8,
) -> None:
    """Upload a dataset to az://CONTAINER/PREFIX; files already there (same MD5) are skipped.

    Credentials come from the environment: AZURE_STORAGE_CONNECTION_STRING, or
    AZURE_STORAGE_ACCOUNT_URL with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN.
    """
    try:
        from lungseg.storage.azure import upload
    except ImportError as exc:  # the optional extra is missing
        raise LungsegError(
            f"uploading to {to} needs the Azure packages: pip install 'lungseg[azure]' ({exc})"
        ) from None
    from rich.filesize import decimal

    stats = upload(data, to, create_container=create_container, workers=workers)
    typer.echo(
        f"uploaded {stats.transferred} files ({decimal(stats.bytes)}) from {data} to {to}; "
        f"{stats.skipped} already identical"
    )
