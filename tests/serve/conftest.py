"""Fixtures of the service tests: a real ``lungseg serve`` on 127.0.0.1, X-rays in every format."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from server import MAX_UPLOAD_MB, SPACING, TIMEOUT_S, Server, start, with_patient

from dicom_files import dicom_bytes


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The services' cache folder (their ONNX exports), shared by the session's servers."""
    return tmp_path_factory.mktemp("lungseg-cache")


@pytest.fixture(scope="session")
def server(onnx_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """``lungseg serve`` with its defaults (unet-fast on ONNX Runtime), small limits."""
    args = ["--max-upload-mb", str(MAX_UPLOAD_MB), "--timeout", str(TIMEOUT_S)]
    env = {"LUNGSEG_CACHE_DIR": str(onnx_cache)}
    with start(args, tmp_path_factory.mktemp("server"), env) as running:
        yield running


@pytest.fixture(scope="session")
def served_onnx(server: Server, onnx_cache: Path) -> Path:
    """The ONNX file the default service runs (exported into its cache at start)."""
    (path,) = sorted((onnx_cache / "onnx").glob("*.onnx"))
    return path


@pytest.fixture(scope="session")
def xray_files(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real X-ray as 8-bit PNG, JPEG, RGBA PNG, 16-bit PNG and DICOM MONOCHROME2 and
    MONOCHROME1 (12-bit, with pixel spacing and patient tags), each at its own size."""
    folder = tmp_path_factory.mktemp("xrays")
    xray = cv2.imread(str(examples_dir / "COVID" / "images" / "1d435a4b.png"), cv2.IMREAD_GRAYSCALE)

    def sized(h: int, w: int) -> np.ndarray:
        return cv2.resize(xray, (w, h), interpolation=cv2.INTER_AREA)

    files = {
        "gray": folder / "gray.png", "jpeg": folder / "photo.jpg", "rgba": folder / "figure.png",
        "deep": folder / "deep.png", "mono2": folder / "mono2.dcm", "mono1": folder / "mono1.dcm",
    }  # fmt: skip
    cv2.imwrite(str(files["gray"]), sized(331, 287))
    cv2.imwrite(str(files["jpeg"]), sized(400, 360), [cv2.IMWRITE_JPEG_QUALITY, 92])
    bgr = cv2.cvtColor(sized(250, 270), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(files["rgba"]), np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))
    cv2.imwrite(str(files["deep"]), sized(320, 320).astype(np.uint16) * 257)
    raw = sized(300, 280).astype(np.uint16) * 16
    files["mono2"].write_bytes(with_patient(dicom_bytes(raw, "MONOCHROME2", SPACING)))
    files["mono1"].write_bytes(with_patient(dicom_bytes(4080 - raw, "MONOCHROME1", SPACING)))
    return files
