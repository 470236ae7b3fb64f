"""The run directory, the unit of record of a training run: what it holds and when.

A run directory records one training run:

* ``config.yaml``: every resolved setting (``train:`` and ``prepare:`` sections, usable as
  ``--config``), written once the inputs are checked, before the first epoch;
* ``best.pt`` and ``last.pt``: checkpoints (:mod:`lungseg.models.checkpoint`) of the best epoch
  and of the last one, and ``history.csv``, written atomically after each epoch by a background
  writer (:mod:`lungseg.training.writer`) while the next epoch trains; ``curves.png`` at the end
  and at most every 30 s;
* ``summary.json``: model, parameters, epochs, best epoch and metric, training time and speed,
  written when training ends; its presence marks a finished run.

A run directory belongs to one run: starting another in it is refused (``--resume`` continues
it), and :func:`lungseg.core.locking.exclusive` keeps a second process out while one trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungseg._version import __version__
from lungseg.core.config import save_yaml
from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import atomic_write_text
from lungseg.models.checkpoint import load_checkpoint, plain_state_dict
from lungseg.training.config import TrainConfig, check_resumable


@dataclass
class RunResult:
    """What :func:`train` returns (on every rank).

    Attributes:
        run_dir: the run directory.
        model: the trained network with the last epoch's weights, unwrapped, in eval mode.
        history: one dict per epoch (the rows of ``history.csv``).
        epochs: epochs completed.
        best_epoch: epoch of the best weights (in ``best.pt``).
        best_metric: ``{"name": "val_loss" | "val_dice", "value": float}``.
        n_parameters: trainable parameters of the model.
        train_seconds: wall time of all epochs (training + validation), across resumes.
        images_per_second: training images per second over ``train_seconds``, all processes.
        setup_seconds: this call's set-up before its first epoch (data to the device, model,
            optimizer), paid once per run, not per epoch.
    """

    run_dir: Path
    model: nn.Module
    history: list[dict[str, Any]]
    epochs: int
    best_epoch: int
    best_metric: dict[str, Any]
    n_parameters: int
    train_seconds: float
    images_per_second: float
    setup_seconds: float = 0.0

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"


def checkpoint_to_resume(
    out: Path, resume: bool, config: TrainConfig, split: str
) -> dict[str, Any] | None:
    """The ``last.pt`` to continue from (``None``: start from scratch), checked against the
    run's settings and split.

    Raises:
        LungsegError: ``out`` holds a run and ``resume`` is off, or there is nothing to resume,
            or the run was started with other settings or data.
    """
    last = out / "last.pt"
    if not resume:
        if last.exists():
            raise LungsegError(
                "already holds a training run (last.pt); pass --resume to continue it, or "
                "choose another --out",
                out,
            )
        return None
    if not last.exists():
        if (out / "config.yaml").is_file():
            return None  # stopped before its first epoch ended: start it again
        raise LungsegError("nothing to resume: no last.pt (start a run without --resume)", out)
    # To the host: Adam's step counters must not land on the GPU, where every step would
    # then read them back; load_state_dict moves the rest where the parameters are.
    ckpt = load_checkpoint(last, map_location="cpu")
    check_resumable(ckpt, config, split, last)
    return ckpt


def write_start(out: Path, config: TrainConfig, prepared: Any) -> None:
    """``config.yaml`` (every resolved setting) before the first epoch; a finished run's
    ``summary.json`` goes, as the run is no longer finished."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    save_yaml(
        {
            "train": config,
            "prepare": prepared.config,
            "cache": str(prepared.path.absolute()),
            "lungseg_version": __version__,
        },
        out / "config.yaml",
    )


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``summary.json``: written last, it marks the run finished."""
    atomic_write_text(
        out / "summary.json",
        json.dumps({**summary, "lungseg_version": __version__}, indent=2) + "\n",
    )


def training_checkpoint(
    *,
    config: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    prepared: Any,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    split: str,
    n_train: int,
    n_val: int,
    init: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The checkpoint of a training run after its latest epoch (see the module docstring).

    Args:
        config: the run's :class:`~lungseg.training.config.TrainConfig`.
        model: the plain model (not DDP- or compile-wrapped).
        optimizer, scheduler: their state is kept for ``--resume`` (``scheduler`` may be None).
        prepared: the :class:`~lungseg.data.cache.PreparedData` trained on.
        history: one row per finished epoch.
        best: ``{"epoch", "name", "value"}`` of the best epoch so far.
        split: :func:`~lungseg.training.data.split_digest` of the training/validation split.
        n_train, n_val: training and validation images.
        init: the weights the run started from (:func:`~lungseg.training.init_weights.load_init`).
    """
    from lungseg.core.config import to_dict
    from lungseg.inference.postprocessing import PostprocessConfig

    return {
        "model": {"name": config.model, "kwargs": to_dict(model.init_kwargs)},
        "size": prepared.size,
        "preprocess": to_dict(prepared.config.preprocess),
        # The masks' convention is the data's, so the model's is what it was trained on.
        "convention": prepared.config.convention,
        "postprocess": to_dict(PostprocessConfig.preset(config.postprocess)),
        "epoch": history[-1]["epoch"],
        "best_epoch": best["epoch"],
        "best_metric": {"name": best["name"], "value": best["value"]},
        "metrics": dict(history[-1]),
        "history": [dict(row) for row in history],
        "state_dict": plain_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "train_config": to_dict(config),
        "init": init,
        "data": {
            "cache": str(prepared.path.absolute()),
            "split": split,
            "n_train": n_train,
            "n_val": n_val,
        },
    }
