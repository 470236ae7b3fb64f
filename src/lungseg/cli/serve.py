"""``lungseg serve``: the web page and REST API (FastAPI and uvicorn are imported when it runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.models.shipped import MODEL_NAMES
from lungseg.serve.settings import BACKENDS, ServeConfig, api_key

_DEFAULTS = ServeConfig()


@app.command("serve")
def serve_command(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Model(s) to serve, repeatable or comma-separated: {', '.join(MODEL_NAMES)}, "
            "a run directory, a checkpoint or an .onnx file. The first is the default.",
            show_default=",".join(_DEFAULTS.models),
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 opens it to the network.")
    ] = _DEFAULTS.host,
    port: Annotated[int, typer.Option(help="TCP port.")] = _DEFAULTS.port,
    workers: Annotated[
        int, typer.Option(help="Worker processes, each with its own models.")
    ] = _DEFAULTS.workers,
    backend: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(BACKENDS)}: auto runs checkpoints on ONNX Runtime (faster on the "
            "CPU), exported once into the cache."
        ),
    ] = _DEFAULTS.backend,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads per worker (default: its own).")
    ] = None,
    device: Annotated[
        str, typer.Option(help="PyTorch device: auto, cpu, cuda[:N].")
    ] = _DEFAULTS.device,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest accepted file (413 above).")
    ] = _DEFAULTS.max_upload_mb,
    timeout: Annotated[
        float, typer.Option(help="Seconds before an unanswered request gets 504.")
    ] = _DEFAULTS.timeout_s,
    batch_size: Annotated[
        int, typer.Option(help="Most images in one forward pass.")
    ] = _DEFAULTS.max_batch,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long a batch waits for requests still being decoded.")
    ] = _DEFAULTS.batch_wait_ms,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Allow this browser origin to call the API (repeatable; default none)."),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A host name clients reach this service by, besides localhost and IP addresses "
            "(repeatable; '*': any). Other Host headers are refused (DNS rebinding)."
        ),
    ] = None,
    ssl_certfile: Annotated[
        str | None, typer.Option(help="PEM certificate (chain): serve HTTPS. Needs --ssl-keyfile.")
    ] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="PEM private key for HTTPS.")] = None,
    max_connections: Annotated[
        int, typer.Option(help="Open connections at most; the longest-idle one makes room.")
    ] = _DEFAULTS.max_connections,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a connection may take to send its request head.")
    ] = _DEFAULTS.header_timeout_s,
) -> None:
    """Serve the web page and REST API (set LUNGSEG_API_KEY to require a bearer key)."""
    from lungseg.serve import run

    config = ServeConfig(
        models=tuple(model) if model else _DEFAULTS.models,
        backend=backend,
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        device=device,
        max_upload_mb=max_upload_mb,
        timeout_s=timeout,
        max_batch=batch_size,
        batch_wait_ms=batch_wait_ms,
        cors_origins=tuple(cors_origin or ()),
        allowed_hosts=tuple(allowed_host or ()),
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        max_connections=max_connections,
        header_timeout_s=header_timeout,
    )
    key = "an API key is required (LUNGSEG_API_KEY)" if api_key() else "no API key required"
    typer.echo(
        f"lungseg serve: {config.scheme}://{host}:{port}/ (API docs at /docs); {key}", err=True
    )
    run(config)
