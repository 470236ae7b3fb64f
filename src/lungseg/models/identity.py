"""One identity per model: its name, the digest of its weights and its mask convention.

Every output that names a model (``measurements.csv``, ``segment.json``, the API's JSON, a DICOM
SEG or SR, a report, a model card) takes it from the :class:`ModelIdentity` that
:func:`lungseg.inference.segmenter.load_model` computes once, so two outputs of the same model on
the same input name the same model and derive the same DICOM UIDs, whichever command made them.

The digest is the SHA-256 of the weights file (a checkpoint, or, for an ONNX export, the
checkpoint it was exported from when the export records it); an ensemble's is the SHA-256 of its
members' digests in order. Light to import: no NumPy or PyTorch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lungseg._version import __version__

#: Mask conventions. ``anatomical``: the whole lung, including the lung behind the heart down to
#: the diaphragm (the masks of ``covid-cxr``); ``visible``: the visible lung fields, heart and the
#: lung behind it left out (the COVID-19 Radiography Database's own masks, JSRT, Montgomery,
#: Shenzhen). ``unknown``: a checkpoint that does not say.
CONVENTIONS = ("anatomical", "visible", "unknown")


@dataclass(frozen=True)
class ModelIdentity:
    """What a model is, as every output names it.

    Attributes:
        name: the name it was loaded by: a shipped model (``unet``, ``unet-fast``, ``ensemble``),
            else the architecture recorded in the checkpoint.
        architecture: the registered architecture (``unet``, ``fcn``, ``deeplabv3``), or
            ``ensemble``.
        digest: SHA-256 (hex) of the weights.
        convention: the mask convention it was trained on (:data:`CONVENTIONS`).
        tta: whether predictions average test-time augmentation views.
        version: the lungseg version that runs it.
    """

    name: str
    architecture: str
    digest: str
    convention: str = "unknown"
    tta: bool = False
    version: str = __version__

    @property
    def short_digest(self) -> str:
        """The first 12 hex digits of :attr:`digest`, enough to tell weights apart by eye."""
        return self.digest[:12]

    @property
    def label(self) -> str:
        """One line for people: ``unet+tta (weights sha256:0123456789ab, anatomical)``."""
        tta = "+tta" if self.tta else ""
        return f"{self.name}{tta} (weights sha256:{self.short_digest}, {self.convention})"

    def with_tta(self, tta: bool = True) -> ModelIdentity:
        return replace(self, tta=tta)

    def to_dict(self) -> dict[str, Any]:
        """The identity as JSON-ready values (``weights_sha256`` for :attr:`digest`)."""
        values = asdict(self)
        values["weights_sha256"] = values.pop("digest")
        return values

    def seed(self, settings: Any = None) -> str:
        """A string that changes exactly when the outputs of this model can change: the weights,
        TTA and ``settings`` (e.g. the postprocessing), not the name it is called by nor the
        lungseg version. DICOM UIDs are derived from it."""
        extra = json.dumps(settings, sort_keys=True, default=str) if settings is not None else ""
        return f"sha256:{self.digest}\ntta={int(self.tta)}\n{extra}"


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def combined_digest(digests: list[str]) -> str:
    """An ensemble's digest: its only member's, or the SHA-256 of its members' in order."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()
