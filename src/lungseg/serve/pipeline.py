"""One request's work on the road every image takes (:mod:`lungseg.inference.road`): prepare,
one forward pass (shared with other requests, :mod:`lungseg.serve.batcher`), finish.

So the mask, measurements and DICOM SEG are those ``lungseg segment`` writes for the same file
and model (the same bytes on the same backend). Preparing and finishing run on a thread pool,
never on the event loop (a DICOM SEG or SR in the service's encoder processes, whose pure-Python
work would otherwise hold the GIL that the event loop and the other requests need); a bad file
raises :class:`ServeError` with the one-line reason ``lungseg segment`` gives, without a file
name.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Collection
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungseg.core.errors import LungsegError
from lungseg.data.io import sniff_format
from lungseg.inference import road
from lungseg.serve.batcher import MicroBatcher
from lungseg.serve.loading import ServedModel
from lungseg.serve.negotiation import unsupported_format

#: The name a bad upload is reported under (the client's file name is never used).
UPLOAD = "upload"


class ServeError(Exception):
    """A request the service refuses: an HTTP status and one line that says why."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class Segmented:
    """What a request gets back: the road's :class:`~lungseg.inference.road.Result` and how the
    service made it."""

    model: ServedModel
    tta: bool
    result: road.Result
    timings_ms: dict[str, float]
    batch_size: int

    @property
    def measurements(self) -> dict[str, Any]:
        return self.result.measurements

    @property
    def uncertainty(self) -> float:
        return self.result.uncertainty

    @property
    def mask_png(self) -> bytes:
        """The mask as ``lungseg segment`` writes it: a 1-bit PNG."""
        return self.result.files["mask"]

    @property
    def review(self) -> bool:
        """Flagged for review: the rule of ``lungseg segment``'s ``review`` column."""
        return bool(self.result.review)

    def to_json(self, *, mask: bool = True) -> dict[str, Any]:
        """The JSON body of ``POST /v1/segment`` (see ``SegmentResponse`` in the API)."""
        rows = self.measurements
        spacing = self.result.prepared.decoded.spacing
        body: dict[str, Any] = {
            "model": {
                "name": self.model.name,
                "version": self.model.version,
                "backend": self.model.backend,
                "tta": self.tta,
            },
            "image": {
                "height": rows["height"],
                "width": rows["width"],
                "mode": self.result.prepared.decoded.mode,
                "spacing_mm": list(spacing) if spacing else None,
            },
            "measurements": {
                key: (None if rows[key] == "" else rows[key])
                for key in (
                    "lung_px",
                    "lung_fraction",
                    "right_lung_px",
                    "left_lung_px",
                    "lung_cm2",
                    "right_lung_cm2",
                    "left_lung_cm2",
                    "spacing_source",
                    "orientation",
                )
            },  # fmt: skip
            "uncertain_fraction": round(self.uncertainty, 6),
            "review": self.review,
            "review_reason": self.result.review,
            "review_threshold": self.model.segmenter.review_threshold,
            "batch_size": self.batch_size,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
        if mask:
            body["mask_png"] = base64.b64encode(self.mask_png).decode("ascii")
        if "image" in self.result.files:
            body["image_png"] = base64.b64encode(self.result.files["image"]).decode("ascii")
        return body


async def segment_upload(
    data: bytes,
    model: ServedModel,
    batcher: MicroBatcher,
    pool: Executor,
    tta: bool = False,
    with_image: bool = False,
    dicom: str | None = None,
    encoder: Any = None,
) -> Segmented:
    """Segment one uploaded file (its bytes) with ``model`` through ``batcher``; with ``dicom``
    (``dicom_seg`` or ``dicom_sr``), also that DICOM object of the mask measured
    (``result.files[dicom]``), made with the model that made the mask (TTA included), in
    ``encoder``'s processes when given (a :class:`~lungseg.dicom.encoder.DicomEncoder`)."""
    loop = asyncio.get_running_loop()
    segmenter = model.augmented if tta else model.segmenter
    outputs = ["mask", *(["image"] if with_image else []), *([dicom] if dicom else [])]
    if batcher.idle:
        with batcher.alone():
            return await loop.run_in_executor(
                pool, _whole, data, model, segmenter, tta, outputs, encoder
            )
    start = time.perf_counter()
    with batcher.expect():
        prepared = await loop.run_in_executor(pool, _prepare, data, segmenter, outputs)
    decoded_at = time.perf_counter()
    done = await batcher.submit(prepared.inputs)
    inferred_at = time.perf_counter()
    result = await loop.run_in_executor(
        pool, _finish, prepared, done.value, segmenter, outputs, encoder
    )
    timings = _timings(start, decoded_at, done.queued_ms, done.forward_ms, inferred_at)
    return Segmented(model, tta, result, timings, done.batch_size)


def _whole(
    data: bytes, model: ServedModel, segmenter, tta: bool, outputs: Collection[str], encoder
) -> Segmented:
    """A request's whole work on one thread, when there is no one to batch it with."""
    start = time.perf_counter()
    prepared = _prepare(data, segmenter, outputs)
    decoded_at = time.perf_counter()
    prob = road.forward(segmenter, [prepared])[0]
    inferred_at = time.perf_counter()
    result = _finish(prepared, prob, segmenter, outputs, encoder)
    timings = _timings(start, decoded_at, 0.0, (inferred_at - decoded_at) * 1000, inferred_at)
    return Segmented(model, tta, result, timings, 1)


def _timings(
    start: float, decoded_at: float, queued_ms: float, forward_ms: float, inferred_at: float
) -> dict[str, float]:
    """Milliseconds per stage, from ``perf_counter`` readings (the last one is now)."""
    end = time.perf_counter()
    return {
        "decode": (decoded_at - start) * 1000,
        "queue": queued_ms,
        "inference": forward_ms,
        "postprocess": (end - inferred_at) * 1000,
        "total": (end - start) * 1000,
    }


def _prepare(data: bytes, segmenter, outputs: Collection[str]) -> road.Prepared:
    """:func:`lungseg.inference.road.prepare`, or :class:`ServeError`: 415 for a format the
    service does not take or what is not an image file at all, 422 for an image that is empty,
    truncated, corrupt or too large."""
    unsupported = unsupported_format(data)
    if unsupported:
        raise ServeError(415, f"unsupported format: {unsupported}; send PNG, JPEG, TIFF or DICOM")
    try:
        return road.prepare(data, UPLOAD, segmenter, outputs)
    except LungsegError as exc:
        status = 415 if data and sniff_format(data) is None else 422
        raise ServeError(status, exc.problem) from None


def _finish(
    prepared: road.Prepared, prob: np.ndarray, segmenter, outputs: Collection[str], encoder
) -> road.Result:
    """:func:`lungseg.inference.road.finish`, or :class:`ServeError`: 415 for a DICOM SEG or SR
    of an upload that is not DICOM, 422 for one that cannot be referenced."""
    for kind in road.DICOM_OUTPUTS.intersection(outputs):
        if prepared.header is None:
            what = "SEG" if kind == "dicom_seg" else "SR"
            raise ServeError(415, f"a DICOM {what} needs a DICOM X-ray; this upload is not one")
    try:
        return road.finish(prepared, prob, segmenter, key=UPLOAD, outputs=outputs, encoder=encoder)
    except LungsegError as exc:
        raise ServeError(422, exc.problem) from None
