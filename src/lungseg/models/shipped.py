"""The models that ship inside the package, and where their weights are.

``lungseg segment --model unet`` and ``load_model("unet")`` find ``weights/unet.pt`` here; the
``ensemble`` averages :data:`ENSEMBLE_MODELS`. Light to import (no NumPy or PyTorch), so the
command line can list the names in its help.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lungseg.core.errors import LungsegError

#: Models shipped inside the package. ``unet-fast`` is the U-Net run at half resolution inside
#: the model (``downsample=2``), the variant for CPU latency (see MODEL_CARD.md for its accuracy).
SHIPPED_MODELS = ("unet", "fcn", "deeplabv3", "unet-fast")
#: The mask convention each shipped model was trained on
#: (:data:`lungseg.models.identity.CONVENTIONS`): all four learnt the masks of ``covid-cxr``,
#: which include the lung behind the heart.
SHIPPED_CONVENTIONS = {name: "anatomical" for name in SHIPPED_MODELS}
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


def shipped_name(path: str | Path) -> str | None:
    """The shipped model whose weights file ``path`` is, or None: a shipped model loaded by its
    path (an ONNX export of it, a server's cached export) keeps its name and convention."""
    path = Path(path)
    if path.parent.resolve() != weights_dir().resolve() or path.suffix != ".pt":
        return None
    return path.stem if path.stem in SHIPPED_MODELS else None


def weights_dir() -> Path:
    """Folder of the shipped weights and their MODEL_CARD.md inside the installed package."""
    return Path(str(resources.files("lungseg") / "weights"))
