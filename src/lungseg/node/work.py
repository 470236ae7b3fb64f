"""The node's one call into the model: a batch of received instances -> their results.

It is the road every image takes (:mod:`lungseg.inference.road`: prepare, one forward pass of a
full batch, finish with the DICOM SEG and SR), so the node, ``segment --dicom-seg --dicom-sr``
and ``serve`` give the same objects, with the same UIDs, for the same file and model.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lungseg.core.errors import LungsegError
from lungseg.inference import road
from lungseg.inference.segmenter import Segmenter

if TYPE_CHECKING:
    from lungseg.dicom.encoder import DicomEncoder

#: Result file names in the spool, by the road's output names.
RESULT_FILES = {"dicom_seg": "seg.dcm", "dicom_sr": "sr.dcm"}
#: What the road makes of each instance.
OUTPUTS = tuple(RESULT_FILES)


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
    segmenter: Segmenter, instances: Sequence[tuple[str, bytes]], batch_size: int,
    encoder: DicomEncoder | None = None,
) -> list[Outcome]:  # fmt: skip
    """Segment DICOM instances, at most ``batch_size`` at a time.

    Args:
        segmenter: the model (loaded by :func:`lungseg.inference.segmenter.load_model`).
        instances: ``(SOP Instance UID, file bytes)``.
        batch_size: images per forward pass; a smaller batch is padded to it, as ``segment``
            pads its last one, so a mask never depends on which images shared its batch.
        encoder: worker processes for the SEG and SR: a batch's images are then finished
            together, one per process (``None``: one after another in this thread).

    Returns:
        One :class:`Outcome` per instance, in order.
    """
    outcomes = [Outcome(uid) for uid, _ in instances]
    loaded = []
    for outcome, (uid, data) in zip(outcomes, instances, strict=True):
        try:
            loaded.append((outcome, road.prepare(data, uid, segmenter, OUTPUTS)))
        except LungsegError as exc:
            outcome.problem = exc.problem
    for start in range(0, len(loaded), batch_size):
        batch = loaded[start : start + batch_size]
        prob = road.forward(segmenter, [prepared for _, prepared in batch], batch_size)
        jobs = [(outcome, prepared, p) for (outcome, prepared), p in zip(batch, prob, strict=True)]
        if encoder is None:
            for job in jobs:
                _finish(segmenter, encoder, *job)
        else:
            with ThreadPoolExecutor(encoder.processes, thread_name_prefix="lungseg-finish") as pool:
                list(pool.map(lambda job: _finish(segmenter, encoder, *job), jobs))
    return outcomes


def _finish(segmenter: Segmenter, encoder, outcome: Outcome, prepared, prob) -> None:
    try:
        result = road.finish(
            prepared, prob, segmenter, key=outcome.uid, outputs=OUTPUTS, encoder=encoder
        )
        outcome.row = result.measurements
        outcome.files = {RESULT_FILES[k]: v for k, v in result.files.items()}
    except LungsegError as exc:
        outcome.problem = exc.problem
    except Exception as exc:
        outcome.problem = f"cannot segment image ({type(exc).__name__})"
