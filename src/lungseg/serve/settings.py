"""The settings of ``lungseg serve``, each with its one default, and their checks.

Light to import (no NumPy, PyTorch or FastAPI): the command line shows these defaults in its
help. The settings travel to uvicorn's worker processes as JSON in an environment variable
(:data:`ENV_CONFIG`), since a worker process rebuilds the app from an import string.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from lungseg.core.errors import LungsegError

#: Where :func:`ServeConfig.to_environment` puts the settings for uvicorn's worker processes.
ENV_CONFIG = "LUNGSEG_SERVE_CONFIG"
#: When set, every ``/v1`` request needs ``Authorization: Bearer <this value>``.
ENV_API_KEY = "LUNGSEG_API_KEY"
BACKENDS = ("auto", "onnx", "torch")


@dataclass(frozen=True)
class ServeConfig:
    """How ``lungseg serve`` runs.

    Attributes:
        models: shipped model names, run directories, checkpoints or ``.onnx`` files; the first
            is the default of ``POST /v1/segment``.
        backend: ``auto`` runs checkpoints on ONNX Runtime (exported once into the cache) when
            it is installed, else PyTorch; ``onnx`` or ``torch`` force one.
        host: address to bind; 127.0.0.1 keeps the service on this machine.
        port: TCP port.
        workers: processes, each with its own copy of the models.
        threads: ONNX Runtime intra-op threads per worker (``None``: its default).
        device: PyTorch device (``auto``, ``cpu``, ``cuda``).
        max_upload_mb: largest accepted image file (413 above).
        timeout_s: a request still unanswered after this long gets 504.
        max_batch: most images in one forward pass.
        batch_wait_ms: how long a batch waits for requests already being decoded.
        max_pending: requests in progress at once; more get 503.
        cors_origins: browser origins allowed to call the API from other pages (none: CORS off).
        allowed_hosts: names the ``Host`` header may carry besides this machine's loopback
            names, the bound address and any IP address (``*``: any; DNS rebinding).
        ssl_certfile: PEM certificate chain: serve HTTPS (with ``ssl_keyfile``).
        ssl_keyfile: PEM private key of ``ssl_certfile``.
        max_connections: open connections at once; beyond it the longest-idle one is closed
            (lowered to fit the process's open-files limit).
        header_timeout_s: a connection that has not sent a whole request head this long after
            opening (or after its last answer, kept alive) is closed.
    """

    models: tuple[str, ...] = ("unet-fast",)
    backend: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int | None = None
    device: str = "auto"
    max_upload_mb: float = 50.0
    timeout_s: float = 30.0
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_pending: int = 256
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    max_connections: int = 512
    header_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        models = tuple(m.strip() for item in self.models for m in str(item).split(",") if m.strip())
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        if not models:
            raise LungsegError("--model: give at least one model")
        if len(set(models)) != len(models):
            raise LungsegError(f"--model: a model is named twice ({', '.join(models)})")
        if self.backend not in BACKENDS:
            raise LungsegError(
                f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}"
            )
        checks = {
            "port": 0 <= self.port <= 65535,
            "workers": self.workers >= 1,
            "threads": self.threads is None or self.threads >= 1,
            "max-upload-mb": self.max_upload_mb > 0,
            "timeout": self.timeout_s > 0,
            "batch-size": self.max_batch >= 1,
            "batch-wait-ms": self.batch_wait_ms >= 0,
            "max-pending": self.max_pending >= 1,
            "max-connections": self.max_connections >= 8,
            "header-timeout": self.header_timeout_s > 0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise LungsegError(f"out of range: --{', --'.join(wrong)}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise LungsegError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
        for flag, path in (("ssl-certfile", self.ssl_certfile), ("ssl-keyfile", self.ssl_keyfile)):
            if path is not None and not os.path.isfile(path):
                raise LungsegError(f"--{flag}: no such file", path)
        if "*" in self.cors_origins:
            raise LungsegError(
                "--cors-origin '*' would let any web page send X-rays here; name the origins"
            )

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_certfile else "http"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_environment(self) -> None:
        """Put these settings where :meth:`from_environment` finds them in a worker process."""
        os.environ[ENV_CONFIG] = json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_environment(cls) -> ServeConfig:
        raw = os.environ.get(ENV_CONFIG)
        if not raw:
            raise LungsegError(f"{ENV_CONFIG} is not set: start the service with 'lungseg serve'")
        data = json.loads(raw)
        for key in ("models", "cors_origins", "allowed_hosts"):
            data[key] = tuple(data[key])
        return cls(**data)


def api_key() -> str | None:
    """``$LUNGSEG_API_KEY``, or None when it is not set.

    Raises:
        LungsegError: set but empty (or blank): the service would run open without a word.
    """
    key = os.environ.get(ENV_API_KEY)
    if key is None:
        return None
    if not key.strip():
        raise LungsegError(
            f"{ENV_API_KEY} is set but empty; give it a key, or unset it to serve without one"
        )
    return key
