"""Decoding X-rays and masks from bytes into 8-bit grayscale arrays, with clear errors.

Every image format the project meets ends up the same way: ``uint8[H, W]`` grayscale.

* 8-bit grayscale: as is.
* RGB / palette: ITU-R BT.601 luma (OpenCV's ``BGR2GRAY``).
* RGBA / grayscale+alpha: composited on black (``colour * alpha``) first, because the
  transparent margins of figures cut from papers are background, not lung.
* 16-bit (or any deeper integer/float data): min-max stretched to 0..255, since a 12-bit image
  stored in 16 bits would otherwise come out almost black.
* DICOM: modality LUT (rescale slope/intercept), then the VOI LUT or window, then MONOCHROME1
  inversion, then min-max to 0..255; the pixel spacing is kept.

Masks are decoded the same way and binarised by :func:`binarize_mask`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np

from lungseg.errors import LungsegError

#: Largest image we agree to decode, in pixels (a decompression-bomb guard). The biggest real
#: chest X-rays are about 4300x3500 = 15 MP; 100 MP leaves room for any detector.
MAX_PIXELS = 100_000_000

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")

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
        spacing: pixel spacing ``(row_mm, col_mm)`` when the file states it (DICOM), else None.
        mode: the colour mode found in the file (``L``, ``RGB``, ``RGBA``, ``I;16``, ``DICOM``...).
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None = None
    mode: str = "L"


def sniff_format(data: bytes) -> str | None:
    """The file format from its first bytes (``png``, ``jpeg``, ``tiff``, ``bmp``, ``dicom``)."""
    for magic, fmt in _SIGNATURES.items():
        if data.startswith(magic):
            return fmt
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def check_header(data: bytes, name: str) -> tuple[int, int]:
    """Cheap checks before decoding: empty, not an image, truncated, too large.

    Returns:
        The declared ``(height, width)``.

    Raises:
        LungsegError: naming ``name`` and the problem.
    """
    if len(data) == 0:
        raise LungsegError("empty file (0 bytes)", name)
    fmt = sniff_format(data)
    if fmt is None:
        raise LungsegError(
            "not an image (unrecognised content; expected PNG, JPEG, TIFF, BMP or DICOM)", name
        )
    if fmt == "dicom":
        ds = _read_dicom(data, name, pixels=False)
        height, width = int(ds.Rows), int(ds.Columns)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        except Image.DecompressionBombError:
            raise LungsegError(_BOMB, name) from None
        except UnidentifiedImageError:  # its text is only a repr of our in-memory buffer
            raise LungsegError(f"corrupt {fmt.upper()} file (header unreadable)", name) from None
        except Exception as exc:
            raise LungsegError(f"corrupt {fmt.upper()} header ({exc})", name) from None
        if fmt == "png" and b"IEND" not in data[-12:]:
            raise LungsegError("truncated PNG (no end-of-image chunk)", name)
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
    return height, width


_BOMB = f"declared size exceeds the {MAX_PIXELS // 10**6} MP limit (possible decompression bomb)"


def decode_image(data: bytes, name: str) -> Decoded:
    """Decode any supported image file into 8-bit grayscale.

    Args:
        data: the file's bytes.
        name: shown in errors (a path or key).

    Returns:
        :class:`Decoded` with ``uint8[H, W]`` pixels.
    """
    check_header(data, name)
    if sniff_format(data) == "dicom":
        return _decode_dicom(data, name)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        arr = _decode_with_pillow(data, name)
    return to_gray8(arr, name)


def _decode_with_pillow(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
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
    """
    source_dtype = arr.dtype
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
    return Decoded(stretch_to_uint8(arr), mode=f"{mode};{source_dtype}")


def _full_scale(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max stretch any numeric array to ``uint8`` 0..255 (constant images become 0)."""
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _read_dicom(data: bytes, name: str, pixels: bool = True):
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except Exception as exc:
        raise LungsegError(f"corrupt DICOM file ({exc})", name) from None
    if "Rows" not in ds or "Columns" not in ds:
        raise LungsegError("DICOM file has no image (no Rows/Columns)", name)
    return ds


def _decode_dicom(data: bytes, name: str) -> Decoded:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _read_dicom(data, name)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise LungsegError(f"cannot decode DICOM pixel data ({exc})", name) from None
    if raw.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 1:
        raw = raw[0]  # a multi-frame file: radiographs have one frame that matters
    if raw.ndim == 3:  # RGB DICOM (secondary captures)
        gray = cv2.cvtColor(raw.astype(np.uint8), cv2.COLOR_RGB2GRAY)
        return Decoded(gray, spacing=dicom_spacing(ds), mode="DICOM")
    values = apply_modality_lut(raw, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds)
    pixels = stretch_to_uint8(np.asarray(values))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = 255 - pixels
    return Decoded(pixels, spacing=dicom_spacing(ds), mode="DICOM")


def dicom_spacing(ds) -> tuple[float, float] | None:
    """Pixel spacing in mm, from PixelSpacing or (for projection radiographs) ImagerPixelSpacing."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2:
            row, col = float(value[0]), float(value[1])
            if row > 0 and col > 0:
                return row, col
    return None


#: A mask may hold at most this many distinct grey levels outside the two extremes as a share of
#: its pixels; more than that is not an antialiased binary mask but probably an image.
MASK_MAX_GREY_FRACTION = 0.05


def binarize_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """``uint8[H, W]`` mask -> ``bool[H, W]`` lung.

    Rule: masks stored as 0/1 are taken as is; otherwise a pixel is lung when it is at least half
    the maximum value (so 0/255 and antialiased 0..255 edges both work). A mask whose pixels are
    mostly intermediate grey levels is rejected, as is an empty mask.
    """
    top = int(mask.max())
    if top == 0:
        raise LungsegError("empty mask (no lung pixels)", name)
    if top == 1:
        return mask.astype(bool)
    grey = np.count_nonzero((mask > 0) & (mask < top))
    if grey > MASK_MAX_GREY_FRACTION * mask.size:
        levels = np.unique(mask)
        shown = ", ".join(str(v) for v in levels[:6]) + (", ..." if len(levels) > 6 else "")
        raise LungsegError(
            f"mask has {len(levels)} distinct values ({shown}) with {grey / mask.size:.0%} "
            "intermediate pixels; expected a binary mask (0/1 or 0/255)",
            name,
        )
    return mask >= (top + 1) // 2
