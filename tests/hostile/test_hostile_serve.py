"""Hostile clients of ``lungseg serve`` on 127.0.0.1 (issue 24, items 6 and 14): hundreds of
sockets that never send a request, heads sent a byte at a time, clients that give up before
their answer. Bounded: at most 240 sockets and 24 requests, the service under a low open-files
limit (``ulimit -n``) and its memory checked."""

from __future__ import annotations

import re
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from server import start  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: The service's open-files limit in these tests: 200 idle sockets would exhaust it.
OPEN_FILES = 192
MEMORY_CAP = 1.5 * 2**30


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"LUNGSEG_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}


def _xray(examples_dir: Path) -> bytes:
    return (examples_dir / "COVID" / "images" / "1d435a4b.png").read_bytes()


def _timed_request(port: int, body: bytes, limit: float) -> tuple[int, float]:
    """Status and seconds of one POST /v1/segment, given up after ``limit`` seconds (0)."""
    import http.client

    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=limit)
    try:
        conn.request("POST", "/v1/segment", body=body)
        status = conn.getresponse().status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - t0


def test_idle_and_slow_sockets_leave_room_for_real_clients(cache, examples_dir, tmp_path):
    body = _xray(examples_dir)
    with start([], tmp_path, cache, open_files=OPEN_FILES) as server:
        size_before = server.log.stat().st_size
        idle = []
        try:
            for _ in range(200):
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            for sock in idle[:20]:  # a request head begun and never finished
                sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            time.sleep(0.5)
            # Before: every client timed out (15 s). A few seconds allow for a loaded machine.
            for _ in range(3):
                status, seconds = _timed_request(server.port, body, limit=15)
                assert status == 200 and seconds < 10, (status, seconds)
            assert server.rss_bytes() < MEMORY_CAP
        finally:
            for sock in idle:
                sock.close()
        grew = server.log.stat().st_size - size_before
        log = server.log.read_text()
        # A burst of connections can outrun the cap for a moment on a loaded machine (asyncio
        # accepts a batch before any of them reaches the protocol); asyncio then pauses
        # accepting for 1 s, and its repeated error is logged at most 5 times.
        assert log.count("Too many open files") <= 5, log[-3000:]
        assert log.count("Traceback") == log.count("Too many open files"), log[-3000:]
        assert grew < 20_000, f"the log grew by {grew} bytes"


def test_a_request_head_must_arrive_within_the_header_timeout(cache, tmp_path):
    with start(["--header-timeout", "1"], tmp_path, cache) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as quiet:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
                t0 = time.perf_counter()
                for byte in b"GET /healthz HTTP/1.1\r\n":  # a byte every 0.2 s
                    try:
                        slow.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.2)
                assert slow.recv(100) == b"" and time.perf_counter() - t0 < 3
            assert quiet.recv(100) == b""  # closed, not answered
        assert server.request("GET", "/healthz")[0] == 200


CLIENTS = 24


def test_work_for_clients_that_left_is_dropped(cache, examples_dir, tmp_path):
    """24 clients ask for TTA masks one forward pass at a time and give up after 0.2 s: those
    still waiting for their pass cost nothing more."""
    body = _xray(examples_dir)
    args = ["--batch-size", "1", "--threads", "1"]
    with start(args, tmp_path, cache) as server:
        port = server.port

        def impatient(_: int) -> int:
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            head = "POST /v1/segment?tta=true HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            head += f"Content-Length: {len(body)}\r\n\r\n"
            conn.sendall(head.encode() + body)
            time.sleep(0.2)
            conn.close()
            return 0

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(impatient, range(CLIENTS)))
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            metrics = server.request("GET", "/metrics")[2].decode()
            if _value(metrics, "lungseg_requests_in_progress") == 0:
                break
            time.sleep(0.2)
        segmented = _value(metrics, "lungseg_images_segmented_total")
        left = _value(metrics, "lungseg_clients_left_total")
        # Work not started when its client left is dropped: with one image per pass, most is.
        assert left >= CLIENTS // 2 and segmented <= CLIENTS // 2, (segmented, left)
        log = server.log.read_text()
        assert "internal error" not in log
        assert server.rss_bytes() < MEMORY_CAP


def _value(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", metrics, re.M)
    assert match, name
    return float(match.group(1))
