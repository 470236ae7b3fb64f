"""The node's one call into the model: a batch of received instances -> their results.

The steps are those of ``segment``'s pipeline (decode, preprocess, one forward pass of a full
batch, postprocess at the image's resolution, measure, DICOM SEG and SR by
:func:`lungseg.dicom.sr.dicom_outputs`), so the node, ``segment --dicom-seg --dicom-sr`` and
``serve`` give the same objects, with the same UIDs, for the same file and model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lungseg.data.io import decode_image
from lungseg.dicom.seg import read_header
from lungseg.dicom.sr import dicom_outputs
from lungseg.errors import LungsegError
from lungseg.inference import Segmenter
from lungseg.quality import uncertain_fraction
from lungseg.segment.measure import measure

#: Result file names in the spool, by the names :func:`dicom_outputs` gives them.
RESULT_FILES = {"dicom_seg": "seg.dcm", "dicom_sr": "sr.dcm"}


@dataclass
class Outcome:
    """What became of one instance.

    Attributes:
        uid: its SOP Instance UID.
        files: result file name -> bytes (``seg.dcm``, ``sr.dcm``), empty when it failed.
        row: its measurements (a row of ``measurements.csv``), empty when it failed.
        problem: why it failed (no patient data), else ``""``.
    """

    uid: str
    files: dict[str, bytes] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)
    problem: str = ""


def segment_instances(
    segmenter: Segmenter, instances: Sequence[tuple[str, bytes]], batch_size: int
) -> list[Outcome]:
    """Segment DICOM instances, at most ``batch_size`` at a time.

    Args:
        segmenter: the model (loaded by :func:`lungseg.inference.load_model`).
        instances: ``(SOP Instance UID, file bytes)``.
        batch_size: images per forward pass; a smaller batch is padded to it, as ``segment``
            pads its last one, so a mask never depends on which images shared its batch.

    Returns:
        One :class:`Outcome` per instance, in order.
    """
    outcomes = [Outcome(uid) for uid, _ in instances]
    loaded = []
    for outcome, (uid, data) in zip(outcomes, instances, strict=True):
        try:
            decoded = decode_image(data, uid)
            header = read_header(data, uid)
            loaded.append((outcome, decoded, header, segmenter.preprocessed(decoded.pixels)))
        except LungsegError as exc:
            outcome.problem = exc.problem
        except Exception as exc:  # a decoder's own failure on a hostile file
            outcome.problem = f"cannot read image ({type(exc).__name__})"
    for start in range(0, len(loaded), batch_size):
        batch = loaded[start : start + batch_size]
        inputs = [one[3] for one in batch]
        inputs += [inputs[-1]] * (batch_size - len(inputs))
        prob = segmenter.proba_preprocessed(inputs)[: len(batch)]
        for (outcome, decoded, header, _), p in zip(batch, prob, strict=True):
            try:
                mask = segmenter.masks_from_proba(p[None], [decoded.pixels.shape])[0]
                outcome.row = measure(
                    outcome.uid, outcome.uid, mask, decoded.spacing, float(uncertain_fraction(p)),
                    spacing_source=decoded.spacing_source, orientation=decoded.orientation,
                )  # fmt: skip
                files = dicom_outputs(header, mask, outcome.row, segmenter, name=outcome.uid,
                                      seg=True, sr=True)  # fmt: skip
                outcome.files = {RESULT_FILES[k]: v for k, v in files.items()}
            except LungsegError as exc:
                outcome.problem = exc.problem
            except Exception as exc:
                outcome.problem = f"cannot segment image ({type(exc).__name__})"
            if outcome.problem:
                outcome.files, outcome.row = {}, {}
    return outcomes
