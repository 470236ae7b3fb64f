"""Starting a run from trained weights (``train.init``): a shipped model, or an earlier run,
fine-tuned on one's own films (as nnU-Net's ``-pretrained_weights`` does).

Only the weights are taken: the optimizer, the schedule and the history start anew. The
architecture must be the run's own (the model and its settings): a mismatch is one error that
names both, not a missing-key traceback from ``load_state_dict``. The checkpoints record which
weights the run started from (the name given and the file's SHA-256), as a shipped name means
other weights in another release.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lungseg.core.config import to_dict
from lungseg.core.errors import LungsegError


def load_init(model: nn.Module, model_name: str, init: str) -> dict[str, str]:
    """Load the weights named by ``init`` into ``model`` (a fresh ``model_name``).

    Args:
        model: the run's freshly built model.
        model_name: its registered name (``train.model``).
        init: a shipped model name, a checkpoint file or a run directory (its ``best.pt``).

    Returns:
        ``{"from": init, "sha256": digest of the weights file}`` for the checkpoints.

    Raises:
        LungsegError: ``init`` names nothing, an ensemble or an ONNX export, an unreadable
            checkpoint, or another architecture than the run's.
    """
    from lungseg.inference.segmenter import model_files
    from lungseg.models.checkpoint import load_checkpoint
    from lungseg.models.identity import file_digest

    files = model_files(init)
    if len(files) != 1 or files[0].suffix == ".onnx":
        raise LungsegError(
            f"train.init {init!r}: give one model's PyTorch weights (a shipped model, a "
            "checkpoint or a run directory), not an ensemble or an ONNX export"
        )
    path = files[0]
    ckpt = load_checkpoint(path)
    theirs = _architecture(ckpt["model"]["name"], ckpt["model"]["kwargs"])
    ours = _architecture(model_name, to_dict(model.init_kwargs))
    if theirs != ours:
        raise LungsegError(
            f"train.init {init!r} holds a {theirs}, this run builds a {ours}; give the run "
            "the same model settings (train.model, n_filters, dropout, batch_norm, "
            "model_kwargs) to start from these weights",
            path,
        )
    model.load_state_dict(ckpt["state_dict"])
    return {"from": init, "sha256": file_digest(path)}


def _architecture(name: str, kwargs: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    return f"{name} ({settings})"
