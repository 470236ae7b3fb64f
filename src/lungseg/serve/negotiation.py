"""What a request asks for and may send: ``Accept`` with q-values, the body's ``Content-Type``,
the file formats we recognise but cannot read; the headers that name the model in an answer.

Pure functions on header strings and bytes (no FastAPI), so each rule has a small test.
"""

from __future__ import annotations

#: ``?format=`` value -> the media type it answers with.
MEDIA_TYPES = {
    "json": "application/json",
    "png": "image/png",
    "dicom-seg": "application/dicom",
    "dicom-sr": "application/dicom",
}
#: Values of ``?format=``.
OUTPUTS = tuple(MEDIA_TYPES)
#: ``?format=`` of a DICOM answer -> its name on the road (:data:`lungseg.inference.road.OUTPUTS`).
DICOM_OUTPUTS = {"dicom-seg": "dicom_seg", "dicom-sr": "dicom_sr"}


def offered_outputs() -> tuple[str, ...]:
    """The formats this installation gives: the DICOM ones only where highdicom is installed."""
    import importlib.util

    dicom = importlib.util.find_spec("highdicom") is not None
    return tuple(o for o in OUTPUTS if o not in DICOM_OUTPUTS or dicom)


#: Body types ``POST /v1/segment`` takes. Anything else is refused (415) before it is read: a web
#: page can make a browser send ``text/plain`` or a URL-encoded form to this port without asking
#: first (a CORS "simple request"); every type here but multipart makes the browser ask first.
BODY_TYPES = (
    "application/octet-stream",
    "application/dicom",
    "image/png",
    "image/jpeg",
    "image/tiff",
    "image/bmp",
    "multipart/form-data",
)


def parse_accept(header: str) -> list[tuple[str, float]]:
    """``Accept`` -> ``[(media range, q)]``, lower-cased, in the order given; a bad q reads 0."""
    ranges = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    return ranges


def _quality(media_type: str, ranges: list[tuple[str, float]]) -> float:
    """The q the client gives ``media_type``: from its most specific matching range (RFC 9110)."""
    kind = media_type.split("/")[0]
    best, specificity = 0.0, -1
    for media, q in ranges:
        levels = {media_type: 2, f"{kind}/*": 1, "*/*": 0}
        level = levels.get(media, -1)
        if level > specificity:
            best, specificity = q, level
    return best


def choose_output(accept: str | None, fmt: str | None, offered: tuple[str, ...]) -> str | None:
    """The ``?format=`` value to answer with, or None when the client accepts none of them (406).

    Args:
        accept: the ``Accept`` header (None or empty: anything).
        fmt: ``?format=``; it wins over ``Accept`` but must still be acceptable.
        offered: formats this service can give, the default first.
    """
    if not accept or not accept.strip():
        return fmt or offered[0]
    ranges = parse_accept(accept)
    candidates = [fmt] if fmt else [f for f in offered if not f.startswith("dicom-")]
    scored = [(_quality(MEDIA_TYPES[f], ranges), -i, f) for i, f in enumerate(candidates)]
    q, _, best = max(scored)
    return best if q > 0 else None


def body_type_allowed(content_type: str | None) -> bool:
    """A body type ``POST /v1/segment`` takes (none given: a plain HTTP client, allowed)."""
    if content_type is None or not content_type.strip():
        return True
    return content_type.split(";")[0].strip().lower() in BODY_TYPES


def unsupported_format(data: bytes) -> str | None:
    """The name of an image format we recognise but do not read, or None."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def model_headers(model, tta: bool) -> dict[str, str]:
    """The ``ServedModel`` behind an answer, as headers (for the answers that are not JSON)."""
    headers = {"X-Lungseg-Model": model.name, "X-Lungseg-Model-Version": model.version}
    identity = model.segmenter.identity
    if identity is not None:
        headers["X-Lungseg-Weights-Sha256"] = identity.digest
        headers["X-Lungseg-Mask-Convention"] = identity.convention
    headers["X-Lungseg-TTA"] = "true" if tta else "false"
    return headers


#: Headers a page on a ``--cors-origin`` may read from an answer.
EXPOSED_HEADERS = [
    "Content-Disposition", "X-Lungseg-Model", "X-Lungseg-Model-Version", "X-Lungseg-Weights-Sha256",
    "X-Lungseg-Mask-Convention", "X-Lungseg-TTA", "X-Lungseg-Lung-Px", "X-Lungseg-Right-Lung-Px",
    "X-Lungseg-Left-Lung-Px", "X-Lungseg-Uncertain-Fraction", "X-Lungseg-Review", "Retry-After",
]  # fmt: skip
