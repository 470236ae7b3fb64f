"""The models that ship inside the package, and where their weights are.

``lungseg segment --model unet`` and ``load_model("unet")`` find ``weights/unet.pt`` here; the
``ensemble`` averages :data:`ENSEMBLE_MODELS`. Light to import (no NumPy or PyTorch), so the
command line can list the names in its help.

Two mask conventions are shipped, and a model's name says which it draws: ``unet``, ``fcn``,
``deeplabv3``, ``unet-fast`` and the ``ensemble`` draw the whole (anatomical) lung, including the
lung behind the heart, as the masks of ``covid-cxr`` do; ``unet-visible`` draws the visible lung
fields, as the COVID-19 Radiography Database's own masks (and JSRT, Montgomery, Shenzhen) do.
A name, not a ``--convention`` switch, because the two are different weights with different
accuracy, and every output names the model (and its convention) that made it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lungseg.core.errors import LungsegError

#: Models shipped inside the package. ``unet-fast`` is the U-Net run at half resolution inside
#: the model (``downsample=2``), the variant for CPU latency (see MODEL_CARD.md for its accuracy);
#: ``unet-visible`` is that network trained on visible-lung-field masks (shenzhen + the database's
#: Viral Pneumonia class).
SHIPPED_MODELS = ("unet", "fcn", "deeplabv3", "unet-fast", "unet-visible")
#: The mask convention each shipped model was trained on
#: (:data:`lungseg.models.identity.CONVENTIONS`), for checkpoints that do not record it: the first
#: four learnt the masks of ``covid-cxr``, which include the lung behind the heart.
SHIPPED_CONVENTIONS = {
    "unet": "anatomical",
    "fcn": "anatomical",
    "deeplabv3": "anatomical",
    "unet-fast": "anatomical",
    "unet-visible": "visible",
}
#: Review thresholds (:func:`lungseg.inference.quality.calibrate_review_threshold`) of the
#: shipped models whose checkpoints predate the ``review_threshold`` key, calibrated on their
#: ``covid-cxr`` validation split (63 images) with ``uncertain_fraction`` as a share in [0, 1]:
#: flagging 90 % of the masks below Dice 0.93 would flag 40-63 % of the images, so each is the
#: cap, a quarter of the images (unet-visible records its own).
SHIPPED_REVIEW_THRESHOLDS = {"unet": 0.155, "fcn": 0.159, "deeplabv3": 0.173, "unet-fast": 0.174}
#: The reference study's three architectures, compared by default.
STUDY_MODELS = ("unet", "fcn", "deeplabv3")
#: The members of ``load_model("ensemble")``: the study's three architectures.
ENSEMBLE_MODELS = STUDY_MODELS
#: Names that `load_model` and `--model` accept: the shipped models and their ensemble.
MODEL_NAMES = (*SHIPPED_MODELS, "ensemble")


def shipped_weights(name: str) -> Path:
    """Path of a shipped model's weights inside the installed package."""
    if name not in SHIPPED_MODELS:
        raise LungsegError(
            f"no shipped model named {name!r}; shipped models: {', '.join(SHIPPED_MODELS)}, "
            "ensemble (or give a checkpoint path)"
        )
    path = weights_dir() / f"{name}.pt"
    if not path.is_file():
        raise LungsegError(
            f"the shipped weights of {name!r} are not in this installation (a partial install?); "
            "reinstall lungseg, or use a run directory or checkpoint of your own (train one with "
            "'lungseg train'), e.g. load_model('runs/unet'), segment --weights runs/unet",
            path,
        )
    return path


def shipped_name(path: str | Path, digest: str | None = None) -> str | None:
    """The shipped model whose weights file ``path`` is, or None: a shipped model loaded by its
    path (an ONNX export of it, a server's cached export, a copy of its file elsewhere) keeps
    its name, convention and review threshold. A copy is known by its bytes: same size, then
    the same SHA-256 (a checkpoint of one's own never is); ``digest``: the file's, when the
    caller has it already."""
    from lungseg.models.identity import file_digest

    path = Path(path)
    if path.suffix != ".pt":
        return None
    if path.parent.resolve() == weights_dir().resolve():
        return path.stem if path.stem in SHIPPED_MODELS else None
    size = path.stat().st_size
    for name in SHIPPED_MODELS:
        shipped = weights_dir() / f"{name}.pt"
        if shipped.is_file() and shipped.stat().st_size == size:
            digest = digest or file_digest(path)
            if file_digest(shipped) == digest:
                return name
    return None


def weights_dir() -> Path:
    """Folder of the shipped weights and their MODEL_CARD.md inside the installed package."""
    return Path(str(resources.files("lungseg") / "weights"))
