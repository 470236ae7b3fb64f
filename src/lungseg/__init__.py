"""lungseg: lung segmentation in chest X-rays."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lungseg._version import __version__

__all__ = ["__version__", "load_model"]

if TYPE_CHECKING:
    from lungseg.inference.segmenter import load_model


def __getattr__(name: str) -> Any:
    # ``import lungseg`` stays light (the CLI's --help, --version); the inference stack with
    # OpenCV, and PyTorch once a model loads, is imported on first use of ``lungseg.load_model``.
    if name == "load_model":
        from lungseg.inference.segmenter import load_model

        return load_model
    raise AttributeError(f"module 'lungseg' has no attribute {name!r}")
