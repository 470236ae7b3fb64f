"""Decoding X-rays and masks from bytes into 8-bit grayscale arrays, with clear errors.

Every image format the project meets ends up the same way: ``uint8[H, W]`` grayscale.

* 8-bit grayscale: as is.
* RGB / palette: ITU-R BT.601 luma (OpenCV's ``BGR2GRAY``).
* RGBA / grayscale+alpha: composited on black (``colour * alpha``) first, because the
  transparent margins of figures cut from papers are background, not lung.
* Deeper integers (16-bit PNG/TIFF, DICOM): the unit changes, never the contrast. The image is
  scaled linearly from the full range of its bit depth to 0..255, the depth being the smallest
  of :data:`BIT_DEPTHS` that holds its brightest pixel: the same picture as an 8-bit PNG, a
  16-bit PNG (``v * 257`` or ``v << 8``), 12 bits stored in 16, TIFF or DICOM gives the same
  pixels (within one grey level), and a 12-bit detector's image in a 16-bit file is not dark.
  A min-max stretch would change an image's contrast with its file format; images that are
  merely dark stay dark, as they are in 8 bits.
* Floats: values within 0..1 are that unit (``* 255``); other non-negative values are taken
  like integers; images with negative values (no convention) are min-max stretched.
* EXIF orientation (JPEG, PNG; TIFF's own tag too): applied, so the pixels are the picture
  every viewer shows (:mod:`lungseg.data.exif`); masks and overlays are written that way up.
* DICOM: with a VOI LUT or window, the window's output range maps to 0..255 (what the window
  means); without one, the stored values are scaled as above (a linear rescale slope/intercept
  does not change a linear display); then MONOCHROME1 inversion; the pixel spacing is kept.

Pixels that are not finite numbers (NaN, infinity) and blank images (one value everywhere) are
errors naming the file: an X-ray never holds them, and turning them into a black image would
feed a model silently wrong input.

Masks are decoded the same way (:func:`decode_mask`) and binarised by :func:`binarize_mask`.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import read_regular
from lungseg.data.dicom_decode import (
    bare_dicom_syntax,
    checked_size,
    is_dicom_file,
    pixel_array,
    read_dicom,
)
from lungseg.data.dicom_header import DISPLAY, Orientation, not_frontal_chest
from lungseg.data.dicom_header import orientation as dicom_orientation
from lungseg.data.dicom_header import spacing as dicom_spacing_source
from lungseg.data.exif import exif_orientation, to_display
from lungseg.data.masks import binarize_mask

#: Largest image we agree to decode, in pixels (a decompression-bomb guard). The biggest real
#: chest X-rays are about 4300x3500 = 15 MP; 100 MP leaves room for any detector.
MAX_PIXELS = 100_000_000

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")

#: Bit depths of radiography detectors and image files: an integer image is scaled from the
#: full range of the smallest that holds its brightest pixel.
BIT_DEPTHS = (8, 10, 12, 14, 16)

_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"BM": "bmp",
}


@dataclass
class Decoded:
    """A decoded image.

    Attributes:
        pixels: ``uint8[H, W]`` grayscale.
        spacing: pixel spacing ``(row_mm, col_mm)`` at the patient where the file states it
            (DICOM; :func:`lungseg.data.dicom_header.spacing`), else None.
        mode: the colour mode found in the file (``L``, ``RGB``, ``RGBA``, ``I;16``, ``DICOM``...).
        spacing_source: which attribute ``spacing`` comes from and what it means
            (``PixelSpacing``, ``ImagerPixelSpacing at detector``...); empty without a spacing.
        orientation: how the pixels map onto the conventional display, from the DICOM header's
            ``PatientOrientation``, else assumed (:mod:`lungseg.data.dicom_header`).
        not_frontal_chest: why a DICOM header says the image is not a frontal chest film.
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None = None
    mode: str = "L"
    spacing_source: str = ""
    orientation: Orientation = DISPLAY
    not_frontal_chest: str = ""


def read_file(path: str | Path, name: str) -> bytes:
    """A file's bytes (:func:`read_regular`); a file that cannot be read (a symlink loop, a
    dangling link, no permission, a named pipe) is a :class:`LungsegError` naming ``name``, like
    any other bad file."""
    try:
        return read_regular(path)
    except OSError as exc:
        raise LungsegError(f"cannot read file ({exc.strerror or exc})", name) from None


def sniff_format(data: bytes) -> str | None:
    """The file format from its first bytes (``png``, ``jpeg``, ``tiff``, ``bmp``, ``dicom``).

    DICOM is a Part 10 file (:func:`is_dicom_file`) or a bare data set written without the
    preamble and file meta header, as older archives and ACR-NEMA-era tools store them
    (:func:`bare_dicom_syntax`)."""
    for magic, fmt in _SIGNATURES.items():
        if data.startswith(magic):
            return fmt
    if is_dicom_file(data) or bare_dicom_syntax(data) is not None:
        return "dicom"
    return None


def check_header(data: bytes, name: str) -> tuple[int, int]:
    """Cheap checks before decoding: empty, not an image, truncated, too large.

    Returns:
        The declared ``(height, width)``.

    Raises:
        LungsegError: naming ``name`` and the problem.
    """
    header = _read_header(data, name)
    return header.height, header.width


@dataclass
class _Header:
    height: int
    width: int
    orientation: int = 1  # EXIF Orientation (1: stored as displayed)


def _read_header(data: bytes, name: str) -> _Header:
    orientation = 1
    if len(data) == 0:
        raise LungsegError("empty file (0 bytes)", name)
    fmt = sniff_format(data)
    if fmt is None:
        raise LungsegError(
            "not an image (unrecognised content; expected PNG, JPEG, TIFF, BMP or DICOM)", name
        )
    if fmt == "dicom":
        ds = read_dicom(data, name, pixels=False)
        height, width = checked_size(ds, name, MAX_PIXELS)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with _pillow_open(data) as im:
                width, height = im.size
                pages = int(getattr(im, "n_frames", 1) or 1)
                orientation = exif_orientation(im, name)
        except LungsegError:
            raise  # already one line naming the file
        except Image.DecompressionBombError:
            raise LungsegError(_BOMB, name) from None
        except UnidentifiedImageError:  # its text is only a repr of our in-memory buffer
            raise LungsegError(f"corrupt {fmt.upper()} file (header unreadable)", name) from None
        except Exception as exc:
            raise LungsegError(f"corrupt {fmt.upper()} header ({exc})", name) from None
        if pages > 1:
            # As a multi-frame DICOM is: which page is the radiograph is not ours to guess,
            # and the first one alone would be segmented without a word.
            raise LungsegError(
                f"a {fmt.upper()} of {pages} pages; give one radiograph per file", name
            )
        if fmt == "png":
            _check_png_chunks(data, name)
        if fmt == "jpeg" and b"\xff\xd9" not in data[-64:]:
            raise LungsegError("truncated JPEG (no end-of-image marker)", name)
    if height * width > MAX_PIXELS:
        raise LungsegError(
            f"declared size {width}x{height} ({height * width / 1e6:.0f} MP) exceeds the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit (possible decompression bomb)",
            name,
        )
    if height == 0 or width == 0:
        raise LungsegError(f"image has zero size ({width}x{height})", name)
    return _Header(height, width, orientation)


def _check_png_chunks(data: bytes, name: str) -> None:
    """Every chunk whole and matching its checksum, up to the end-of-image chunk: a truncated or
    altered PNG is refused here in lungseg's words, before libpng prints its own to stderr."""
    pos = 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            break
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            chunk = kind.decode("latin-1")
            raise LungsegError(f"corrupt PNG (chunk {chunk!r} fails its checksum)", name)
        if kind == b"IEND":
            return
        pos = end
    raise LungsegError("truncated PNG (no complete end-of-image chunk)", name)


_BOMB = f"declared size exceeds the {MAX_PIXELS // 10**6} MP limit (possible decompression bomb)"


def decode_image(data: bytes, name: str) -> Decoded:
    """Decode an X-ray file of any supported format into 8-bit grayscale.

    Args:
        data: the file's bytes.
        name: shown in errors (a path or key).

    Returns:
        :class:`Decoded` with ``uint8[H, W]`` pixels.

    Raises:
        LungsegError: naming ``name``: not an image, corrupt, truncated, too large, pixels that
            are not finite, or a blank image.
    """
    decoded = _decode(data, name)
    require_picture(decoded.pixels, name)
    return decoded


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """Decode a mask file into ``bool[H, W]`` lung (see :func:`binarize_mask`)."""
    return binarize_mask(_decode(data, name).pixels, name)


def _decode(data: bytes, name: str) -> Decoded:
    header = _read_header(data, name)
    if sniff_format(data) == "dicom":
        return _decode_dicom(data, name)
    try:
        # IMREAD_UNCHANGED keeps alpha and depth, and ignores EXIF orientation: applied below
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        arr = None  # Pillow gets its chance, and names the problem if it fails too
    if arr is None:
        arr = _decode_with_pillow(data, name)
    return to_gray8(to_display(arr, header.orientation), name)


def require_picture(pixels: np.ndarray, name: str) -> None:
    """A blank image (one grey level everywhere) is an error: there is nothing to segment,
    and as training data it would teach the model that lungs can be anywhere."""
    low, high = int(pixels.min()), int(pixels.max())
    if low == high:
        raise LungsegError(f"blank image (every pixel is {low}); not an X-ray", name)


@contextlib.contextmanager
def _pillow_open(data: bytes) -> Iterator:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        yield im


def _decode_with_pillow(data: bytes, name: str) -> np.ndarray:
    try:
        with _pillow_open(data) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            arr = np.asarray(im)
    except Exception as exc:
        raise LungsegError(f"cannot decode image ({exc})", name) from None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # Pillow is RGB(A); the rest expects BGR(A)
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]
    return arr


def to_gray8(arr: np.ndarray, name: str = "image") -> Decoded:
    """Any decoded array (gray, BGR, BGRA, 16-bit, float) -> :class:`Decoded` 8-bit grayscale.

    Colour arrays are taken in OpenCV's BGR(A) channel order.

    Raises:
        LungsegError: pixels that are not finite numbers, or an unsupported shape.
    """
    source_dtype = arr.dtype
    if np.issubdtype(source_dtype, np.floating):
        require_finite(arr, name)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    mode = "L"
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels not in (2, 3, 4):
            raise LungsegError(f"unsupported number of channels ({channels})", name)
        mode = {2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        colour = arr[..., :1] if channels == 2 else arr[..., :3]
        if channels in (2, 4):
            alpha = arr[..., -1:].astype(np.float32) / _full_scale(source_dtype)
            colour = colour.astype(np.float32) * alpha
        arr = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY) if colour.shape[2] == 3 else colour[..., 0]
    if arr.ndim != 2:
        raise LungsegError(f"unsupported image shape {arr.shape}", name)
    if arr.dtype == np.uint8:  # the common case (8-bit gray or colour): nothing to convert
        return Decoded(arr, mode=mode)
    if source_dtype == np.uint8:  # 8-bit colour composited with its alpha channel, as float
        return Decoded(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode=mode)
    return Decoded(scale_to_uint8(arr), mode=f"{mode};{source_dtype}")


def require_finite(arr: np.ndarray, name: str) -> None:
    """Float pixels must be numbers: NaN or infinity would become black, silently."""
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = ~finite.all(axis=2) if arr.ndim == 3 else ~finite
    pixels = arr.shape[0] * arr.shape[1]
    raise LungsegError(
        f"{int(bad.sum()):,} of {pixels:,} pixels are not finite numbers (NaN or infinity); "
        "fix or re-export the image",
        name,
    )


def _full_scale(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Grey levels of any depth -> ``uint8``, changing the unit and not the contrast.

    Floats within 0..1 are scaled by 255. Other non-negative values are scaled from
    ``0..2**bits - 1``, ``bits`` being the smallest of :data:`BIT_DEPTHS` that holds the
    largest value (its bit length beyond 16 bits). Values below zero follow no convention:
    such an image is min-max stretched.
    """
    values = np.asarray(values)
    low, high = float(values.min()), float(values.max())
    if low < 0:
        return stretch_to_uint8(values)
    if np.issubdtype(values.dtype, np.floating) and high <= 1.0:
        top = 1.0
    else:
        brightest = int(np.ceil(high))
        bits = next((b for b in BIT_DEPTHS if brightest < 2**b), brightest.bit_length())
        top = float(2**bits - 1)
    return _linear_to_uint8(values, 0.0, top)


def stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max stretch to ``uint8`` 0..255 (a constant array becomes 0)."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(np.shape(arr), np.uint8)
    return _linear_to_uint8(arr, lo, hi)


def _linear_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low..high`` -> 0..255, linearly; values outside are clipped."""
    scaled = (np.asarray(values, np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _decode_dicom(data: bytes, name: str) -> Decoded:
    ds = read_dicom(data, name)
    checked_size(ds, name, MAX_PIXELS)
    raw = pixel_array(ds, name)
    spacing, source = dicom_spacing_source(ds)
    meaning = {
        "spacing": spacing, "spacing_source": source, "orientation": dicom_orientation(ds),
        "not_frontal_chest": not_frontal_chest(ds),
    }  # fmt: skip
    if raw.ndim == 3:  # RGB DICOM (secondary captures)
        bgr = np.ascontiguousarray(raw[..., ::-1])
        return Decoded(to_gray8(bgr, name).pixels, mode="DICOM", **meaning)
    if np.issubdtype(raw.dtype, np.floating):
        require_finite(raw, name)
    try:
        pixels = _dicom_grey(raw, ds)
    except Exception as exc:  # malformed LUT, window or rescale elements
        raise LungsegError(f"cannot apply the DICOM grey-level transforms ({exc})", name) from None
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = 255 - pixels
    return Decoded(pixels, mode="DICOM", **meaning)


def _dicom_grey(raw: np.ndarray, ds) -> np.ndarray:
    """Stored values -> ``uint8``: the VOI LUT or window's output range, else the bit depth."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        windowed = apply_voi_lut(apply_modality_lut(raw, ds), ds)
        return _linear_to_uint8(windowed, *_voi_output_range(ds))
    if "ModalityLUTSequence" in ds:  # a non-linear modality LUT: its output is what is shown
        return scale_to_uint8(apply_modality_lut(raw, ds))
    pixels = scale_to_uint8(raw)  # a linear rescale does not change a linear display
    return 255 - pixels if float(ds.get("RescaleSlope", 1) or 1) < 0 else pixels


def _voi_output_range(ds) -> tuple[float, float]:
    """The range ``apply_voi_lut`` maps into: a VOI LUT's entries, or a window's ``y_min..y_max``
    (DICOM PS3.3 C.11.2.1.2, as pydicom computes it)."""
    if "VOILUTSequence" in ds:
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if "ModalityLUTSequence" in ds:
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high
