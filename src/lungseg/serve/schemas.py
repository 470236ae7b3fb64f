"""The shapes of the API's JSON, as the OpenAPI schema (``/openapi.json``, ``/docs``) shows them.

The handlers build their bodies as plain dicts (:meth:`lungseg.serve.pipeline.Segmented.to_json`)
and these models document them; ``tests/serve`` checks that real responses validate against them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Every error: one line that says what is wrong; never a traceback, path or file name."""

    detail: str = Field(examples=["truncated PNG (no end-of-image chunk)"])


class ModelRef(BaseModel):
    name: str = Field(description="The model that made the mask.", examples=["unet-fast"])
    version: str = Field(
        description="lungseg version + the first 12 hex digits of the SHA-256 of the weights.",
        examples=["0.9.0+3f2a9c1d7b4e"],
    )
    backend: str = Field(description="onnxruntime or pytorch.")
    tta: bool = Field(description="Test-time augmentation was applied (five views averaged).")


class ImageInfo(BaseModel):
    height: int
    width: int
    mode: str = Field(description="Colour mode found in the file: L, RGB, RGBA, L;uint16, DICOM...")
    spacing_mm: list[float] | None = Field(
        description="(row, column) pixel spacing in mm, when the file states it (DICOM)."
    )


class Measurements(BaseModel):
    """The columns of ``lungseg segment``'s measurements.csv, from the same code. "Right" is the
    patient's right lung, on the image's left as radiographs are viewed."""

    lung_px: int
    lung_fraction: float = Field(description="Lung pixels / image pixels.")
    right_lung_px: int
    left_lung_px: int
    lung_cm2: float | None = Field(description="Only when the pixel spacing is known.")
    right_lung_cm2: float | None
    left_lung_cm2: float | None
    spacing_source: str | None = Field(
        description="Which spacing the cm² use and what it means: PixelSpacing (at the patient, "
        "with its calibration type), ImagerPixelSpacing / magnification N, or ImagerPixelSpacing "
        "at detector (areas too large by the magnification squared)."
    )
    orientation: str = Field(
        description="Where right and left come from: dicom (the header's PatientOrientation) "
        "or assumed PA display (patient's right on the image's left)."
    )


class Timings(BaseModel):
    decode: float = Field(description="Reading the file and preprocessing, ms.")
    queue: float = Field(description="Waiting for the forward pass to start, ms.")
    inference: float = Field(description="The forward pass of the whole batch, ms.")
    postprocess: float = Field(description="Mask, measurements and PNG encoding, ms.")
    total: float


class SegmentResponse(BaseModel):
    model: ModelRef
    image: ImageInfo
    measurements: Measurements
    uncertain_fraction: float = Field(
        description="Share (0-1) of the lung, and of its unsure border, where the lung "
        "probability lies in (0.1, 0.9): how unsure the model is (lungseg.inference.quality)."
    )
    review: bool = Field(description="True when the mask is flagged for review.")
    review_reason: str = Field(
        description="Why it is flagged, as lungseg segment's review column says it (no lung "
        "found; implausible: ...; uncertain (U > T); not a frontal chest X-ray: ...); empty when "
        "it is not."
    )
    review_threshold: float
    batch_size: int = Field(description="Images in the forward pass this one shared.")
    timings_ms: Timings
    mask_png: str | None = Field(
        None, description="The mask (0/255 PNG at the image's resolution), base64."
    )
    image_png: str | None = Field(
        None, description="With ?image=true: the decoded 8-bit X-ray the model saw, PNG, base64."
    )


class ModelEntry(BaseModel):
    name: str
    default: bool
    version: str
    backend: str
    architecture: str
    working_size: int
    preprocess: str
    networks: int = Field(description="Networks averaged (3 for the ensemble).")
    tta_views: int
    weights_sha256: str = Field(description="SHA-256 of the weights: the model's identity.")
    convention: str = Field(description="Mask convention: anatomical, visible or unknown.")
    review_threshold: float = Field(description="uncertain_fraction above which a mask is flagged.")


class ModelsResponse(BaseModel):
    models: list[ModelEntry]
    outputs: list[str] = Field(description="Values accepted by ?format= on /v1/segment.")
    max_upload_mb: float
    review_threshold: float


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    version: str | None = Field(None, description="The lungseg version (``/healthz``).")
