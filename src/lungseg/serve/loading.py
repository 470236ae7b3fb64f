"""The models a service runs: loaded once per worker, on ONNX Runtime where that is faster.

A checkpoint (shipped or trained) is exported to ONNX once, with :func:`lungseg.export.export_onnx`
as ``lungseg export`` does, into ``$LUNGSEG_CACHE_DIR/onnx`` (default ``~/.cache/lungseg/onnx``),
named by the digest of its weights and the exporting PyTorch version; later starts load the file.
ONNX Runtime answers one image in 6.6 ms where PyTorch takes 9.1 (``unet-fast``, 2 threads,
BENCHMARKS.md) and is as fast on batches, so ``--backend auto`` uses it on the CPU whenever it is
installed. An ``.onnx`` file given as the model runs on ONNX Runtime as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungseg._version import __version__
from lungseg.data.blob_cache import ENV_CACHE_DIR
from lungseg.errors import LungsegError
from lungseg.inference import Segmenter, ensemble, load_model
from lungseg.serve.settings import ServeConfig
from lungseg.shipped import MODEL_NAMES

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

    Raises:
        LungsegError: a model that is not found or cannot be loaded, named on one line.
    """
    from lungseg.devices import resolve_device

    device = resolve_device(config.device)
    use_onnx = config.backend == "onnx" or (
        config.backend == "auto" and device == "cpu" and _onnxruntime_installed()
    )
    if config.backend == "onnx" and not _onnxruntime_installed():
        raise LungsegError("--backend onnx needs onnxruntime: pip install 'lungseg[onnx]'")
    served: dict[str, ServedModel] = {}
    for spec in config.models:
        name = _api_name(spec, served)
        segmenter, backend, digest = _load(spec, device, config.threads, use_onnx)
        segmenter = dataclasses.replace(segmenter, name=name)
        model = ServedModel(
            name, segmenter, segmenter.with_tta(), backend, f"{__version__}+{digest[:12]}"
        )
        blank = np.zeros((segmenter.size, segmenter.size), np.uint8)
        segmenter.proba_from_inputs([segmenter.network_inputs(blank)])  # first-call allocations
        served[name] = model
    return served


def _api_name(spec: str, taken: dict[str, ServedModel]) -> str:
    path = Path(spec)
    base = spec if spec in MODEL_NAMES else (path.name if path.is_dir() else path.stem)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}-{k}"
    return name


def _load(
    spec: str, device: str, threads: int | None, use_onnx: bool
) -> tuple[Segmenter, str, str]:
    """``(segmenter, backend, digest of its weights)`` for a model name or path."""
    if spec.endswith(".onnx"):
        segmenter = load_model(spec, threads=threads)
        return segmenter, "onnxruntime", _digest(Path(segmenter.source))
    segmenter = load_model(spec, device="cpu" if use_onnx else device)
    sources = (segmenter.info or {}).get("members") or [segmenter.source]
    digest = hashlib.sha256("".join(_digest(Path(s)) for s in sources).encode()).hexdigest()
    if not use_onnx:
        return segmenter, "pytorch", digest
    members = [
        dataclasses.replace(load_model(onnx_twin(Path(s)), threads=threads), source=s)
        for s in sources
    ]
    twin = members[0] if len(members) == 1 else ensemble(members)
    # The checkpoint's own description (and source), not the exported file's.
    twin = dataclasses.replace(twin, source=segmenter.source, info=segmenter.info)
    return twin, "onnxruntime", digest


def onnx_twin(checkpoint: Path) -> Path:
    """The ONNX export of ``checkpoint`` in the cache, made on first use (atomically, so
    workers starting together never read a half-written file)."""
    import torch

    from lungseg.export import export_onnx

    folder = onnx_cache_dir()
    target = folder / f"{_digest(checkpoint)[:24]}-torch{torch.__version__}-opset{ONNX_OPSET}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
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
    base = os.environ.get(ENV_CACHE_DIR)
    return (Path(base) if base else Path.home() / ".cache" / "lungseg") / "onnx"


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None
