"""The models a service runs: loaded once per worker, on ONNX Runtime where that is faster.

A checkpoint (shipped or trained) is exported to ONNX once, with :func:`lungseg.export.export_onnx`
as ``lungseg export`` does, into ``$LUNGSEG_CACHE_DIR/onnx`` (default ``~/.cache/lungseg/onnx``),
named by the digest of its weights and the lungseg version; later starts load the file without
importing PyTorch.
ONNX Runtime answers one image in 6.6 ms where PyTorch takes 9.1 (``unet-fast``, 2 threads,
BENCHMARKS.md) and is as fast on batches, so ``--backend auto`` uses it on the CPU whenever it is
installed. An ``.onnx`` file given as the model runs on ONNX Runtime as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungseg._version import __version__
from lungseg.errors import LungsegError
from lungseg.inference import Segmenter, ensemble, load_model
from lungseg.io_utils import user_cache
from lungseg.serve.settings import ServeConfig
from lungseg.shipped import ENSEMBLE_MODELS, MODEL_NAMES, SHIPPED_MODELS, shipped_weights

logger = logging.getLogger("lungseg.serve")

ONNX_OPSET = 17


@dataclass
class ServedModel:
    """One model as the API offers it.

    Attributes:
        name: what ``?model=`` calls it (a shipped name, or the file or folder name of a path).
        segmenter: the model with its preprocessing and postprocessing.
        augmented: the same networks with test-time augmentation (``?tta=true``).
        backend: ``onnxruntime`` or ``pytorch``.
        version: the lungseg version and the digest of the weights it runs.
    """

    name: str
    segmenter: Segmenter
    augmented: Segmenter
    backend: str
    version: str

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
        segmenter, backend, digest = _load(spec, config, use_onnx)
        segmenter = dataclasses.replace(segmenter, name=name)
        model = ServedModel(
            name, segmenter, segmenter.with_tta(), backend, f"{__version__}+{digest[:12]}"
        )
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


def _load(spec: str, config: ServeConfig, use_onnx: bool) -> tuple[Segmenter, str, str]:
    """``(segmenter, backend, digest of its weights)`` for a model name or path."""
    if spec.endswith(".onnx"):
        segmenter = load_model(spec, threads=config.threads)
        return segmenter, "onnxruntime", _digest(Path(segmenter.source))
    if not use_onnx:
        segmenter = load_model(spec, device=config.device)
        sources = (segmenter.info or {}).get("members") or [segmenter.source]
        return segmenter, "pytorch", _combined([_digest(Path(s)) for s in sources])
    checkpoints = _checkpoints(spec)
    digests = [_digest(path) for path in checkpoints]
    members = [
        dataclasses.replace(_cached_onnx(path, d, config.threads), source=str(path))
        for path, d in zip(checkpoints, digests, strict=True)
    ]
    return (
        (members[0] if len(members) == 1 else ensemble(members)),
        "onnxruntime",
        _combined(digests),
    )


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


def _checkpoints(spec: str) -> list[Path]:
    """The checkpoint file(s) behind a model name or path, found without loading them."""
    if spec == "ensemble":
        return [shipped_weights(name) for name in ENSEMBLE_MODELS]
    if spec in SHIPPED_MODELS:
        return [shipped_weights(spec)]
    path = Path(spec)
    path = path / "best.pt" if path.is_dir() else path
    if not path.is_file():
        load_model(spec, device="cpu")  # raises the error every command gives for it
    return [path]


def _combined(digests: list[str]) -> str:
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def onnx_twin(checkpoint: Path, digest: str) -> Path:
    """The ONNX export of ``checkpoint`` (whose SHA-256 is ``digest``) in the cache, made on
    first use, atomically: workers starting together never read a half-written file."""
    folder = onnx_cache_dir()
    target = folder / f"{digest[:24]}-lungseg{__version__}-opset{ONNX_OPSET}.onnx"
    if target.is_file():
        return target
    from lungseg.export import export_onnx

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
        export_onnx(checkpoint, tmp, opset=ONNX_OPSET)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def onnx_cache_dir() -> Path:
    """``$LUNGSEG_CACHE_DIR/onnx``, default ``~/.cache/lungseg/onnx``."""
    return user_cache("onnx")


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()
