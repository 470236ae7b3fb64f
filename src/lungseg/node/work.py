"""The node's one call into the model: a batch of received instances -> their results.

The steps are those of ``segment``'s pipeline (decode, preprocess, one forward pass of a full
batch, postprocess at the image's resolution, measure, DICOM SEG), so the node, ``segment
--dicom-seg`` and ``serve`` give the same SEG for the same file and model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lungseg.data.io import decode_image
from lungseg.errors import LungsegError
from lungseg.inference import Segmenter
from lungseg.io_utils import sha256_json
from lungseg.quality import uncertain_fraction
from lungseg.segment import run_settings
from lungseg.segment.dicom_seg import dicom_seg_bytes, read_header
from lungseg.segment.measure import measure


@dataclass
class Outcome:
    """What became of one instance.

    Attributes:
        uid: its SOP Instance UID.
        files: result file name -> bytes (``seg.dcm``), empty when it failed.
        row: its measurements (a row of ``measurements.csv``), empty when it failed.
        problem: why it failed (no patient data), else ``""``.
    """

    uid: str
    files: dict[str, bytes] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)
    problem: str = ""


def settings_id(segmenter: Segmenter) -> str:
    """The id ``segment --dicom-seg`` derives the SEG's UIDs from, for the same model."""
    return sha256_json(run_settings(segmenter, overlays=False, dicom_seg=True))[:12]


def segment_instances(
    segmenter: Segmenter, instances: Sequence[tuple[str, bytes]], batch_size: int, sid: str
) -> list[Outcome]:
    """Segment DICOM instances, at most ``batch_size`` at a time.

    Args:
        segmenter: the model.
        instances: ``(SOP Instance UID, file bytes)``.
        batch_size: images per forward pass; a smaller batch is padded to it, as ``segment``
            pads its last one, so a mask never depends on which images shared its batch.
        sid: :func:`settings_id` of ``segmenter``.

    Returns:
        One :class:`Outcome` per instance, in order.
    """
    outcomes = [Outcome(uid) for uid, _ in instances]
    loaded = []
    for outcome, (uid, data) in zip(outcomes, instances, strict=True):
        try:
            decoded = decode_image(data, uid)
            loaded.append((outcome, decoded, read_header(data, uid),
                           segmenter.preprocessed(decoded.pixels)))  # fmt: skip
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
                outcome.row = measure(outcome.uid, outcome.uid, mask, decoded.spacing,
                                      float(uncertain_fraction(p)))  # fmt: skip
                outcome.files["seg.dcm"] = dicom_seg_bytes(
                    header, mask, model=segmenter.name, settings_id=sid, name=outcome.uid
                )
            except LungsegError as exc:
                outcome.problem = exc.problem
            except Exception as exc:
                outcome.problem = f"cannot segment image ({type(exc).__name__})"
            if outcome.problem:
                outcome.files, outcome.row = {}, {}
    return outcomes
