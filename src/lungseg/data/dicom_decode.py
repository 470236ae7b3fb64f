"""Reading a DICOM X-ray safely: a Part 10 file or a bare data set (no preamble, no file meta
header), what the header alone must refuse (frame bombs, multi-frame files), and the one frame
decoded with a one-line reason when it cannot be.

Compressed transfer syntaxes (JPEG Lossless, JPEG-LS, JPEG 2000) are decoded by GDCM
(``python-gdcm``, in ``lungseg[dicom]``), RLE by pydicom itself.
"""

from __future__ import annotations

import io

import numpy as np

from lungseg.core.errors import LungsegError


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


def is_dicom_file(head: bytes) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (``head``: its first 132 bytes
    at least)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


#: The two-letter value representations of DICOM (PS3.5 6.2): an explicit-VR data set has one
#: right after its first tag.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
    b"US UT UV".split()
)


def bare_dicom_syntax(data: bytes) -> str | None:
    """The transfer syntax of a DICOM data set stored without preamble and file meta header
    (little endian; its first element in group 0x0002 or 0x0008, as every image's is), or None
    when ``data`` does not start like one."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if len(data) < 8 or data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return None
    if data[4:6] in _VRS:
        return ExplicitVRLittleEndian
    length = int.from_bytes(data[4:8], "little")
    return ImplicitVRLittleEndian if length < min(len(data), 1 << 16) else None


def read_dicom(data: bytes, name: str, pixels: bool = True):
    """A DICOM image file's data set (``pydicom.Dataset``), a Part 10 file or a bare data set
    (:func:`bare_dicom_syntax`); without its pixel data unless ``pixels``.

    Raises:
        LungsegError: naming ``name``: unreadable, or not an image (no Rows/Columns).
    """
    import pydicom

    try:
        # force: a bare data set (no preamble, no file meta) is read too
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels, force=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LungsegError(f"corrupt DICOM file ({first})", name) from None
    if "TransferSyntaxUID" not in ds.get("file_meta", {}):
        syntax = bare_dicom_syntax(data)
        if syntax is None:
            raise LungsegError("DICOM file without a transfer syntax", name)
        ds.file_meta = pydicom.dataset.FileMetaDataset(ds.get("file_meta", {}))
        ds.file_meta.TransferSyntaxUID = syntax
    if "Rows" not in ds or "Columns" not in ds:
        raise LungsegError("DICOM file has no image (no Rows/Columns)", name)
    return ds
