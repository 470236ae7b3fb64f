"""One road per image: ``lungseg segment``, ``lungseg serve`` and ``lungseg evaluate`` give the
same file and model the same mask, measurements and DICOM SEG, to the byte.

The service runs PyTorch here (``--backend torch``), as ``segment`` does: ONNX Runtime's
arithmetic differs from PyTorch's in the last bits, which can move a pixel at the threshold.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from server import start

from lungseg.inference import road
from lungseg.inference.segmenter import load_model

MODEL = "unet-fast"
#: The measurements both give (the rest: where segment wrote its files, or the upload's name).
FIGURES = (
    "height", "width", "lung_px", "lung_fraction", "right_lung_px", "left_lung_px", "lung_cm2",
    "right_lung_cm2", "left_lung_cm2", "uncertain_fraction", "review",
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pytorch_server(onnx_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    args = ["--model", MODEL, "--backend", "torch", "--device", "cpu"]
    with start(
        args, tmp_path_factory.mktemp("server-pt"), {"LUNGSEG_CACHE_DIR": str(onnx_cache)}
    ) as running:
        yield running


def test_segment_and_serve_give_the_same_bytes(pytorch_server, xray_files, tmp_path, capsys):
    from lungseg.segment import segment_files

    files = [xray_files[k] for k in ("gray", "jpeg")] + _archived_dicoms(xray_files, tmp_path)
    out = tmp_path / "segment"
    segment_files(load_model(MODEL, device="cpu"), files, out, dicom_seg=True, progress=False)
    with open(out / "measurements.csv", newline="") as fh:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(fh)}
    for path in files:
        row = rows[path.name]
        status, _, body = pytorch_server.request("POST", "/v1/segment", path.read_bytes())
        assert status == 200, body
        answer = json.loads(body)
        assert base64.b64decode(answer["mask_png"]) == (out / row["mask"]).read_bytes()
        served = answer["measurements"] | {
            "height": answer["image"]["height"], "width": answer["image"]["width"],
            "uncertain_fraction": answer["uncertain_fraction"],
        }  # fmt: skip
        for key in FIGURES:
            if key == "review":
                assert answer["review"] == bool(row["review"]), key
                assert answer["review_reason"] == row["review"], key
            else:
                value = served[key]
                assert ("" if value is None else str(value)) == row[key], (path.name, key)
        if path.suffix == ".dcm":
            status, _, seg = pytorch_server.request(
                "POST", "/v1/segment?format=dicom-seg", path.read_bytes()
            )
            assert status == 200, seg
            written = (out / row["dicom_seg"]).read_bytes()
            assert _uids(seg) == _uids(written), path.name
            assert seg == written, path.name


def _uids(data: bytes) -> tuple[str, str, bytes]:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    return ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PixelData


def _archived_dicoms(xray_files, folder: Path) -> list[Path]:
    """The fixture's DICOM X-rays with the study and series a PACS gives them (a SEG must
    reference them)."""
    import pydicom
    from pydicom.uid import generate_uid

    paths = []
    for key in ("mono2", "mono1"):
        ds = pydicom.dcmread(xray_files[key])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        paths.append(folder / f"{key}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_evaluate_scores_what_the_road_predicts(examples_dir: Path, tmp_path: Path):
    """``evaluate`` reads prepared caches, not files, but its probabilities are the road's for
    the same images, bit for bit, and so are the masks it scores and saves."""
    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.encode import mask_png
    from lungseg.inference.postprocessing import postprocess_batch

    segmenter = load_model(MODEL, device="cpu")
    result = evaluate(segmenter, tmp_path / "eval", data=examples_dir, split="all", save_masks=True)
    keys = [result.data.rows[i]["image_key"] for i in result.indices]
    prepared = [road.prepare((examples_dir / key).read_bytes(), key, segmenter) for key in keys]
    prob = road.forward(segmenter, prepared)
    np.testing.assert_array_equal(result.probabilities, prob)
    for key, mask in zip(keys, postprocess_batch(prob, segmenter.postprocess), strict=True):
        saved = tmp_path / "eval" / "masks" / f"{Path(key).stem}.png"
        assert saved.read_bytes() == mask_png(mask), key
