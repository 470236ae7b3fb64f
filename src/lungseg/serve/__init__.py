"""``lungseg serve``: a web page and a REST API for lung masks, on the shipped models.

One command starts a local web server (FastAPI on uvicorn): the page at ``/`` for people who
check films one by one, the API under ``/v1`` for integration engines and PACS routers, its
OpenAPI schema at ``/openapi.json`` and ``/docs``, ``/healthz`` and ``/readyz`` for operators.

* :mod:`~lungseg.serve.settings`: the settings and their defaults (light, for the CLI's help).
* :mod:`~lungseg.serve.loading`: the models, once per worker, on ONNX Runtime where faster.
* :mod:`~lungseg.serve.batcher`: micro-batching of concurrent requests into one forward pass.
* :mod:`~lungseg.serve.pipeline`: one request's work, the same road as ``lungseg segment``.
* :mod:`~lungseg.serve.upload`: the uploaded file, in memory only, within the size limit.
* :mod:`~lungseg.serve.security`: access log without patient data, API key, headers.
* :mod:`~lungseg.serve.app`: the routes; the page is ``templates/serve.html.j2`` with
  ``serve/static/``'s script and style sheet (no CDN: hospital networks are offline).
"""

from __future__ import annotations

from lungseg.serve.settings import ServeConfig

__all__ = ["ServeConfig", "run"]


def run(config: ServeConfig) -> None:
    """Load the models and serve until interrupted (what ``lungseg serve`` does).

    With one worker the models are loaded here, so a bad ``--model`` fails before the port is
    opened. With several, they are loaded once by a short-lived child process (which checks
    them and fills the ONNX cache), then by each worker process for itself: this process, the
    workers' parent, never holds models it does not use.

    Raises:
        LungsegError: a model that cannot be loaded, or a missing ``lungseg[serve]`` install.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        from lungseg.core.errors import LungsegError

        raise LungsegError("lungseg serve needs its extra: pip install 'lungseg[serve]'") from None
    from lungseg.serve.connections import BACKLOG, GuardedH11
    from lungseg.serve.settings import api_key

    api_key()  # an empty key stops here, before the models load
    options = dict(
        host=config.host,
        port=config.port,
        access_log=False,  # ours (lungseg.serve.access) leaves out queries and headers
        server_header=False,
        log_config=_logging(),
        timeout_graceful_shutdown=5,
        http=GuardedH11,
        backlog=BACKLOG,
        timeout_keep_alive=5,
        ssl_certfile=config.ssl_certfile,
        ssl_keyfile=config.ssl_keyfile,
    )
    if config.workers == 1:
        from lungseg.serve.app import create_app
        from lungseg.serve.loading import load_models

        uvicorn.run(create_app(config, load_models(config)), **options)
        return
    # The workers' parent imports neither the app nor the models (nor NumPy, ONNX Runtime or
    # PyTorch behind them): it only supervises.
    _check_models(config)
    config.to_environment()
    uvicorn.run(
        "lungseg.serve.app:app_from_environment", factory=True, workers=config.workers, **options
    )


def _check_models(config: ServeConfig) -> None:
    """Load the models in a child process, for their errors and the ONNX cache only: one of
    lungseg's own worker processes (:mod:`lungseg.core.workers`), so a child that dies while
    loading (out of memory) is an error, not a parent waiting for ever on a queue, and a script
    that calls this without a main guard is not run again.

    Raises:
        LungsegError: the child's, as it gave it.
    """
    from lungseg.core.errors import LungsegError
    from lungseg.core.workers import WorkerDied, Workers

    with Workers(1) as workers:
        try:
            problem = workers.call(_load_and_report, config)
        except WorkerDied:
            raise LungsegError(
                "the process loading the models died twice (out of memory?)"
            ) from None
    if problem is not None:
        raise LungsegError(*problem)


def _load_and_report(config: ServeConfig) -> tuple[str, str | None] | None:
    """In the child: load the models; ``None``, or the problem as ``(text, path)``."""
    from lungseg.core.errors import LungsegError
    from lungseg.serve.loading import load_models

    try:
        load_models(config)
    except LungsegError as exc:
        return exc.problem, exc.path
    except Exception as exc:
        return f"models failed to load ({type(exc).__name__})", None
    return None


def _logging() -> dict:
    """uvicorn's logging, plus the service's loggers (``lungseg.serve``, its access log)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["lungseg"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["lungseg"] = {
        "formatter": "lungseg",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["lungseg.serve"] = {
        "handlers": ["lungseg"],
        "level": "INFO",
        "propagate": False,
    }
    # asyncio's own errors (a refused accept, with its traceback) go through the same filter.
    config["root"] = {"handlers": ["lungseg"], "level": "WARNING"}
    config["filters"] = {"repeated": {"()": "lungseg.serve.connections.RepeatedLines"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["repeated"]
    return config
