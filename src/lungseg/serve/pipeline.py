"""One request's work, the same road as ``lungseg segment``: decode, preprocess, one forward pass
(shared with other requests, :mod:`lungseg.serve.batcher`), postprocess, measure, encode.

The mask comes from :meth:`~lungseg.inference.Segmenter.masks_from_proba` and the figures from
:func:`lungseg.segment.measure` on the same probabilities, so they are identical to what
``lungseg segment`` writes for the same file and model. Decoding and encoding run on a thread
pool, never on the event loop; a bad file raises :class:`ServeError` with the one-line reason
``lungseg segment`` gives, without a file name.
"""

from __future__ import annotations

import asyncio
import base64
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lungseg.data.io import Decoded, decode_image, sniff_format
from lungseg.errors import LungsegError
from lungseg.quality import uncertain_fraction
from lungseg.segment import measure
from lungseg.serve.batcher import MicroBatcher
from lungseg.serve.loading import ServedModel

#: The name a bad upload is reported under (the client's file name is never used).
UPLOAD = "upload"


class ServeError(Exception):
    """A request the service refuses: an HTTP status and one line that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Segmented:
    """What a request gets back."""

    model: ServedModel
    tta: bool
    decoded: Decoded
    mask_png: bytes
    measurements: dict[str, Any]
    uncertainty: float
    image_png: bytes | None
    timings_ms: dict[str, float]
    batch_size: int

    @property
    def review(self) -> bool:
        """Flagged for review: the rule of ``lungseg segment``'s ``review`` column."""
        return bool(self.measurements["review"])

    def to_json(self, *, mask: bool = True) -> dict[str, Any]:
        """The JSON body of ``POST /v1/segment`` (see ``SegmentResponse`` in the API)."""
        rows = self.measurements
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
                "mode": self.decoded.mode,
                "spacing_mm": list(self.decoded.spacing) if self.decoded.spacing else None,
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
                )
            },  # fmt: skip
            "uncertain_fraction": round(self.uncertainty, 6),
            "review": self.review,
            "review_threshold": self.model.segmenter.review_threshold,
            "batch_size": self.batch_size,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
        if mask:
            body["mask_png"] = base64.b64encode(self.mask_png).decode("ascii")
        if self.image_png is not None:
            body["image_png"] = base64.b64encode(self.image_png).decode("ascii")
        return body


async def segment_upload(
    data: bytes,
    model: ServedModel,
    batcher: MicroBatcher,
    pool: Executor,
    tta: bool = False,
    with_image: bool = False,
) -> Segmented:
    """Segment one uploaded file (its bytes) with ``model`` through ``batcher``."""
    loop = asyncio.get_running_loop()
    segmenter = model.augmented if tta else model.segmenter
    if batcher.idle:
        with batcher.alone():
            return await loop.run_in_executor(pool, _whole, data, model, segmenter, tta, with_image)
    start = time.perf_counter()
    with batcher.expect():
        decoded, inputs = await loop.run_in_executor(pool, _prepare, data, segmenter)
    decoded_at = time.perf_counter()
    done = await batcher.submit(inputs)
    inferred_at = time.perf_counter()
    mask_png, rows, unsure, image_png = await loop.run_in_executor(
        pool, _finish, decoded, done.value, segmenter, with_image
    )
    timings = _timings(start, decoded_at, done.queued_ms, done.forward_ms, inferred_at)
    return Segmented(
        model, tta, decoded, mask_png, rows, unsure, image_png, timings, done.batch_size
    )


def _whole(data: bytes, model: ServedModel, segmenter, tta: bool, with_image: bool) -> Segmented:
    """A request's whole work on one thread, when there is no one to batch it with."""
    start = time.perf_counter()
    decoded, inputs = _prepare(data, segmenter)
    decoded_at = time.perf_counter()
    prob = segmenter.proba_preprocessed([inputs])[0]
    inferred_at = time.perf_counter()
    mask_png, rows, unsure, image_png = _finish(decoded, prob, segmenter, with_image)
    timings = _timings(start, decoded_at, 0.0, (inferred_at - decoded_at) * 1000, inferred_at)
    return Segmented(model, tta, decoded, mask_png, rows, unsure, image_png, timings, 1)


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


def _prepare(data: bytes, segmenter) -> tuple[Decoded, list[np.ndarray]]:
    decoded = decode(data)
    return decoded, segmenter.preprocessed(decoded.pixels)


def decode(data: bytes) -> Decoded:
    """The upload's pixels, or :class:`ServeError`: 415 for what is not an image file at all,
    422 for an image that is empty, truncated, corrupt or too large to decode."""
    try:
        return decode_image(data, UPLOAD)
    except LungsegError as exc:
        status = 415 if data and sniff_format(data) is None else 422
        raise ServeError(status, exc.problem) from None
    except Exception as exc:  # a decoder's own error: its type, never its text (may hold tags)
        raise ServeError(422, f"cannot read image ({type(exc).__name__})") from None


def _finish(
    decoded: Decoded, prob: np.ndarray, segmenter, with_image: bool
) -> tuple[bytes, dict[str, Any], float, bytes | None]:
    """Working-size probabilities -> (mask PNG, measurements row, uncertain_fraction, X-ray PNG)."""
    prob = prob[None]
    mask = segmenter.masks_from_proba(prob, [decoded.pixels.shape])[0]
    unsure = float(uncertain_fraction(prob)[0])
    rows = measure(
        UPLOAD, UPLOAD, mask, decoded.spacing, unsure,
        segmenter.convention, segmenter.review_threshold,
    )  # fmt: skip
    image_png = encode_png(decoded.pixels) if with_image else None
    return encode_png(mask.astype(np.uint8) * 255), rows, unsure, image_png


def encode_png(array: np.ndarray) -> bytes:
    """``uint8`` array -> PNG bytes, encoded as ``lungseg segment`` writes its masks."""
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ServeError(500, "could not encode PNG")
    return buf.tobytes()


def dicom_seg(data: bytes, result: Segmented) -> bytes:
    """The DICOM SEG of ``result``'s mask over the uploaded DICOM X-ray ``data`` (the
    ``?format=dicom-seg`` answer), as ``lungseg segment --dicom-seg`` writes it."""
    import cv2

    from lungseg.segment.dicom_seg import dicom_seg_bytes

    if result.decoded.mode != "DICOM":
        raise ServeError(415, "a DICOM SEG needs a DICOM X-ray; this upload is not one")
    mask = cv2.imdecode(np.frombuffer(result.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
    try:
        return dicom_seg_bytes(
            data, mask, model=result.model.name, settings_id=result.model.version, name="upload"
        )
    except LungsegError as exc:
        raise ServeError(422, exc.problem) from None
