"""Decoding every image format into 8-bit grayscale, mask binarisation, and bad files.

The content of every synthetic file is a real chest X-ray of the bundled examples, so colour
conversion, compositing and stretching are checked on realistic pixel statistics.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from dicom_files import dicom_bytes
from lungseg.core.errors import LungsegError
from lungseg.data.io import (
    MAX_PIXELS,
    check_header,
    decode_image,
    decode_mask,
    scale_to_uint8,
)
from lungseg.data.masks import binarize_mask
from png_files import PNG_SIGNATURE, png_chunk, png_declaring

STEM = "1d435a4b"


@pytest.fixture(scope="module")
def xray(examples_dir: Path) -> np.ndarray:
    image = cv2.imread(str(examples_dir / "COVID" / "images" / f"{STEM}.png"), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape == (299, 299) and image.max() > image.min()
    return image


@pytest.fixture(scope="module")
def mask255(examples_dir: Path) -> np.ndarray:
    mask = cv2.imread(str(examples_dir / "COVID" / "masks" / f"{STEM}.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(mask)) == {0, 255}
    return mask


@pytest.fixture(scope="module")
def rgb(xray: np.ndarray) -> np.ndarray:
    """An RGB image whose three channels differ, so the luma weights matter."""
    return np.dstack([xray, xray // 2 + 60, 255 - xray]).astype(np.uint8)


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _cv2_bytes(array: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------
# Formats and colour modes


def test_grayscale_png(xray: np.ndarray) -> None:
    decoded = decode_image(_pil_bytes(Image.fromarray(xray), "PNG"), "x.png")
    assert decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, xray)
    assert decoded.mode == "L" and decoded.spacing is None


def test_grayscale_jpeg(xray: np.ndarray) -> None:
    data = _cv2_bytes(xray, ".jpg")
    decoded = decode_image(data, "x.jpg")
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert np.abs(decoded.pixels.astype(int) - xray).mean() < 3  # and it is still the X-ray


def test_rgb_png_is_bt601_luma(rgb: np.ndarray) -> None:
    decoded = decode_image(_pil_bytes(Image.fromarray(rgb, "RGB"), "PNG"), "x.png")
    expected = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.mode == "RGB"
    # Not just one channel: the luma differs from each of them.
    for c in range(3):
        assert not np.array_equal(decoded.pixels, rgb[..., c])


def test_rgb_jpeg_is_bt601_luma(rgb: np.ndarray) -> None:
    data = _pil_bytes(Image.fromarray(rgb, "RGB"), "JPEG", quality=95)
    decoded = decode_image(data, "x.jpg")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded.pixels, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


def test_rgba_composited_on_black(rgb: np.ndarray) -> None:
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0  # a transparent margin, as in figures cut out of papers
    alpha[:50, 100:] = 128  # half transparent
    data = _pil_bytes(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")
    decoded = decode_image(data, "x.png")
    luma = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2GRAY).astype(int)
    out = decoded.pixels.astype(int)
    assert decoded.mode == "RGBA"
    assert (out[:, :100] == 0).all()
    assert np.abs(out[50:, 100:] - luma[50:, 100:]).max() <= 1
    assert np.abs(out[:50, 100:] - luma[:50, 100:] * 128 / 255).max() <= 1
    assert luma[:, :100].max() > 0  # the transparent part was not black to begin with


def test_palette_png(rgb: np.ndarray) -> None:
    palette = Image.fromarray(rgb, "RGB").quantize(64)
    assert palette.mode == "P"
    decoded = decode_image(_pil_bytes(palette, "PNG"), "x.png")
    as_rgb = np.asarray(palette.convert("RGB"))
    expected = cv2.cvtColor(np.ascontiguousarray(as_rgb[..., ::-1]), cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_palette_png_with_transparency(xray: np.ndarray) -> None:
    indices = (xray // 4).astype(np.uint8)  # 64 grey levels, index 0 = transparent
    palette = Image.fromarray(indices, "P")
    palette.putpalette([v for i in range(256) for v in (min(4 * i + 2, 255),) * 3])
    data = _pil_bytes(palette, "PNG", transparency=0)
    out = decode_image(data, "x.png").pixels.astype(int)
    assert (out[indices == 0] == 0).all()
    opaque = indices > 0
    assert np.abs(out[opaque] - (4 * indices[opaque].astype(int) + 2)).max() <= 1


def test_16bit_png_scaled_from_its_bit_depth(xray: np.ndarray) -> None:
    deep = xray.astype(np.uint16) * 13 + 500  # a 12-bit detector stored in 16 bits
    data = _cv2_bytes(deep, ".png")
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    decoded = decode_image(data, "x.png")
    expected = np.rint(deep * 255.0 / 4095).astype(np.uint8)  # 12 bits hold it; not stretched
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.pixels.min() > 0 and decoded.pixels.max() < 255
    assert "16" in decoded.mode


@pytest.mark.parametrize(
    ("brightest", "bits"), [(255, 8), (256, 10), (1023, 10), (1024, 12), (4095, 12), (9000, 14),
                            (65535, 16)]
)  # fmt: skip
def test_bit_depth_is_the_smallest_that_holds_the_brightest_pixel(brightest, bits) -> None:
    values = np.array([[0, brightest // 2], [brightest, 3]], np.uint16)
    expected = np.rint(values * 255.0 / (2**bits - 1)).astype(np.uint8)
    np.testing.assert_array_equal(scale_to_uint8(values), expected)


def test_floats_in_the_unit_range_and_beyond() -> None:
    unit = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    np.testing.assert_array_equal(scale_to_uint8(unit), [[0, 128], [255, 64]])
    grey = np.array([[0.0, 100.0], [198.0, 14.0]], np.float32)  # 8-bit values stored as floats
    np.testing.assert_array_equal(scale_to_uint8(grey), grey.astype(np.uint8))
    signed = np.array([[-10.0, 0.0], [10.0, 5.0]], np.float32)  # no convention: stretched
    np.testing.assert_array_equal(scale_to_uint8(signed), [[0, 128], [255, 191]])


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_tiff(xray: np.ndarray, rgb: np.ndarray, mode: str) -> None:
    source = xray if mode == "L" else rgb
    data = _pil_bytes(Image.fromarray(source, mode), "TIFF")
    expected = xray if mode == "L" else cv2.cvtColor(rgb[..., ::-1].copy(), cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(decode_image(data, "x.tif").pixels, expected)


def _with_orientation(pixels: np.ndarray, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation  # EXIF Orientation
    quality = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    return _pil_bytes(Image.fromarray(pixels), fmt, exif=exif, **quality)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_picture_viewers_show(
    xray: np.ndarray, fmt: str, orientation: int
) -> None:
    """A film stored sideways with EXIF saying so is decoded as it is displayed: as Pillow's
    exif_transpose and OpenCV's default reader show it, not as stored (lungseg once segmented
    such a film lying on its side)."""
    stored = np.ascontiguousarray(xray[:, :250])  # not square: a rotation changes the shape
    data = _with_orientation(stored, fmt, orientation)
    ours = decode_image(data, f"x.{fmt.lower()}").pixels
    with Image.open(io.BytesIO(data)) as im:
        pillow = np.asarray(ImageOps.exif_transpose(im).convert("L"))
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert ours.shape == pillow.shape == opencv.shape
    assert ours.shape == (stored.shape[::-1] if orientation >= 5 else stored.shape)
    assert np.abs(ours.astype(int) - pillow).max() <= 1
    assert np.abs(ours.astype(int) - opencv).max() <= 1


def test_exif_orientation_of_a_mask_too(mask255: np.ndarray) -> None:
    stored = np.ascontiguousarray(mask255[:, :250])
    mask = decode_mask(_with_orientation(stored, "PNG", 6), "m.png")
    np.testing.assert_array_equal(mask, np.rot90(stored, -1) > 0)


def test_bmp(xray: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_image(_cv2_bytes(xray, ".bmp"), "x.bmp").pixels, xray)


def test_grayscale_with_alpha(xray: np.ndarray) -> None:
    alpha = np.full(xray.shape, 255, np.uint8)
    alpha[200:, :] = 0
    data = _pil_bytes(Image.fromarray(np.dstack([xray, alpha]), "LA"), "PNG")
    out = decode_image(data, "x.png").pixels
    assert (out[200:] == 0).all()
    np.testing.assert_array_equal(out[:200], xray[:200])


# ---------------------------------------------------------------------------------------------
# DICOM


def _dicom(raw: np.ndarray, photometric: str = "MONOCHROME2", **kwargs) -> bytes:
    return dicom_bytes(raw, photometric, **{"spacing": (0.15, 0.2), **kwargs})


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.rint((values - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def _twelve_bit(values: np.ndarray) -> np.ndarray:
    return np.rint(values * 255.0 / 4095).astype(np.uint8)


@pytest.fixture(scope="module")
def raw12(xray: np.ndarray) -> np.ndarray:
    return xray.astype(np.uint16) * 16 + 3  # 12-bit values, 3..4083


def test_dicom_monochrome2_with_spacing(raw12: np.ndarray, xray: np.ndarray) -> None:
    decoded = decode_image(_dicom(raw12), "chest.dcm")
    assert decoded.mode == "DICOM"
    assert decoded.spacing == (0.15, 0.2)
    np.testing.assert_array_equal(decoded.pixels, _twelve_bit(raw12))
    assert np.abs(decoded.pixels.astype(int) - xray).max() <= 1  # the picture, not stretched


def test_dicom_monochrome1_is_inverse(raw12: np.ndarray) -> None:
    mono2 = decode_image(_dicom(raw12, "MONOCHROME2"), "a.dcm").pixels
    mono1 = decode_image(_dicom(raw12, "MONOCHROME1"), "b.dcm").pixels
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert not np.array_equal(mono1, mono2)


def test_dicom_rescale_and_window(raw12: np.ndarray) -> None:
    slope, intercept, center, width = 2.0, -1024.0, 2000.0, 4000.0
    data = _dicom(raw12, rescale=(slope, intercept), window=(center, width))
    decoded = decode_image(data, "w.dcm")
    # DICOM PS3.3 C.11.2.1.2 linear window, then min-max to 0..255.
    values = raw12 * slope + intercept
    lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    windowed = np.where(
        values <= lo, 0.0, np.where(values > hi, 1.0, (values - (center - 0.5)) / (width - 1) + 0.5)
    )
    expected = _stretch(windowed)
    assert np.abs(decoded.pixels.astype(int) - expected.astype(int)).max() <= 1
    assert (decoded.pixels == 255).mean() > 0.05  # the window saturates the brightest part
    unwindowed = decode_image(_dicom(raw12, rescale=(slope, intercept)), "u.dcm").pixels
    assert not np.array_equal(decoded.pixels, unwindowed)


def test_dicom_without_spacing(raw12: np.ndarray) -> None:
    assert decode_image(_dicom(raw12, spacing=None), "a.dcm").spacing is None


def test_dicom_declaring_huge_size_rejected_before_pixels(raw12: np.ndarray) -> None:
    data = _dicom(raw12, rows_cols=(20000, 20000))
    with pytest.raises(LungsegError) as info:
        check_header(data, "huge.dcm")
    assert "huge.dcm" in str(info.value) and "decompression bomb" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Masks


def test_mask_0_255(mask255: np.ndarray) -> None:
    np.testing.assert_array_equal(binarize_mask(mask255, "m.png"), mask255 == 255)


def test_mask_0_1(mask255: np.ndarray) -> None:
    ones = (mask255 // 255).astype(np.uint8)
    out = binarize_mask(ones, "m.png")
    assert out.dtype == bool
    np.testing.assert_array_equal(out, mask255 == 255)


def test_mask_antialiased_edges(mask255: np.ndarray) -> None:
    smooth = cv2.resize(mask255, (299, 299), interpolation=cv2.INTER_LINEAR)
    grey = (smooth > 0) & (smooth < 255)
    assert 0 < grey.mean() < 0.05  # realistic antialiasing: a thin band of grey levels
    out = binarize_mask(smooth, "m.png")
    np.testing.assert_array_equal(out, smooth >= 128)


def test_mask_decoded_from_file_then_binarised(mask255: np.ndarray) -> None:
    data = _pil_bytes(Image.fromarray(mask255), "PNG")
    np.testing.assert_array_equal(
        binarize_mask(decode_image(data, "m.png").pixels, "m.png"), mask255 > 0
    )


@pytest.mark.parametrize("quality", [95, 75, 50])
def test_a_jpeg_mask_is_its_binary_mask(mask255: np.ndarray, quality: int) -> None:
    """JPEG's rounding leaves many grey levels near 0 and 255 (6 % of the pixels at quality 75,
    which lungseg once refused as 'not a binary mask'), few in the middle."""
    data = _cv2_bytes(mask255, ".jpg") if quality == 95 else cv2.imencode(
        ".jpg", mask255, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()  # fmt: skip
    mask = decode_mask(data, "m.jpg")
    assert (mask != (mask255 > 0)).mean() < 0.002


def test_labels_0_1_2_are_not_a_binary_mask(mask255: np.ndarray) -> None:
    labels = (mask255 // 255).astype(np.uint8)
    labels[:, : labels.shape[1] // 2] *= 2  # left and right lungs labelled apart
    with pytest.raises(LungsegError, match="binary mask"):
        binarize_mask(labels, "m.png")


def test_grey_image_as_mask_rejected(xray: np.ndarray) -> None:
    with pytest.raises(LungsegError) as info:
        binarize_mask(xray, "COVID/masks/x.png")
    message = str(info.value)
    assert message.startswith("COVID/masks/x.png: ") and "binary mask" in message
    assert "\n" not in message


def test_empty_mask_rejected() -> None:
    with pytest.raises(LungsegError, match=r"^COVID/masks/x\.png: empty mask"):
        binarize_mask(np.zeros((64, 64), np.uint8), "COVID/masks/x.png")


# ---------------------------------------------------------------------------------------------
# Bad files: one line naming the file and the problem


def _bad_files(xray: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """name -> (content, a word the error must contain)."""
    png = _cv2_bytes(xray, ".png")
    jpeg = _cv2_bytes(xray, ".jpg")
    rng = np.random.default_rng(0)
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 299, 299, 8, 0, 0, 0, 0))
    return {
        "random-after-signature.png": (PNG_SIGNATURE + rng.bytes(4000), "corrupt"),
        "broken-pixel-data.png": (
            PNG_SIGNATURE + header + png_chunk(b"IDAT", rng.bytes(800)) + png_chunk(b"IEND", b""),
            "decode",
        ),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "zero-bytes.png": (b"", "empty"),
        "notes.png": (b"patient 12, follow-up day 3\n", "not an image"),
        "bomb.png": (png_declaring(20000, 20000), "decompression bomb"),
        "big.png": (png_declaring(11000, 11000), "decompression bomb"),
        "orientation-9.jpg": (_with_orientation(xray, "JPEG", 9), "EXIF Orientation is 9"),
    }


BAD_NAMES = [
    "random-after-signature.png",
    "broken-pixel-data.png",
    "truncated.png",
    "truncated.jpg",
    "zero-bytes.png",
    "notes.png",
    "bomb.png",
    "big.png",
    "orientation-9.jpg",
]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the CLI hides it
@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_file_one_clear_line(xray: np.ndarray, name: str) -> None:
    data, word = _bad_files(xray)[name]
    key = f"COVID/images/{name}"
    with pytest.raises(LungsegError) as info:
        decode_image(data, key)
    message = str(info.value)
    assert message.startswith(f"{key}: ")
    assert message.count(key) == 1
    assert word in message
    assert "\n" not in message
    assert "object at 0x" not in message  # no Python reprs in what users read


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [20000, 11000])
def test_bomb_rejected_without_decoding(monkeypatch, size: int) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)
    assert size * size > MAX_PIXELS
    with pytest.raises(LungsegError, match="decompression bomb"):
        decode_image(png_declaring(size, size), "bomb.png")


def test_check_header_returns_declared_size(xray: np.ndarray) -> None:
    assert check_header(_cv2_bytes(xray[:200], ".png"), "x.png") == (200, 299)
    assert check_header(png_declaring(3000, 2500), "x.png") == (2500, 3000)


def test_a_multi_page_tiff_is_refused_not_cut_to_its_first_page(tmp_path: Path) -> None:
    """Issue 24 (minor): a TIFF of several pages was segmented from its first page without a
    note; like a multi-frame DICOM, it is now one line naming the file."""
    from PIL import Image

    pages = [Image.fromarray(np.full((64, 64), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(LungsegError, match="a TIFF of 2 pages; give one radiograph per file"):
        decode_image(buf.getvalue(), "stack.tif")
    single = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(single, "TIFF")
    assert decode_image(single.getvalue(), "one.tif").pixels.shape == (64, 64)
