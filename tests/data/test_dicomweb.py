"""The DICOMweb client: the bearer token goes to the server and nowhere else (not into an error
message), a refused STOW-RS is an error, and WADO-RS multipart answers are split right."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from lungseg.storage.dicomweb import (
    TOKEN_ENV,
    DicomWebClient,
    DicomWebError,
    multipart_parts,
    parse_url,
)

SECRET = "s3cr3t-token-value"


@pytest.fixture
def server():
    """A loopback HTTP server that records requests and answers as ``reply`` says."""
    seen: list[dict] = []
    reply = {"status": 200, "body": b"{}"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            seen.append({"path": self.path, "headers": dict(self.headers),
                         "body": self.rfile.read(length)})  # fmt: skip
            self.send_response(reply["status"])
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(reply["body"])

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/dicom-web", seen, reply
    httpd.shutdown()


def test_stow_sends_the_token_and_no_error_shows_it(server, monkeypatch):
    root, seen, reply = server
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    client = DicomWebClient(root)
    client.store([b"DICM-one", b"DICM-two"])
    assert seen[0]["path"] == "/dicom-web/studies"
    assert seen[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert seen[0]["body"].count(b"Content-Type: application/dicom\r\n") == 2

    reply["status"] = 401
    with pytest.raises(DicomWebError) as info:
        client.store([b"DICM"])
    assert "HTTP 401" in str(info.value) and SECRET not in str(info.value)
    assert TOKEN_ENV in str(info.value)  # says where the token comes from


def test_a_stow_answer_listing_refused_instances_is_an_error(server):
    root, _, reply = server
    reply["body"] = json.dumps({"00081198": {"vr": "SQ", "Value": [{}]}}).encode()
    with pytest.raises(DicomWebError, match="refused"):
        DicomWebClient(root).store([b"DICM"])


def test_unreachable_server_and_urls():
    with pytest.raises(DicomWebError, match="unreachable"):
        DicomWebClient("http://127.0.0.1:9/dicom-web", timeout_s=2).store([b"x"])
    root, filters = parse_url(
        "dicomweb://pacs:8042/dicom-web?StudyDate=20240101-20240131&Modality=CR"
    )
    assert root == "http://pacs:8042/dicom-web"
    assert filters == {"StudyDate": "20240101-20240131", "Modality": "CR"}
    assert parse_url("dicomwebs://pacs/dw/")[0] == "https://pacs/dw"


def test_multipart_parts():
    body = (
        b"--b1\r\nContent-Type: application/dicom\r\n\r\nAB\r\nCD\r\n--b1\r\n\r\nEF\r\n--b1--\r\n"
    )
    assert multipart_parts('multipart/related; type="application/dicom"; boundary=b1', body) == [
        b"AB\r\nCD",
        b"EF",
    ]
