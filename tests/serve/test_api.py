"""The REST API of ``lungseg serve``, against a real uvicorn process on 127.0.0.1: every format
gives the mask and figures ``lungseg segment`` gives, bad input is refused with one line and the
service goes on, the key, CORS and the logs keep patient data where it belongs."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import zlib

import cv2
import numpy as np
import pytest
from server import (
    MAX_UPLOAD_MB,
    PATIENT,
    SPACING,
    TIMEOUT_S,
    multipart,
    png_mask,
    segment_rows,
    start,
)

from dicom_files import dicom_bytes
from lungseg.serve.schemas import ModelsResponse, SegmentResponse
from lungseg.serve.settings import ServeConfig
from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_same(answer: dict, row: dict) -> None:
    """A JSON answer of /v1/segment says what a measurements.csv row and mask say."""
    got = answer["measurements"]
    for key in ("lung_px", "right_lung_px", "left_lung_px"):
        assert got[key] == int(row[key]), key
    assert got["lung_fraction"] == float(row["lung_fraction"])
    for key in ("lung_cm2", "right_lung_cm2", "left_lung_cm2"):
        assert got[key] == (float(row[key]) if row[key] else None), key
    assert answer["uncertain_fraction"] == float(row["uncertain_fraction"])
    assert (answer["image"]["height"], answer["image"]["width"]) == (
        int(row["height"]), int(row["width"]),
    )  # fmt: skip
    mask = png_mask(base64.b64decode(answer["mask_png"]))
    assert np.array_equal(mask, row["mask"]), "the mask differs from lungseg segment's"


def test_every_format_agrees_with_lungseg_segment(
    server, served_onnx, xray_files, tmp_path, capsys
):
    rows = segment_rows(list(xray_files.values()), ["--onnx", served_onnx], tmp_path, capsys)
    for name, path in xray_files.items():
        data = path.read_bytes()
        if name in ("gray", "mono1"):  # a browser form's upload; the others send the raw file
            body, kind = multipart(data, path.name)
            status, answer = server.json("POST", "/v1/segment", body, **{"Content-Type": kind})
        else:
            status, answer = server.json("POST", "/v1/segment", data)
        assert status == 200, (name, answer)
        SegmentResponse.model_validate(answer)
        assert_same(answer, rows[path.stem])
        assert answer["model"]["name"] == "unet-fast"
        assert answer["model"]["backend"] == "onnxruntime"
        assert answer["review"] == (answer["uncertain_fraction"] > answer["review_threshold"])
        assert answer["review_reason"] == rows[path.stem]["review"]
        assert (answer["image"]["spacing_mm"] == list(SPACING)) == name.startswith("mono")

        status, headers, png = server.request("POST", "/v1/segment", data, {"Accept": "image/png"})
        assert status == 200 and headers["content-type"] == "image/png"
        assert np.array_equal(png_mask(png), rows[path.stem]["mask"]), name
        assert int(headers["x-lungseg-lung-px"]) == int(rows[path.stem]["lung_px"])
        assert headers["cache-control"] == "no-store"


def test_a_lateral_film_is_flagged_with_its_reason(server, examples_dir):
    """The flag says why (the page shows it): a lateral view's mask is not one to trust, however
    sure of itself the model is."""
    raw = cv2.imread(str(examples_dir / "COVID" / "images" / "1d435a4b.png"), 0)
    film = dicom_bytes(raw.astype(np.uint16) * 16, header={"ViewPosition": "LL"})
    status, answer = server.json("POST", "/v1/segment", film)
    assert status == 200, answer
    assert answer["review"] is True
    assert answer["review_reason"] == "not a frontal chest X-ray: view LL is not frontal (PA or AP)"


def test_the_decoded_xray_comes_back_on_request(server, xray_files):
    status, answer = server.json("POST", "/v1/segment?image=true", xray_files["mono1"].read_bytes())
    assert status == 200
    image = png_mask(base64.b64decode(answer["image_png"]))
    assert image.shape == (300, 280) and image.dtype == np.uint8
    gray = xray_files["gray"].read_bytes()
    status, _, png = server.request("POST", "/v1/segment?format=png", gray)
    assert status == 200 and png.startswith(b"\x89PNG")


def test_models_health_and_documentation(server):
    assert server.json("GET", "/healthz")[1]["status"] == "ok"
    assert server.json("GET", "/readyz") == (200, {"status": "ready"})
    status, models = server.json("GET", "/v1/models")
    assert status == 200
    ModelsResponse.model_validate(models)
    (entry,) = models["models"]
    assert entry["name"] == "unet-fast" and entry["default"] and entry["backend"] == "onnxruntime"
    assert models["outputs"] == ["json", "png", "dicom-seg", "dicom-sr"]  # highdicom: test extra
    assert models["max_upload_mb"] == MAX_UPLOAD_MB

    status, schema = server.json("GET", "/openapi.json")
    assert status == 200
    operation = schema["paths"]["/v1/segment"]["post"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(
        operation["requestBody"]["content"]
    )
    assert {"200", "413", "415", "422", "504"} <= set(operation["responses"])
    assert {"/v1/models", "/healthz", "/readyz"} <= set(schema["paths"])
    status, _, docs = server.request("GET", "/docs")
    assert status == 200
    # Swagger UI from the package itself: hospital networks are offline.
    assert b"swagger-ui-bundle.js" in docs and b"cdn" not in docs.lower()


def _bomb_png() -> bytes:
    """A valid 1x1 PNG whose header declares 30000 x 30000 pixels."""
    ok, buf = cv2.imencode(".png", np.zeros((1, 1), np.uint8))
    data = bytearray(buf.tobytes())
    ihdr = bytearray(data[12:29])  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_bad_input_is_refused_with_one_line_and_the_service_goes_on(server, xray_files):
    good = xray_files["gray"].read_bytes()
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_MB * 2**20)
    multipart_without_file, kind = multipart(good, "x.png", field="image")
    cases = {
        "oversized": (too_big, {}, 413, "upload limit"),
        "truncated": (good[: len(good) // 2], {}, 422, "truncated PNG"),
        "not an image": (b"%PDF-1.7 a report, not an X-ray\n" * 40, {}, 415, "not an image"),
        "bomb": (_bomb_png(), {}, 422, "decompression bomb"),
        "empty": (b"", {}, 422, "empty file"),
        "corrupt DICOM": (xray_files["mono2"].read_bytes()[:600], {}, 422, "DICOM"),
        "no file field": (multipart_without_file, {"Content-Type": kind}, 400, "'file'"),
        "unknown model": (good, {"_query": "?model=nope"}, 422, "unknown model"),
        "bad option": (good, {"_query": "?format=gif"}, 422, "format"),
    }
    for case, (body, headers, expected, reason) in cases.items():
        query = headers.pop("_query", "")
        status, _, data = server.request("POST", f"/v1/segment{query}", body, headers)
        assert status == expected, (case, data)
        detail = json.loads(data)["detail"]
        assert reason in detail and "\n" not in detail, (case, detail)
        assert "Traceback" not in detail and "/tmp" not in detail, (case, detail)
        assert server.request("POST", "/v1/segment", good)[0] == 200, f"not serving after {case}"


def test_chunked_uploads_over_the_limit_are_cut_off(server, xray_files):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (bytes(256 * 1024) for _ in range(6 * MAX_UPLOAD_MB))  # 1.5x the limit
    try:
        conn.request("POST", "/v1/segment", body=chunks, encode_chunked=True)
        status = conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        status = 413  # the service answered and closed while the client was still sending
    finally:
        conn.close()
    assert status == 413
    assert server.request("POST", "/v1/segment", xray_files["gray"].read_bytes())[0] == 200


def test_a_stalled_upload_times_out(server, xray_files):
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S + 20) as sock:
        sock.sendall(
            b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\nabc"
        )
        answer = ""
        while not answer.endswith("}") and (chunk := sock.recv(4096).decode()):
            answer += chunk
    assert answer.startswith("HTTP/1.1 504"), answer
    assert f"not answered within {TIMEOUT_S} s" in answer
    assert server.request("POST", "/v1/segment", xray_files["gray"].read_bytes())[0] == 200


def test_the_logs_hold_no_patient_data(server, xray_files):
    body, kind = multipart(xray_files["mono1"].read_bytes(), "jane-doe-chest.dcm")
    status, _ = server.json("POST", "/v1/segment?tta=false", body, **{"Content-Type": kind})
    assert status == 200
    status, _, _ = server.request("GET", "/patient/DOE^JANE")
    assert status == 404
    log = server.log.read_text()
    assert "POST /v1/segment 200" in log
    for secret in (*PATIENT.values(), "DOE", "jane", "tta=false"):
        assert secret not in log, secret


def test_api_key_cors_and_a_run_directory_on_pytorch(tiny_run, xray_files, tmp_path, capsys):
    key = "s3cret-key-for-tests"
    args = ["--backend", "torch", "--model", str(tiny_run.run), "--cors-origin", "http://ris.test"]
    with start(args, tmp_path, {"LUNGSEG_API_KEY": key}) as server:
        data = xray_files["deep"].read_bytes()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            status, answer_headers, answer = server.request("POST", "/v1/segment", data, headers)
            assert status == 401, headers
            assert answer_headers["www-authenticate"] == "Bearer"
            assert key not in answer.decode()
        assert server.request("GET", "/v1/models")[0] == 401
        assert server.request("GET", "/healthz")[0] == 200  # probes need no key
        auth = {"Authorization": f"Bearer {key}"}
        status, _, answer = server.request("POST", "/v1/segment", data, auth)
        assert status == 200
        answer = json.loads(answer)
        assert answer["model"] == {**answer["model"], "name": "run", "backend": "pytorch"}
        weights = ["--weights", tiny_run.run]
        rows = segment_rows([xray_files["deep"]], weights, tmp_path / "segment", capsys)
        assert_same(answer, rows["deep"])

        preflight = {"Origin": "http://ris.test", "Access-Control-Request-Method": "POST"}
        _, headers, _ = server.request("OPTIONS", "/v1/segment", None, preflight)
        assert headers.get("access-control-allow-origin") == "http://ris.test"
        _, headers, _ = server.request(
            "OPTIONS", "/v1/segment", None, {**preflight, "Origin": "http://evil.test"}
        )
        assert "access-control-allow-origin" not in headers
        assert key not in server.log.read_text()


def test_cors_is_off_by_default(server):
    preflight = {"Origin": "http://ris.test", "Access-Control-Request-Method": "POST"}
    _, headers, _ = server.request("OPTIONS", "/v1/segment", None, preflight)
    assert "access-control-allow-origin" not in headers
    _, headers, _ = server.request("GET", "/v1/models", None, {"Origin": "http://ris.test"})
    assert "access-control-allow-origin" not in headers


def test_settings_refuse_what_would_be_unsafe_or_wrong():
    from lungseg.core.errors import LungsegError

    assert ServeConfig().host == "127.0.0.1"
    models = ServeConfig(models=("unet-fast,fcn", "ensemble")).models
    assert models == ("unet-fast", "fcn", "ensemble")
    for kwargs, message in (
        ({"cors_origins": ("*",)}, "any web page"),
        ({"backend": "tensorrt"}, "--backend"),
        ({"max_upload_mb": 0}, "--max-upload-mb"),
        ({"models": ("unet", "unet")}, "named twice"),
    ):
        with pytest.raises(LungsegError, match=message):
            ServeConfig(**kwargs)


def test_a_bad_model_fails_on_one_line_before_serving(tmp_path, capsys):
    code, _, stderr = lungseg(["serve", "--model", str(tmp_path / "missing.pt")], capsys)
    assert code == 2
    assert "model not found" in stderr and "Traceback" not in stderr


def test_a_dicom_upload_gets_its_dicom_seg(server, examples_dir):
    """``?format=dicom-seg``: the DICOM Segmentation object ``lungseg segment --dicom-seg``
    writes, over the uploaded X-ray (its study and instance referenced, the PNG's lungs); other
    uploads, and DICOM files that cannot be referenced, get one line."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    from dicom_files import dicom_bytes

    status, models = server.json("GET", "/v1/models")
    assert "dicom-seg" in models["outputs"]
    image = cv2.imread(str(examples_dir / "COVID" / "images" / "1d435a4b.png"), 0)
    raw = cv2.resize(image, (280, 300), interpolation=cv2.INTER_AREA).astype(np.uint16) * 16
    header = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
              "PatientID": "P-7", "StudyDate": "20240131"}  # fmt: skip
    data = dicom_bytes(raw, "MONOCHROME2", (0.15, 0.2), header=header)
    status, headers, body = server.request("POST", "/v1/segment?format=dicom-seg", data)
    assert status == 200 and headers["content-type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(body))
    source = pydicom.dcmread(io.BytesIO(data))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == header["StudyInstanceUID"]
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    lungs = seg.pixel_array.reshape(-1, 300, 280).any(axis=0)
    status, _, png = server.request("POST", "/v1/segment", data, {"Accept": "image/png"})
    assert np.array_equal(lungs, png_mask(png) > 0)

    png_upload = cv2.imencode(".png", image)[1].tobytes()
    status, answer = server.json("POST", "/v1/segment?format=dicom-seg", png_upload)
    assert status == 415 and "needs a DICOM X-ray" in answer["detail"]
    status, answer = server.json(
        "POST", "/v1/segment?format=dicom-seg", dicom_bytes(raw, "MONOCHROME2")
    )  # no study or series UID: nothing a PACS could attach it to
    assert status == 422 and "\n" not in answer["detail"], answer
