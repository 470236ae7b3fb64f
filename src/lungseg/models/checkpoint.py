"""Training checkpoints: self-describing dicts of plain values and tensors.

A checkpoint holds everything needed to rebuild the model, apply the same preprocessing and
postprocessing, and continue training exactly where it stopped. It contains only dicts, lists,
strings, numbers, booleans, ``None`` and tensors, so it loads with
``torch.load(path, weights_only=True)``: opening a checkpoint someone hands you never runs code.

Keys (format 1):

* ``format`` (int): version of this layout; a newer one is refused with a clear error.
* ``lungseg_version`` (str): the package version that wrote it.
* ``model``: ``{"name": str, "kwargs": dict}``, so ``create_model(name, **kwargs)`` rebuilds it.
* ``size`` (int): the square input size the model was trained at.
* ``preprocess`` (dict): the :class:`~lungseg.data.preprocessing.PreprocessConfig` of the training
  data.
* ``postprocess`` (dict): the :class:`~lungseg.inference.postprocessing.PostprocessConfig` to apply
  to the model's probabilities (training writes the ``seed`` preset; evaluation may replace it).
* ``epoch`` (int): epochs completed (1-based); ``best_epoch`` (int): the epoch of the best weights.
* ``best_metric``: ``{"name": "val_loss" | "val_dice", "value": float}``.
* ``metrics`` (dict): the last epoch's row of ``history``.
* ``history`` (list of dict): one row per epoch (``epoch, train_loss, val_loss, train_acc,
  val_acc, val_dice, lr, seconds``).
* ``state_dict``: model weights, fp32, from the plain module (never DDP- or compile-wrapped).
* ``optimizer``, ``scheduler`` (``None`` without a schedule): their ``state_dict()``.
* ``train_config`` (dict): the :class:`~lungseg.training.TrainConfig` of the run.
* ``data`` (dict): ``cache``, ``split`` (digest of the train/validation stems), ``n_train``,
  ``n_val`` of the training data.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungseg._version import __version__
from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import atomic_write

#: Version of the checkpoint layout written by this code.
CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "model", "size", "preprocess", "postprocess", "state_dict")


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` to ``path`` atomically (a crash leaves the previous file intact).

    Args:
        path: the ``.pt`` file.
        ckpt: a checkpoint dict (see the module docstring); ``format`` and ``lungseg_version``
            are filled in when missing.
    """
    ckpt = {"format": CHECKPOINT_FORMAT, "lungseg_version": __version__, **ckpt}
    atomic_write(Path(path), lambda fh: torch.save(ckpt, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``).

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go (``"cpu"``, ``"cuda"``, a device).

    Returns:
        The checkpoint dict.

    Raises:
        LungsegError: the file is missing, unreadable or corrupt, is not a lungseg checkpoint,
            or was written in a newer format than this version of lungseg reads.
    """
    path = Path(path)
    if not path.is_file():
        raise LungsegError("checkpoint not found", path)
    try:
        with warnings.catch_warnings():  # PyTorch's notes on pickle protocols are not for users
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    # Bytes that are not a zip archive go to PyTorch's legacy unpickler, which raises whatever
    # they make it do ("junk" is a memo lookup: KeyError): any failure to parse is the file's.
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise LungsegError(_unsafe(str(exc)), path) from None
        readable = isinstance(exc, RuntimeError | EOFError | OSError | zipfile.BadZipFile |
                              pickle.UnpicklingError) and str(exc).strip()  # fmt: skip
        first = str(exc).strip().splitlines()[0] if readable else type(exc).__name__
        raise LungsegError(
            f"cannot read checkpoint (corrupt, truncated or not a PyTorch file): {first[:200]}",
            path,
        ) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise LungsegError(
            "not a lungseg checkpoint (expected a dict with keys " + ", ".join(REQUIRED_KEYS) + ")",
            path,
        )
    fmt = ckpt["format"]
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise LungsegError(
            f"checkpoint format {fmt} is newer than this lungseg reads ({CHECKPOINT_FORMAT}); "
            f"it was written by lungseg {ckpt.get('lungseg_version', '?')}: upgrade lungseg",
            path,
        )
    return ckpt


def _unsafe(torch_message: str) -> str:
    """Why a file was refused by the weights-only unpickler, in one sentence for users. PyTorch's
    own text runs over several lines and advises ``weights_only=False``: never that."""
    found = re.search(r"GLOBAL ([\w.]+)", torch_message)
    objects = f"Python objects ({found.group(1)})" if found else "pickled Python code"
    return (
        f"not a lungseg checkpoint, or an unsafe one: it holds {objects} beyond tensors and "
        "settings, and lungseg never unpickles objects from a file"
    )


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model of a checkpoint with its weights, in eval mode, on the CPU.

    Args:
        ckpt: a dict from :func:`load_checkpoint`.

    Returns:
        The model (``(B, 1, H, W) -> (B, 1, H, W)`` logits); ``model.to(device)`` as needed.
    """
    from lungseg.models import create_model

    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``model`` unwrapped from DDP / ``torch.compile``: CPU, contiguous, fp32."""
    module = unwrap(model)
    out = {}
    for key, value in module.state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.float()
        out[key] = value.contiguous().clone()
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
