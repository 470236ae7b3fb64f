"""HTTP as clients and browsers speak it, against a real ``lungseg serve`` on 127.0.0.1: content
negotiation, methods, the body types a web page could send unasked, the Host header, HTTPS, the
API key's limits, CORS with Private Network Access, ``/metrics`` (issue 24, items 5, 7, 8, 16)."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import re
import socket
import ssl
import time

import pytest
from server import multipart, start

from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_accept_is_negotiated_with_q_values(server, xray_files):
    data = xray_files["gray"].read_bytes()
    cases = {
        "application/json, image/png;q=0": (200, "application/json"),
        "image/png;q=0.5, application/json;q=0.9": (200, "application/json"),
        "application/json;q=0.2, image/*": (200, "image/png"),
        "*/*": (200, "application/json"),
        "text/csv": (406, "application/json"),
        "image/png;q=0, application/json;q=0": (406, "application/json"),
    }
    for accept, (status, kind) in cases.items():
        got, headers, body = server.request("POST", "/v1/segment", data, {"Accept": accept})
        assert got == status and headers["content-type"].startswith(kind), (accept, got, headers)
        if status == 200:
            assert "Accept" in headers.get("vary", ""), accept
        else:
            assert "application/json, image/png" in json.loads(body)["detail"]
    status, _, _ = server.request(
        "POST", "/v1/segment?format=png", data, {"Accept": "application/json"}
    )
    assert status == 406


def test_methods_head_and_health(server):
    status, headers, _ = server.request("GET", "/v1/segment")
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _ = server.request("DELETE", "/healthz")
    assert status == 405 and set(headers["allow"].split(", ")) == {"GET", "HEAD"}
    for path in ("/", "/healthz"):
        status, headers, body = server.request("HEAD", path)
        assert status == 200 and body == b"", path
    from lungseg._version import __version__

    assert server.json("GET", "/healthz") == (200, {"status": "ok", "version": __version__})


def test_the_page_names_its_script_by_content(server):
    """A browser that kept an older lungseg's script ran it against this API (the review reason
    was missing from the page until its cache was cleared): the script's and the style's URLs
    carry the digest of what this lungseg serves."""
    import hashlib
    import re

    from lungseg.serve.app import STATIC

    status, _, page = server.request("GET", "/")
    assert status == 200
    digest = hashlib.sha256((STATIC / "app.js").read_bytes() + (STATIC / "app.css").read_bytes())
    urls = re.findall(rb'(?:src|href)="(/static/app\.(?:js|css)\?v=[0-9a-f]+)"', page)
    assert len(urls) == 2 and all(u.endswith(digest.hexdigest()[:12].encode()) for u in urls)
    for url in urls:
        assert server.request("GET", url.decode())[0] == 200


def test_an_empty_model_is_the_default(server, xray_files):
    status, answer = server.json("POST", "/v1/segment?model=", xray_files["gray"].read_bytes())
    assert status == 200 and answer["model"]["name"] == "unet-fast"


def _bare_dicom(data: bytes) -> bytes:
    """The data set of a DICOM file without its Part 10 header (no preamble, no 'DICM')."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(io.BytesIO(data))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def test_formats_we_know_but_do_not_read_are_unsupported(server, xray_files):
    from PIL import Image

    image = Image.open(xray_files["gray"])
    files = {}
    for fmt in ("GIF", "WEBP"):
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        files[fmt] = buf.getvalue()
    for name, data in files.items():
        status, answer = server.json("POST", "/v1/segment", data)
        assert status == 415 and answer["detail"].startswith("unsupported format"), (name, answer)


def test_a_bare_dicom_data_set_is_read_like_its_part10_file(server, xray_files):
    """Without its preamble and file meta header (as older archives keep films), as dcmtk
    reads it; refused with 415 before lungseg read such files."""
    part10 = xray_files["mono2"].read_bytes()
    answers = [server.json("POST", "/v1/segment", d) for d in (part10, _bare_dicom(part10))]
    assert [status for status, _ in answers] == [200, 200], answers
    assert answers[0][1]["mask_png"] == answers[1][1]["mask_png"]
    assert answers[0][1]["measurements"] == answers[1][1]["measurements"]


def test_the_dicom_seg_answer_names_its_file_and_model(server, xray_files):
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(xray_files["mono2"])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    status, headers, body = server.request(
        "POST", "/v1/segment?format=dicom-seg&tta=true", buf.getvalue()
    )
    assert status == 200, body[:300]
    assert headers["content-disposition"].startswith("attachment; filename=")
    assert headers["x-lungseg-model"] == "unet-fast" and headers["x-lungseg-tta"] == "true"
    assert re.fullmatch("[0-9a-f]{64}", headers["x-lungseg-weights-sha256"])
    assert headers["x-lungseg-mask-convention"]


def test_bodies_a_web_page_could_send_unasked_are_refused(server, xray_files):
    data = xray_files["gray"].read_bytes()
    for kind in ("text/plain", "application/x-www-form-urlencoded"):
        status, answer = server.json("POST", "/v1/segment", data, **{"Content-Type": kind})
        assert status == 415 and "Content-Type" in answer["detail"], kind
    for kind in ("image/png", "application/octet-stream"):
        assert server.json("POST", "/v1/segment", data, **{"Content-Type": kind})[0] == 200
    # A form post from another site's page is a "simple" request too: its Origin gives it away.
    body, kind = multipart(data, "x.png")
    headers = {"Content-Type": kind, "Origin": "http://evil.test"}
    status, answer = server.json("POST", "/v1/segment", body, **headers)
    assert status == 403 and "--cors-origin" in answer["detail"]
    same = {"Content-Type": kind, "Origin": f"http://127.0.0.1:{server.port}"}
    assert server.json("POST", "/v1/segment", body, **same)[0] == 200


def test_host_names_not_on_the_list_are_refused(server):
    """DNS rebinding: a page on evil.test re-pointed at 127.0.0.1 sends Host: evil.test."""
    for host in ("evil.test", f"evil.test:{server.port}", "localhost.evil.test"):
        status, answer = server.json("GET", "/v1/models", Host=host)
        assert status == 400 and "--allowed-host" in answer["detail"], host
    for host in (f"localhost:{server.port}", "127.0.0.1", f"[::1]:{server.port}", "10.1.2.3"):
        assert server.json("GET", "/v1/models", Host=host)[0] == 200, host


def test_docs_have_a_content_security_policy(server):
    status, headers, body = server.request("GET", "/docs")
    assert status == 200 and b"swagger-ui-bundle.js" in body
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "'sha256-" in policy
    assert int(headers["content-length"]) == len(body)


SAMPLE = r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+'


def test_metrics_in_prometheus_text_format(server, xray_files):
    assert server.request("POST", "/v1/segment", xray_files["gray"].read_bytes())[0] == 200
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    ok = re.search(
        r'^lungseg_http_requests_total\{method="POST",route="/v1/segment",status="200"\} (\d+)$',
        text,
        re.M,
    )
    assert ok and int(ok.group(1)) >= 1
    for series in (
        'lungseg_http_request_duration_seconds_bucket{route="/v1/segment",le="+Inf"}',
        'lungseg_batch_size_bucket{le="1"}',
        "lungseg_batch_size_count",
        "lungseg_images_segmented_total",
        "lungseg_review_flags_total",
        "lungseg_requests_in_progress",
        'lungseg_batch_queue_depth{model="unet-fast",tta="false"}',
    ):
        assert series in text, series
    # Every sample line is "name{labels} number" (what Prometheus' parser takes).
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.fullmatch(SAMPLE, line), line


def test_a_client_that_leaves_mid_upload_is_no_internal_error(server, xray_files):
    before = server.log.read_text()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 900000\r\n\r\n"
            + bytes(20000)
        )
        time.sleep(0.3)
    time.sleep(1.0)
    added = server.log.read_text()[len(before) :]
    assert "internal error" not in added and "500" not in added, added
    assert server.request("GET", "/healthz")[0] == 200


def test_an_empty_api_key_is_refused_at_start(monkeypatch, capsys):
    monkeypatch.setenv("LUNGSEG_API_KEY", "")
    code, _, stderr = lungseg(["serve", "--port", "1"], capsys)
    assert code == 2 and "LUNGSEG_API_KEY is set but empty" in stderr, stderr
    assert "Traceback" not in stderr


def _certificate(folder) -> tuple:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_a_key_with_a_limit_and_cors_for_a_private_network(
    onnx_cache, server, xray_files, tmp_path
):
    """The README's set-up for a RIS page on another origin: HTTPS, a bearer key, CORS."""
    key = "k3y-for-the-tests"
    cert, private = _certificate(tmp_path)
    origin = "https://ris.test"
    args = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(private), "--cors-origin", origin]
    tls = ssl.create_default_context(cafile=str(cert))
    env = {"LUNGSEG_API_KEY": key, "LUNGSEG_CACHE_DIR": str(onnx_cache)}
    with start(args, tmp_path, env, tls=tls) as secure:
        log = secure.log.read_text()
        assert f"https://127.0.0.1:{secure.port}/" in log and "an API key is required" in log
        assert "no API key required" in server.log.read_text()
        auth = {"Authorization": f"Bearer {key}"}
        data = xray_files["gray"].read_bytes()
        status, headers, _ = secure.request(
            "POST", "/v1/segment", data, {**auth, "Origin": origin, "Accept": "image/png"}
        )
        assert status == 200 and headers["access-control-allow-origin"] == origin
        exposed = {h.strip().lower() for h in headers["access-control-expose-headers"].split(",")}
        assert {"x-lungseg-model", "x-lungseg-lung-px", "x-lungseg-review"} <= exposed
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
            "Access-Control-Request-Private-Network": "true",
        }
        status, headers, _ = secure.request("OPTIONS", "/v1/segment", None, preflight)
        assert status == 200 and headers["access-control-allow-private-network"] == "true"
        status, headers, _ = secure.request(
            "OPTIONS", "/v1/segment", None, {**preflight, "Origin": "https://evil.test"}
        )
        assert status == 400 and "access-control-allow-origin" not in headers
        assert secure.request("GET", "/metrics")[0] == 401
        assert secure.request("GET", "/metrics", None, auth)[0] == 200
        # Wrong keys: ten are answered 401 (the keyless /metrics above was one), then this
        # client waits (429), with the right key too.
        wrong = [secure.request("GET", "/v1/models", None, {"Authorization": f"Bearer x{k}"})
                 for k in range(9)]  # fmt: skip
        assert [status for status, _, _ in wrong] == [401] * 9
        status, headers, _ = secure.request("GET", "/v1/models", None, {"Authorization": "x"})
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
        assert secure.request("GET", "/v1/models", None, auth)[0] == 429
        assert key not in secure.log.read_text()
