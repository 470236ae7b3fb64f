"""Starting a run from trained weights (``train.init``): a shipped model, or an earlier run,
fine-tuned on one's own films (as nnU-Net's ``-pretrained_weights`` does).

Only the weights are taken: the optimizer, the schedule and the history start anew. The
architecture must be the run's own (the model and its settings), and the data must be
preprocessed as the weights were trained (the size may differ): a mismatch is one error that
names both, not a missing-key traceback from ``load_state_dict`` or a silently worse start.
The checkpoints record which weights the run started from (the name given and the file's
SHA-256), as a shipped name means other weights in another release.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from lungseg.core.config import from_dict, to_dict
from lungseg.core.errors import LungsegError
from lungseg.data.preprocessing import PreprocessConfig


def load_init(
    model: nn.Module, model_name: str, init: str, preprocess: PreprocessConfig
) -> dict[str, str]:
    """Load the weights named by ``init`` into ``model`` (a fresh ``model_name``).

    Args:
        model: the run's freshly built model.
        model_name: its registered name (``train.model``).
        init: a shipped model name, a checkpoint file or a run directory (its ``best.pt``).
        preprocess: how the run's data was prepared.

    Returns:
        ``{"from": init, "sha256": digest of the weights file}`` for the checkpoints.

    Raises:
        LungsegError: ``init`` names nothing, an ensemble or an ONNX export, an unreadable
            checkpoint, another architecture than the run's, or data preprocessed otherwise.
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
    differences = _differences(
        (ckpt["model"]["name"], ckpt["model"]["kwargs"]), (model_name, to_dict(model.init_kwargs))
    )
    if differences:
        raise LungsegError(
            f"train.init {init!r} does not fit this run's model: {differences}; give the run "
            "the weights' model settings (train.model, n_filters, dropout, batch_norm, "
            "model_kwargs) to start from them",
            path,
        )
    trained_on = from_dict(PreprocessConfig, ckpt["preprocess"], f"{path}:preprocess")
    if dataclasses.replace(trained_on, size=preprocess.size) != preprocess:
        raise LungsegError(
            f"train.init {init!r} was trained on images preprocessed with "
            f"{_steps(trained_on)}; this run's data is prepared with {_steps(preprocess)}; "
            f"prepare it as the weights expect (--preprocess {trained_on.preset}, or the "
            "same prepare.preprocess settings)",
            path,
        )
    model.load_state_dict(ckpt["state_dict"])
    return {"from": init, "sha256": file_digest(path)}


def started_from(init: dict[str, str] | None) -> str:
    """``, from WEIGHTS (sha256 ...)`` for a run's start line; nothing for random weights."""
    return "" if init is None else f", from {init['from']} (sha256 {init['sha256'][:12]})"


def _differences(weights: tuple[str, dict[str, Any]], run: tuple[str, dict[str, Any]]) -> str:
    """``"downsample: weights 2, run 1"``, or nothing when the two architectures are one."""
    if weights[0] != run[0]:
        return f"the weights are a {weights[0]}, the run builds a {run[0]}"
    keys = sorted(set(weights[1]) | set(run[1]))
    return "; ".join(
        f"{k}: weights {weights[1].get(k)!r}, run {run[1].get(k)!r}"
        for k in keys
        if weights[1].get(k) != run[1].get(k)
    )


def _steps(config: PreprocessConfig) -> str:
    return f"{config.preset} ({', '.join(config.steps())})"
