"""The one road of an image: decode -> preprocess -> forward -> postprocess -> measure -> encode.

``lungseg segment`` (a streaming pipeline over an archive), ``lungseg serve`` (one request at a
time, micro-batched with others), ``lungseg evaluate`` (prepared caches) and the DICOM node all
go through these three functions, so the same file and model give the same mask, measurements
and encoded outputs (PNG, JPEG, DICOM SEG) whichever of them made it:

* :func:`prepare` - the file's bytes -> :class:`Prepared`: decoded pixels, each network's
  preprocessed input, and the DICOM header when a DICOM output is wanted;
* :func:`forward` - several prepared images -> working-size probabilities, in one batch of a
  fixed shape when asked (so an image's result cannot depend on its batch-mates);
* :func:`finish` - one image's probabilities -> :class:`Result`: the mask at the image's own
  resolution, its measurements row, ``uncertain_fraction`` and the encoded outputs asked for.

Callers differ only in how they batch and where the bytes go; a caller that needs "almost the
same" gets a parameter here, not a copy.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lungseg.core.errors import LungsegError
from lungseg.data.io import Decoded, decode_image, sniff_format
from lungseg.inference.encode import image_png, mask_png, overlay_jpeg
from lungseg.inference.measure import measure
from lungseg.inference.quality import uncertain_fraction
from lungseg.inference.segmenter import Segmenter

#: What :func:`finish` can encode: the mask (1-bit PNG), an overlay (JPEG), the decoded X-ray
#: (8-bit PNG, for display), a DICOM Segmentation and a DICOM SR of the lung areas (TID 1500;
#: DICOM inputs only).
OUTPUTS = ("mask", "overlay", "image", "dicom_seg", "dicom_sr")
#: Outputs that need the source's DICOM header.
DICOM_OUTPUTS = frozenset({"dicom_seg", "dicom_sr"})


@dataclass
class Prepared:
    """An image decoded and preprocessed, waiting for the model.

    Attributes:
        name: the file or key, as errors name it.
        decoded: the 8-bit grayscale pixels ``uint8[H, W]`` with the file's spacing and mode.
        inputs: each network's preprocessed input, ``uint8[S, S]``.
        header: the DICOM header (no pixel data) when a DICOM output was asked for and the file
            is DICOM; otherwise ``None``.
    """

    name: str
    decoded: Decoded
    inputs: list[np.ndarray]
    header: Any | None = None


@dataclass
class Result:
    """One image through the whole road.

    Attributes:
        prepared: what :func:`prepare` made of the file.
        probabilities: ``float32[S, S]`` at the model's working size.
        mask: ``bool[H, W]`` at the image's own resolution.
        uncertainty: :func:`~lungseg.inference.quality.uncertain_fraction` of the probabilities.
        measurements: the image's row of ``measurements.csv``
            (:func:`~lungseg.inference.measure.measure`).
        files: the encoded outputs asked for, by :data:`OUTPUTS` name.
    """

    prepared: Prepared
    probabilities: np.ndarray
    mask: np.ndarray
    uncertainty: float
    measurements: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def review(self) -> str:
        """Why the mask needs a look (empty when it does not): the ``review`` column."""
        return self.measurements["review"]


def prepare(
    data: bytes, name: str, segmenter: Segmenter, outputs: Collection[str] = ()
) -> Prepared:
    """Decode a file's bytes and preprocess them for each of ``segmenter``'s networks.

    Raises:
        LungsegError: one line naming ``name`` and the problem, for anything wrong with the
            file (a decoder's own exception included).
    """
    try:
        decoded = decode_image(data, name)
        header = None
        if DICOM_OUTPUTS.intersection(outputs) and sniff_format(data) == "dicom":
            from lungseg.dicom.seg import read_header

            header = read_header(data, name)
        inputs = segmenter.preprocessed(decoded.pixels)
    except LungsegError:
        raise
    except Exception as exc:  # a decoder's own failure on a hostile file; its text may hold tags
        raise LungsegError(f"cannot read image ({type(exc).__name__})", name) from None
    return Prepared(name, decoded, inputs, header)


def forward(
    segmenter: Segmenter, batch: Sequence[Prepared | Sequence[np.ndarray]], pad_to: int = 0
) -> np.ndarray:
    """Working-size probabilities ``float32[N, S, S]`` of N prepared images (or their inputs).

    Args:
        pad_to: run a batch of at least this many images, repeating the last: every forward
            pass of a run then has the same shape, so an image's mask cannot depend on how many
            images shared its batch (a resumed run batches them differently).
    """
    inputs = [one.inputs if isinstance(one, Prepared) else one for one in batch]
    n = len(inputs)
    inputs += [inputs[-1]] * (pad_to - n)
    return segmenter.proba_preprocessed(inputs)[:n]


def finish(
    prepared: Prepared,
    probabilities: np.ndarray,
    segmenter: Segmenter,
    *,
    key: str | None = None,
    outputs: Collection[str] = ("mask",),
    encoder: Any = None,
) -> Result:
    """Postprocess, measure and encode one image.

    Args:
        prepared: the image (:func:`prepare`).
        probabilities: its ``float32[S, S]`` row of :func:`forward`.
        segmenter: the model that made them.
        key: the ``key`` column of its measurements (default: ``prepared.name``).
        outputs: which of :data:`OUTPUTS` to encode into :attr:`Result.files`.
        encoder: a :class:`lungseg.dicom.encoder.DicomEncoder` that makes the DICOM outputs in
            worker processes (callers that finish several images at once); ``None``: here.

    Raises:
        LungsegError: an output that cannot be made for this image (a DICOM SEG of a file that
            is not DICOM, or lacks the UIDs a SEG references), named on one line.
    """
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; valid: {', '.join(OUTPUTS)}")
    decoded = prepared.decoded
    mask = segmenter.masks_from_proba(probabilities[None], [decoded.pixels.shape])[0]
    unsure = float(uncertain_fraction(probabilities[None])[0])
    name = prepared.name
    row = measure(
        name if key is None else key, name, mask, decoded.spacing, unsure,
        spacing_source=decoded.spacing_source, orientation=decoded.orientation,
        convention=segmenter.convention, review_threshold=segmenter.review_threshold,
        not_frontal_chest=decoded.not_frontal_chest,
    )  # fmt: skip
    result = Result(prepared, probabilities, mask, unsure, row)
    for kind in outputs:
        if kind not in DICOM_OUTPUTS:
            result.files[kind] = _encode(kind, result)
    dicom = DICOM_OUTPUTS.intersection(outputs)
    if dicom:
        result.files.update(_dicom(result, segmenter, dicom, encoder))
    return result


def segment_bytes(
    data: bytes, name: str, segmenter: Segmenter, outputs: Collection[str] = ("mask",)
) -> Result:
    """The whole road for one file, in one call (``Segmenter.predict`` and tests use it)."""
    prepared = prepare(data, name, segmenter, outputs)
    return finish(prepared, forward(segmenter, [prepared])[0], segmenter, outputs=outputs)


def _encode(kind: str, result: Result) -> bytes:
    prepared = result.prepared
    if kind == "mask":
        return mask_png(result.mask, prepared.name)
    if kind == "overlay":
        return overlay_jpeg(prepared.decoded.pixels, result.mask, prepared.name)
    return image_png(prepared.decoded.pixels, prepared.name)


def _dicom(
    result: Result, segmenter: Segmenter, kinds: Collection[str], encoder: Any
) -> dict[str, bytes]:
    """The DICOM SEG and/or SR of the mask measured (the SR references the SEG, so both come
    from one call)."""
    prepared = result.prepared
    if prepared.header is None:
        raise LungsegError(
            "a DICOM SEG or SR needs a DICOM X-ray; this file is not one", prepared.name
        )
    from lungseg.dicom.sr import dicom_outputs

    return dicom_outputs(
        prepared.header, result.mask, result.measurements, segmenter, name=prepared.name,
        seg="dicom_seg" in kinds, sr="dicom_sr" in kinds, encoder=encoder,
    )  # fmt: skip
