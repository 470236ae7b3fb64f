"""Which way up a JPEG or PNG is shown: its EXIF Orientation, and the turn or mirror that makes
its stored pixels the picture every viewer (browsers, Pillow's ``exif_transpose``, OpenCV's
default reader) displays. A phone or a scanner may store a film on its side and say so only
here; decoded as stored, it was segmented lying down.

The DICOM counterpart, ``PatientOrientation``, is :mod:`lungseg.data.dicom_header`'s.
"""

from __future__ import annotations

import numpy as np

from lungseg.core.errors import LungsegError

#: EXIF Orientation (tag 274) -> how the stored pixels become the picture viewers show
#: (EXIF 2.32 section 4.6.4; the transposes Pillow's ``ImageOps.exif_transpose`` applies).
_EXIF_TO_DISPLAY = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(im, name: str) -> int:
    """The EXIF Orientation a JPEG or PNG (``eXIf`` before the pixels, as the PNG specification
    asks and browsers read it) states; 1 without one. A value outside 1..8 is an error: which
    way up the film is cannot be guessed. (TIFF's Orientation tag is its own: OpenCV and Pillow
    apply it as they decode.)"""
    if im.format not in ("JPEG", "PNG") or (im.format == "PNG" and "exif" not in im.info):
        return 1  # for a PNG, Pillow would decode the whole image to look for a late eXIf
    try:
        value = im.getexif().get(274, 1)
    except Exception:  # an unreadable EXIF block says nothing about orientation
        return 1
    if isinstance(value, tuple | list):  # a malformed tag stored as several values
        value = value[0] if value else 1
    if value not in range(1, 9):
        raise LungsegError(
            f"EXIF Orientation is {value!r}, not one of 1-8; which way up the image is shown is "
            "unknown (re-export it without EXIF orientation)",
            name,
        )
    return int(value)


def to_display(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels -> the picture an image viewer shows for EXIF ``orientation``."""
    turn = _EXIF_TO_DISPLAY.get(orientation)
    return arr if turn is None else np.ascontiguousarray(turn(arr))
