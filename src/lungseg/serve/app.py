"""The FastAPI application: the page at ``/``, the API under ``/v1``, health and readiness.

:func:`create_app` builds it from a :class:`~lungseg.serve.settings.ServeConfig`, with the models
already loaded (one process) or loading in the background at start (uvicorn's worker processes,
:func:`app_from_environment`). Until they are ready, ``/readyz`` and ``/v1`` answer 503.

Safety: every ``/v1`` route needs ``Authorization: Bearer $LUNGSEG_API_KEY`` when that is set
(compared in constant time, never logged); a refused request gets one line, never a traceback,
path or file name; the access log (:mod:`lungseg.serve.security`) records method, route, status,
size and time only; uploads stay in memory (:mod:`lungseg.serve.upload`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lungseg._version import __version__
from lungseg.inference.quality import UNCERTAIN_HIGH, UNCERTAIN_LOW
from lungseg.serve import schemas
from lungseg.serve.disconnect import ClientLeft, unless_client_leaves
from lungseg.serve.loading import ServedModel
from lungseg.serve.negotiation import (
    BODY_TYPES,
    DICOM_OUTPUTS,
    EXPOSED_HEADERS,
    MEDIA_TYPES,
    OUTPUTS,
    body_type_allowed,
    choose_output,
    model_headers,
    offered_outputs,
)
from lungseg.serve.pipeline import ServeError, segment_upload
from lungseg.serve.security import (
    PAGE_POLICY,
    AccessLog,
    Guard,
    allowed_hosts,
    api_key_matches,
    log_failure,
)
from lungseg.serve.service import Service
from lungseg.serve.settings import ServeConfig
from lungseg.serve.upload import read_upload

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("lungseg.serve")


def create_app(config: ServeConfig, models: dict[str, ServedModel] | None = None) -> FastAPI:
    """The application; ``models`` from :func:`~lungseg.serve.loading.load_models`, or ``None``
    to load them in the background once it starts."""
    from fastapi_offline import FastAPIOffline

    from lungseg.serve.connections import configure

    service = Service(config, models)
    configure(config.max_connections, config.header_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(service.start())
        yield
        task.cancel()
        await service.stop()

    app = FastAPIOffline(
        title="lungseg",
        version=__version__,
        summary="Lung masks and lung areas for chest X-rays (research use; not for diagnosis).",
        description=_API_DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.service = service
    # Added innermost first: the access log sees every answer, the guard's refusals too.
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=EXPOSED_HEADERS,
            # Chrome asks before a public page may call a service on this machine or network.
            allow_private_network=True,
        )
    hosts = allowed_hosts(config.allowed_hosts, config.host)
    app.add_middleware(Guard, hosts=hosts, origins=config.cors_origins)
    app.add_middleware(AccessLog, metrics=service.metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app)
    _add_routes(app, service)
    return app


def app_from_environment() -> FastAPI:
    """uvicorn's factory in each worker process: settings from ``$LUNGSEG_SERVE_CONFIG``."""
    return create_app(ServeConfig.from_environment())


_API_DESCRIPTION = """
Segment the lungs in a chest X-ray (PNG, JPEG, TIFF, BMP or DICOM) with lungseg's models.

`POST /v1/segment` takes the file as the raw request body, or as `multipart/form-data` in the
field `file`, and answers JSON (areas, uncertainty, model, timings, the mask as base64 PNG) or,
with `Accept: image/png` or `?format=png`, the mask PNG itself. When the service was started with
`LUNGSEG_API_KEY` set, every `/v1` request needs `Authorization: Bearer <key>`.

Research use only: lungseg is not a medical device.
"""

_INTERNAL = "internal error; the server log has the details"
_bearer = HTTPBearer(auto_error=False, description="Needed when LUNGSEG_API_KEY is set.")


def _add_routes(app: FastAPI, service: Service) -> None:
    config = service.config
    problems = {
        code: {"model": schemas.Problem, "description": what}
        for code, what in {
            400: "Malformed upload",
            401: "Missing or wrong API key",
            413: f"File over the upload limit ({config.max_upload_mb:g} MB here)",
            415: "Not an image file",
            422: "Empty, truncated, corrupt or oversized image, or a bad option",
            503: "Models still loading, or too many requests in progress",
            504: "Not answered within the request timeout",
        }.items()
    }

    def authorized(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if service.api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        client = request.client.host if request.client else "-"
        wait = service.key_failures.retry_after(client)
        if wait:
            raise ServeError(429, f"too many wrong API keys; retry in {wait} s", wait)
        if not api_key_matches(given, service.api_key):
            service.metrics.wrong_keys += 1
            service.key_failures.failed(client)
            raise ServeError(401, "missing or wrong API key (Authorization: Bearer <key>)")

    html = _page(service)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.api_route(
        "/healthz", methods=["GET", "HEAD"], response_model=schemas.Health, tags=["health"]
    )
    async def healthz() -> dict:
        """Liveness: the process answers; which lungseg it runs."""
        return {"status": "ok", "version": __version__}

    @app.get(
        "/readyz",
        response_model=schemas.Health,
        response_model_exclude_none=True,
        tags=["health"],
        responses={503: problems[503]},
    )
    async def readyz() -> dict:
        """Readiness: the models are loaded and their batchers run."""
        if not service.ready:
            raise ServeError(503, service.failure or "models are still loading")
        return {"status": "ready"}

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=[Depends(authorized)],
        response_class=PlainTextResponse,
        responses={401: problems[401]},
    )
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics: requests by route and status, latency, batch sizes, queue depth,
        review flags (text exposition format 0.0.4)."""
        return PlainTextResponse(
            service.metrics.render(service.gauges), media_type="text/plain; version=0.0.4"
        )

    @app.get(
        "/v1/models",
        response_model=schemas.ModelsResponse,
        tags=["v1"],
        dependencies=[Depends(authorized)],
        responses={401: problems[401], 503: problems[503]},
    )
    async def models() -> dict:
        """The models this service runs; the first is the default."""
        default = service.model(None).name
        assert service.models is not None
        return {
            "models": [m.describe(m.name == default) for m in service.models.values()],
            "outputs": list(offered_outputs()),
            "max_upload_mb": config.max_upload_mb,
            # The default model's; each model's is in its entry and in every answer.
            "review_threshold": service.model(None).segmenter.review_threshold,
        }

    @app.post(
        "/v1/segment",
        tags=["v1"],
        dependencies=[Depends(authorized)],
        response_model=schemas.SegmentResponse,
        responses={
            200: {
                "content": {"image/png": {}, "application/dicom": {}},
                "description": "JSON, the mask PNG, a DICOM SEG (dicom-seg) or SR (dicom-sr)",
            },
            **problems,
        },
        openapi_extra={"requestBody": _REQUEST_BODY},
    )
    async def segment(
        request: Request,
        model: Annotated[str | None, Query(description="Model name (default: the first).")] = None,
        tta: Annotated[bool, Query(description="Test-time augmentation (5x the work).")] = False,
        format: Annotated[
            Literal[OUTPUTS] | None,  # type: ignore[valid-type]
            Query(
                description="json, png, dicom-seg (a DICOM Segmentation object over a DICOM "
                "upload) or dicom-sr (its TID 1500 report of the lung areas); default json "
                "unless Accept asks for image/png."
            ),
        ] = None,
        image: Annotated[
            bool, Query(description="Also return the decoded X-ray as PNG (for display).")
        ] = False,
    ) -> Response:
        """Segment one chest X-ray: the raw file as the body, or multipart field `file`."""
        if not body_type_allowed(request.headers.get("content-type")):
            raise ServeError(415, f"unsupported Content-Type; send one of: {', '.join(BODY_TYPES)}")
        offered = offered_outputs()
        output = choose_output(request.headers.get("accept"), format, offered)
        if output is None:
            types = [MEDIA_TYPES[o] for o in ((format,) if format else offered[:2])]
            raise ServeError(406, f"Accept allows none of what this gives: {', '.join(types)}")
        chosen = service.model(model)
        batcher = service.batchers[chosen.name, tta]
        if service.pending >= config.max_pending:
            raise ServeError(503, "too many requests in progress; retry shortly")
        service.pending += 1
        try:
            work = _segment(
                request, service, chosen, batcher, tta, image and output == "json",
                DICOM_OUTPUTS.get(output),
            )  # fmt: skip
            result = await asyncio.wait_for(unless_client_leaves(request, work), config.timeout_s)
        except ClientLeft:
            service.metrics.left()
            log.info("a client left before its answer; its work was dropped")
            return Response(status_code=499)
        except TimeoutError:
            raise ServeError(504, f"not answered within {config.timeout_s:g} s") from None
        except ServeError:
            raise
        except Exception as exc:  # logged without its message; the client gets one line
            log_failure(exc)
            raise ServeError(500, _INTERNAL) from None
        finally:
            service.pending -= 1
        headers = {"Cache-Control": "no-store", "Vary": "Accept", **model_headers(chosen, tta)}
        service.metrics.reviews += result.review
        if output in DICOM_OUTPUTS:
            kind = output.removeprefix("dicom-")
            headers["Content-Disposition"] = f'attachment; filename="lungseg-{kind}.dcm"'
            return Response(
                result.result.files[DICOM_OUTPUTS[output]],
                media_type="application/dicom",
                headers=headers,
            )
        if output == "json":
            return JSONResponse(result.to_json(), headers=headers)
        rows = result.measurements
        headers.update({
            "X-Lungseg-Lung-Px": str(rows["lung_px"]),
            "X-Lungseg-Right-Lung-Px": str(rows["right_lung_px"]),
            "X-Lungseg-Left-Lung-Px": str(rows["left_lung_px"]),
            "X-Lungseg-Uncertain-Fraction": f"{result.uncertainty:.6f}",
            "X-Lungseg-Review": "true" if result.review else "false",
        })  # fmt: skip
        return Response(result.mask_png, media_type="image/png", headers=headers)


async def _segment(
    request, service: Service, model, batcher, tta: bool, with_image: bool, dicom: str | None
):
    try:
        data = await read_upload(request, service.config.max_upload_bytes)
    except ClientDisconnect:
        raise ClientLeft from None
    work = segment_upload(
        data, model, batcher, service.pool, tta, with_image, dicom, service.encoder
    )
    return await unless_client_leaves(request, work)


_REQUEST_BODY = {
    "description": "The X-ray file: the raw body, or multipart/form-data with the field `file`.",
    "required": True,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
    },
}


def _page(service: Service) -> str:
    """The page (``templates/serve.html.j2``); the script fills it in from ``/v1/models``."""
    from lungseg.core.render import render

    # The script and style by the digest of their content: a browser that kept an older
    # lungseg's script would run it against this API.
    assets = hashlib.sha256(b"".join((STATIC / n).read_bytes() for n in ("app.js", "app.css")))
    return render(
        "serve.html.j2",
        version=__version__,
        asset_version=assets.hexdigest()[:12],
        max_upload_mb=service.config.max_upload_mb,
        uncertain_low=UNCERTAIN_LOW,
        uncertain_high=UNCERTAIN_HIGH,
        key_required=service.api_key is not None,
    )


def _add_error_handlers(app: FastAPI) -> None:
    def problem(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail}, status, headers=headers)

    @app.exception_handler(ServeError)
    async def refused(request: Request, exc: ServeError) -> JSONResponse:
        extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status in (429, 503):
            extra = {"Retry-After": str(exc.retry_after or 1)}
        return problem(exc.status, exc.message, extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return problem(422, f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), exc.headers)  # 405's Allow

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log_failure(exc)
        return problem(500, _INTERNAL)
