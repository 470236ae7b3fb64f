"""Decoding what hospitals send: JPEG Lossless, JPEG-LS, JPEG 2000 (GDCM) and RLE (pydicom) films
give the pixels of the uncompressed file; multi-frame files and frame bombs are refused from the
header before a pixel is decoded; every problem is one line."""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import dicom_bytes
from lungseg.core.errors import LungsegError
from lungseg.data.io import decode_image
from trained import lungseg

pydicom = pytest.importorskip("pydicom")
gdcm = pytest.importorskip("gdcm")

#: GDCM's name of each transfer syntax the tests encode with it.
GDCM_SYNTAXES = {
    "1.2.840.10008.1.2.4.70": "JPEGLosslessProcess14_1",  # the usual lossless CR/DX syntax
    "1.2.840.10008.1.2.4.80": "JPEGLSLossless",
    "1.2.840.10008.1.2.4.90": "JPEG2000Lossless",
}


def _film(examples_dir: Path, photometric: str = "MONOCHROME2") -> bytes:
    """A real X-ray as a 12-bit DX of 333x300 (an odd width)."""
    image = cv2.imread(str(examples_dir / "COVID" / "images" / "1d435a4b.png"), 0)
    raw = cv2.resize(image, (333, 300), interpolation=cv2.INTER_CUBIC).astype(np.uint16) * 16
    raw += np.arange(raw.size, dtype=np.uint16).reshape(raw.shape) % 13  # detector noise
    return dicom_bytes(raw, photometric, (0.15, 0.15))


def encode(data: bytes, syntax: str, folder: Path) -> bytes:
    """``data`` (an uncompressed DICOM file) in a compressed transfer syntax: RLE by pydicom's
    own encoder, the JPEG family by GDCM's."""
    import io

    if syntax == pydicom.uid.RLELossless:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    source, target = folder / "plain.dcm", folder / f"{syntax}.dcm"
    source.write_bytes(data)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(
        gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_SYNTAXES[syntax]))
    )
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(target))
    assert writer.Write()
    return target.read_bytes()


@pytest.mark.parametrize("syntax", [*GDCM_SYNTAXES, "1.2.840.10008.1.2.5"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_compressed_films_decode_to_the_uncompressed_pixels(
    syntax, photometric, examples_dir, tmp_path
):
    plain = _film(examples_dir, photometric)
    packed = encode(plain, syntax, tmp_path)
    assert pydicom.dcmread(__import__("io").BytesIO(packed)).file_meta.TransferSyntaxUID == syntax
    assert len(packed) < len(plain)
    np.testing.assert_array_equal(
        decode_image(packed, "x.dcm").pixels, decode_image(plain, "x.dcm").pixels
    )


def test_a_syntax_without_a_decoder_is_one_line(examples_dir):
    """HTJ2K, which the dicom extra does not decode: which syntax, and what to install."""
    import io

    ds = pydicom.dcmread(io.BytesIO(_film(examples_dir)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K Lossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(LungsegError) as info:
        decode_image(buf.getvalue(), "htj2k.dcm")
    assert "\n" not in str(info.value)
    assert "High-Throughput JPEG 2000" in info.value.problem and "install" in info.value.problem


def test_a_corrupt_jpeg_lossless_stream_is_one_line(examples_dir, tmp_path):
    """A stream without its start-of-scan marker: pydicom's message is three lines naming
    each plugin; errors.csv gets one."""
    packed = encode(_film(examples_dir), "1.2.840.10008.1.2.4.70", tmp_path)
    broken = packed.replace(b"\xff\xda", b"\xff\xfe", 1)
    with pytest.raises(LungsegError) as info:
        decode_image(broken, "broken.dcm")
    assert info.value.problem == (
        "cannot decode DICOM pixel data in JPEG Lossless, Non-Hierarchical, First-Order "
        "Prediction (Process 14 [Selection Value 1]) (1.2.840.10008.1.2.4.70) "
        "(corrupt or truncated)"
    )


def bare(data: bytes, implicit: bool) -> bytes:
    """A Part 10 file's data set written bare: no preamble, no file meta header (as older
    archives and ACR-NEMA-era tools store films)."""
    import io

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.file_meta
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_dataset(out, ds)
    return out.getvalue()


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit VR", "explicit VR"])
def test_a_bare_data_set_decodes_like_its_part10_file(examples_dir, tmp_path, implicit):
    """dcmtk reads a film stored without preamble and file meta header; lungseg called it 'not
    an image'. Same pixels and header as the Part 10 file."""
    from lungseg.dicom.seg import read_header

    plain = _film(examples_dir, "MONOCHROME1")
    data = bare(plain, implicit)
    assert data[128:132] != b"DICM"
    ours, reference = decode_image(data, "bare.dcm"), decode_image(plain, "plain.dcm")
    np.testing.assert_array_equal(ours.pixels, reference.pixels)
    assert ours.spacing == reference.spacing == (0.15, 0.15)
    assert read_header(data, "bare.dcm").SOPInstanceUID == read_header(plain, "x").SOPInstanceUID
    if shutil.which("dcm2pnm"):  # the counterpart reads it too
        (tmp_path / "bare.dcm").write_bytes(data)
        subprocess.run(["dcm2pnm", str(tmp_path / "bare.dcm"), str(tmp_path / "bare.pgm")],
                       check=True)  # fmt: skip
        assert cv2.imread(str(tmp_path / "bare.pgm"), cv2.IMREAD_UNCHANGED).shape == (300, 333)


def test_text_that_starts_like_a_bare_data_set_is_one_line():
    with pytest.raises(LungsegError) as info:
        decode_image(b"\x08\x00\x05\x00" + bytes(100), "notes.dcm")
    assert "\n" not in str(info.value) and str(info.value).startswith("notes.dcm: ")


def _multi_frame(frames: int, size: int) -> bytes:
    """``frames`` RLE frames of ``size``² (8-bit, nearly blank: a few kB each), as a file that
    claims to be a chest X-ray."""
    import io

    one = dicom_bytes(np.zeros((size, size), np.uint16) + 7, header={"BitsStored": 8})
    ds = pydicom.dcmread(io.BytesIO(one))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.full((size, size), 7, np.uint8).tobytes()
    ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
    (frame,) = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    ds.NumberOfFrames = frames
    ds.PixelData = pydicom.encaps.encapsulate([frame] * frames)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_multi_frame_files_are_refused_in_one_line(tiny_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "three.dcm").write_bytes(_multi_frame(3, 64))
    out = tmp_path / "out"
    code, _, stderr = lungseg(["segment", folder, "--out", out, "--weights", tiny_run.run], capsys)
    assert code == 2 and "none of the 1 file(s) could be read" in stderr
    with open(out / "errors.csv", newline="") as fh:
        (error,) = csv.DictReader(fh)
    assert error["problem"] == (
        "multi-frame DICOM (3 frames) is not supported; send the radiograph as a single-frame file"
    )


@pytest.mark.slow
def test_a_frame_bomb_is_refused_from_its_header():
    """Issue 24 item 15: 2,000 frames of 1024² in a file of tens of MB. Every frame used to be
    decoded (2.5 GB); now the header's Rows x Columns x NumberOfFrames refuses it at once."""
    bomb = _multi_frame(2000, 1024)
    assert 10e6 < len(bomb) < 60e6
    start = time.perf_counter()
    with pytest.raises(LungsegError) as info:
        decode_image(bomb, "bomb.dcm")
    assert time.perf_counter() - start < 2.0  # the header only: decoding would take minutes
    assert info.value.problem == (
        "declared size 2000 frame(s) of 1024x1024 (2097 MP) exceeds the 100 MP limit "
        "(possible decompression bomb)"
    )
