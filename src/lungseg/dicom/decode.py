"""Reading a DICOM X-ray's pixels safely: what the header alone must refuse (frame bombs,
multi-frame files), and the one frame decoded with a one-line reason when it cannot be.

Compressed transfer syntaxes (JPEG Lossless, JPEG-LS, JPEG 2000) are decoded by GDCM
(``python-gdcm``, in ``lungseg[dicom]``), RLE by pydicom itself.
"""

from __future__ import annotations

import numpy as np

from lungseg.errors import LungsegError


def checked_size(ds, name: str, max_pixels: int) -> tuple[int, int]:
    """``(Rows, Columns)``, after refusing from the header alone what must not be decoded: more
    pixels in all frames than ``max_pixels`` (a file of thousands of frames would be
    decoded whole), or several frames (which one is the radiograph is not ours to guess)."""
    try:
        height, width = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise LungsegError(
            "DICOM file has an unreadable Rows, Columns or NumberOfFrames", name
        ) from None
    if height * width * max(frames, 1) > max_pixels:
        raise LungsegError(
            f"declared size {frames} frame(s) of {width}x{height} "
            f"({height * width * frames / 1e6:.0f} MP) exceeds the {max_pixels / 1e6:.0f} MP "
            "limit (possible decompression bomb)",
            name,
        )
    if frames > 1:
        raise LungsegError(
            f"multi-frame DICOM ({frames} frames) is not supported; send the radiograph as a "
            "single-frame file",
            name,
        )
    return height, width


def pixel_array(ds, name: str) -> np.ndarray:
    """The pixels of a single-frame file, or one line on why they cannot be decoded (which
    compression, and what to install), never a decoder's multi-line message."""
    from pydicom.pixels.decoders.base import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    label = f"{syntax.name} ({syntax})" if syntax is not None else "an unknown transfer syntax"
    try:
        decoder = get_decoder(syntax) if syntax is not None else None
    except NotImplementedError:
        raise LungsegError(f"DICOM pixel data in {label} is not supported", name) from None
    if decoder is not None and not decoder.is_available:
        raise LungsegError(
            f"cannot decode DICOM pixel data in {label}: no decoder installed "
            "(pip install 'lungseg[dicom]')",
            name,
        )
    try:
        return ds.pixel_array
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        # pydicom's "exceptions were raised by all available plugins" lists each plugin's own
        # failure below it, which for a damaged stream says nothing to a reader.
        why = "corrupt or truncated" if "all available plugins" in lines[0] else lines[0]
        raise LungsegError(f"cannot decode DICOM pixel data in {label} ({why})", name) from None
