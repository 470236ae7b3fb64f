"""A bounded load test on loopback: 200 requests, 16 at a time, against the real service. Every
answer must be 200 and the mask of its own file (batching must never mix answers up), and the
server's memory after the run must be within 10 % of what it was before (after a warm-up)."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

REQUESTS = 200
CONCURRENCY = 16


def test_200_requests_at_concurrency_16(server, examples_dir, xray_files):
    files = sorted((examples_dir / "COVID" / "images").glob("*.png")) + list(xray_files.values())
    bodies = [path.read_bytes() for path in files]

    def ask(k: int) -> tuple[int, int, str]:
        status, _, data = server.request("POST", "/v1/segment", bodies[k % len(bodies)])
        answer = json.loads(data) if status == 200 else {}
        return k % len(bodies), status, answer.get("mask_png", "")

    expected = {k: mask for k, _, mask in map(ask, range(len(bodies)))}  # one at a time
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        # Warm-up, the same run: the first batches grow ONNX Runtime's memory arena and the
        # threads' stacks once; what must not happen is growth from one run to the next.
        list(pool.map(ask, range(REQUESTS)))
        before = server.rss_bytes()
        answers = list(pool.map(ask, range(REQUESTS)))
    after = server.rss_bytes()

    assert [status for _, status, _ in answers] == [200] * REQUESTS
    wrong = [files[k].name for k, _, mask in answers if mask != expected[k]]
    assert not wrong, f"masks that are not their own file's: {wrong}"
    assert all(base64.b64decode(mask).startswith(b"\x89PNG") for mask in expected.values())
    grew = f"server memory grew from {before / 2**20:.0f} MiB to {after / 2**20:.0f} MiB"
    assert after <= 1.10 * before, grew
    assert server.request("GET", "/readyz")[0] == 200
