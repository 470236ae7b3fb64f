"""The models a service runs: loaded once per worker, on ONNX Runtime where that is faster.

A checkpoint (shipped or trained) is exported to ONNX once, with
:func:`lungseg.inference.export.export_onnx` as ``lungseg export`` does, into
``$LUNGSEG_CACHE_DIR/onnx`` (default ``~/.cache/lungseg/onnx``), named by the digest of its weights
and the lungseg version; later starts load the file without importing PyTorch.
ONNX Runtime answers one image in 6.6 ms where PyTorch takes 9.1 (``unet-fast``, 2 threads,
BENCHMARKS.md) and is as fast on batches, so ``--backend auto`` uses it on the CPU whenever it is
installed. An ``.onnx`` file given as the model runs on ONNX Runtime as it is.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungseg._version import __version__
from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import user_cache
from lungseg.inference.export import ONNX_OPSET
from lungseg.inference.segmenter import Segmenter, ensemble, load_model, model_files
from lungseg.models.identity import ModelIdentity, file_digest
from lungseg.models.shipped import MODEL_NAMES
from lungseg.serve.settings import ServeConfig

logger = logging.getLogger("lungseg.serve")


@dataclass
class ServedModel:
    """One model as the API offers it.

    Attributes:
        name: what ``?model=`` calls it (a shipped name, or the file or folder name of a path).
        segmenter: the model with its preprocessing and postprocessing.
        augmented: the same networks with test-time augmentation (``?tta=true``).
        backend: ``onnxruntime`` or ``pytorch``.
    """

    name: str
    segmenter: Segmenter
    augmented: Segmenter
    backend: str

    @property
    def identity(self) -> ModelIdentity:
        """The model's one identity (the same as ``lungseg segment`` records for it)."""
        return self.segmenter.identity

    @property
    def version(self) -> str:
        """The lungseg version and the first digits of the weights' digest."""
        return f"{self.identity.version}+{self.identity.short_digest}"

    def describe(self, default: bool) -> dict[str, Any]:
        """The model's entry in ``GET /v1/models``: no path of this machine is shown."""
        info = self.segmenter.info or {}
        return {
            "name": self.name,
            "default": default,
            "version": self.version,
            "backend": self.backend,
            "architecture": (info.get("model") or {}).get("name", self.segmenter.name),
            "working_size": self.segmenter.size,
            "preprocess": self.segmenter.preprocess.preset,
            "networks": len(self.segmenter.networks),
            "tta_views": len(self.augmented.info["tta"]),
            "weights_sha256": self.identity.digest,
            "convention": self.identity.convention,
            "review_threshold": self.segmenter.review_threshold,
        }


def load_models(config: ServeConfig) -> dict[str, ServedModel]:
    """Load every model of ``config`` (the first is the default), each warmed up once.

    With the exports cached, the ONNX Runtime road never imports PyTorch: it is most of the
    start-up time.

    Raises:
        LungsegError: a model that is not found or cannot be loaded, named on one line.
    """
    use_onnx = _use_onnx(config)
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        # Its telemetry events would carry this machine's paths and the models' names.
        onnxruntime.disable_telemetry_events()
    served: dict[str, ServedModel] = {}
    for spec in config.models:
        name = _api_name(spec, served)
        segmenter, backend = _load(spec, config, use_onnx)
        segmenter = dataclasses.replace(segmenter, name=name)
        model = ServedModel(name, segmenter, segmenter.with_tta(), backend)
        # A forward pass of one image and of the largest batch before the first request: the
        # runtime's buffers reach their full size at start, not under the first busy minute.
        inputs = segmenter.preprocessed(np.zeros((segmenter.size, segmenter.size), np.uint8))
        for n in sorted({1, config.max_batch}):
            segmenter.proba_preprocessed([inputs] * n)
        served[name] = model
    return served


def _use_onnx(config: ServeConfig) -> bool:
    installed = importlib.util.find_spec("onnxruntime") is not None
    if config.backend == "onnx" and not installed:
        raise LungsegError("--backend onnx needs onnxruntime: pip install 'lungseg[onnx]'")
    if config.backend != "auto":
        return config.backend == "onnx"
    return installed and (config.device == "cpu" or (config.device == "auto" and not _cuda()))


def _cuda() -> bool:
    """A usable CUDA device; PyTorch is asked only where an NVIDIA driver is loaded."""
    if not Path("/proc/driver/nvidia/version").exists():
        return False
    import torch

    return torch.cuda.is_available()


def _api_name(spec: str, taken: dict[str, ServedModel]) -> str:
    path = Path(spec)
    base = spec if spec in MODEL_NAMES else (path.name if path.is_dir() else path.stem)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}-{k}"
    return name


def _load(spec: str, config: ServeConfig, use_onnx: bool) -> tuple[Segmenter, str]:
    """``(segmenter, backend)`` for a model name or path; on ONNX Runtime, a checkpoint runs as
    its cached export and keeps the checkpoint's identity."""
    if spec.endswith(".onnx"):
        return load_model(spec, threads=config.threads), "onnxruntime"
    if not use_onnx:
        return load_model(spec, device=config.device), "pytorch"
    members = []
    for path in model_files(spec):
        member = _cached_onnx(path, file_digest(path), config.threads)
        members.append(dataclasses.replace(member, source=str(path)))
    return (members[0] if len(members) == 1 else ensemble(members)), "onnxruntime"


def _cached_onnx(checkpoint: Path, digest: str, threads: int | None) -> Segmenter:
    """The ONNX twin of ``checkpoint`` loaded; a cached file that cannot be loaded (cut short,
    overwritten) is exported again, once, instead of stopping every start."""
    twin = onnx_twin(checkpoint, digest)
    try:
        return load_model(twin, threads=threads)
    except LungsegError as exc:
        logger.warning("cached ONNX export unreadable (%s); exporting it again", exc.problem)
        twin.unlink(missing_ok=True)
        return load_model(onnx_twin(checkpoint, digest), threads=threads)


def onnx_twin(checkpoint: Path, digest: str) -> Path:
    """The ONNX export of ``checkpoint`` (whose SHA-256 is ``digest``) in the cache, made on
    first use, atomically: workers starting together never read a half-written file."""
    folder = onnx_cache_dir()
    # "id2": exports that record their checkpoint's identity and review threshold (older
    # cached ones do not).
    target = folder / f"{digest[:24]}-lungseg{__version__}-opset{ONNX_OPSET}-id2.onnx"
    if target.is_file():
        return target

    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=".onnx")
    except OSError as exc:
        # An unwritable cache costs the next start its export, not this start its service.
        folder = Path(tempfile.mkdtemp(prefix="lungseg-onnx-"))
        target = folder / target.name
        logger.warning("cannot write the ONNX cache (%s); exporting to %s", exc.strerror, folder)
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=".onnx")
    os.close(handle)
    try:
        from lungseg.inference.export import export_onnx

        export_onnx(checkpoint, tmp, opset=ONNX_OPSET)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def onnx_cache_dir() -> Path:
    """``$LUNGSEG_CACHE_DIR/onnx``, default ``~/.cache/lungseg/onnx``."""
    return user_cache("onnx")
