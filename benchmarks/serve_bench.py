"""``lungseg serve`` under load on loopback, beside the offline ``lungseg segment`` of the same
model in the same run.

Offline (in this process, while the service idles): :func:`lungseg.segment.segment_files` on
the real X-rays, batch 8 as ``lungseg segment`` runs (decode, model, masks, overlays, CSV), and
the batch-1 latency of the work one request needs (decode, preprocess, one forward pass, mask,
measurements, mask PNG) without HTTP. Both use the model exactly as the service loads it
(``unet-fast``, ONNX Runtime, :func:`lungseg.serve.loading.load_models`). Offline passes and
service runs alternate, round after round, so that both meet the same load from other work.

Online: ``python -m lungseg serve`` in a subprocess, timed from its start to ``/readyz`` 200 with
an empty cache (the ONNX export included) and again with the export cached. Then clients on
keep-alive connections send the same X-rays as raw ``POST /v1/segment`` bodies and read the JSON
answers (mask as base64 PNG), at concurrency 1, 8 and 32: requests/s and p50/p95/p99 latency.
The client threads share the 2 cores with the service, as a hospital's integration engine on the
same host would.

CPU per image: the service process's CPU time (user + system, all its threads, from
``/proc/PID/stat``) over a run, divided by the images it answered; offline, this process's CPU
time over a pass. Unlike requests/s, it hardly moves when other work loads the machine.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import Context, Section

MODEL = "unet-fast"
GOAL_SHARE = 0.8  # service throughput at concurrency 32 / offline throughput
GOAL_EXTRA_MS = 20.0  # service p95 at concurrency 1 - offline batch-1 latency
GOAL_START_S = 5.0


@dataclass(frozen=True)
class Plan:
    images: int | None  # X-rays used (None: all)
    levels: tuple[int, ...]  # concurrency levels
    requests: int  # timed requests per level and round (at least 8 per client)
    repeats: int  # rounds

    def total(self, level: int) -> int:
        return max(self.requests, 8 * level)


QUICK = Plan(12, (1, 8), 16, 1)
FULL = Plan(None, (1, 8, 32), 320, 3)


def run(ctx: Context) -> Section:
    plan = QUICK if ctx.quick else FULL
    section = Section("serve", ctx)
    src, described = ctx.real_data()
    files = sorted(src.glob("*/images/*.png"))[: plan.images]
    bodies = [path.read_bytes() for path in files]
    cache = ctx.tmp / "serve-cache"
    threads = ctx.threads
    cold = _start(ctx, ctx.tmp / "serve-cold-cache", threads)
    _stop(cold)
    offline = _Offline(ctx, files, cache, threads)
    server = _start(ctx, cache, threads)
    section.add("service start to /readyz 200, empty cache (ONNX export)", [cold.ready_s], "s")
    section.add("service start to /readyz 200, export cached", [server.ready_s], "s")
    # Offline and service runs alternate, so that both meet the same load from other work.
    offline_rates, offline_ms, offline_cpu = [], [], []
    runs: dict[int, list[tuple[float, list[tuple[int, float, int]], float]]] = {
        n: [] for n in plan.levels
    }
    try:
        for level in plan.levels:
            _clients(server.port, bodies, level, 2 * level)  # warm-up
        for _ in range(plan.repeats):
            rate, cpu_ms = offline.throughput()
            offline_rates.append(rate)
            offline_cpu.append(cpu_ms)
            offline_ms += offline.latencies()
            for level in plan.levels:
                cpu_before = _cpu_seconds(server.process.pid)
                wall, answers = _clients(server.port, bodies, level, plan.total(level))
                cpu = _cpu_seconds(server.process.pid) - cpu_before
                runs[level].append((wall, answers, 1000 * cpu / len(answers)))
    finally:
        _stop(server)
    section.add(
        f"offline lungseg segment throughput, {MODEL}, batch 8",
        offline_rates,
        "images/s",
        "masks, overlays and measurements.csv written",
    )
    offline_cpu_ms = section.add(
        f"offline CPU per image, {MODEL}, batch 8",
        offline_cpu,
        "CPU ms/image",
        "this process's CPU time (all threads) over a pass / images",
    )["median"]
    one = section.add(
        f"offline latency, batch 1, {MODEL}",
        offline_ms,
        "ms/image",
        "one request's work in process: decode, preprocess, forward, mask, measure, mask PNG",
    )
    rows = [
        _level(section, level, runs[level], offline_rates, offline_cpu_ms) for level in plan.levels
    ]
    section.table(
        f"Service under load ({MODEL}, ONNX Runtime, JSON answers, loopback)",
        ["concurrency", "requests", "requests/s", "p50 ms", "p95 ms", "p99 ms",
         "mean batch", "of offline throughput", "CPU ms/image", "of offline CPU/image"],
        rows,
    )  # fmt: skip
    by_level = {row[0]: row for row in rows}
    share = f"service throughput at concurrency 32 >= {GOAL_SHARE:.0%} of offline lungseg segment"
    if 32 in by_level:
        ratios = [t / o for (t, _), o in zip(_rates(runs[32]), offline_rates, strict=True)]
        section.add(
            "service throughput at concurrency 32 / offline throughput",
            ratios,
            "x",
            "each service run over the offline run just before it",
        )
        section.goal(share, float(np.median(ratios)), ">=", GOAL_SHARE, "x")
    else:
        section.not_judged(share, "quick mode stops at concurrency 8")
    section.goal(
        f"service p95 latency at concurrency 1 <= offline batch-1 latency + {GOAL_EXTRA_MS:g} ms",
        by_level[1][4] - one["median"],
        "<=",
        GOAL_EXTRA_MS,
        "ms over offline",
    )
    section.goal(
        f"lungseg serve ready in < {GOAL_START_S:g} s (export cached)",
        server.ready_s,
        "<",
        GOAL_START_S,
        "s",
    )
    section.notes += [
        f"Input: {len(files)} real X-rays from {described}, sent cyclically.",
        "Offline: in this process, the model loaded as the service loads it "
        f"({MODEL} exported once to ONNX, ONNX Runtime, {threads or 'its default'} thread(s)); "
        f"{plan.repeats} rounds, each an offline pass then one run per concurrency level, so "
        "both meet the same load from other work.",
        f"Service: python -m lungseg serve --model {MODEL} (1 worker, micro-batching up to 16, "
        "5 ms wait while other requests are being decoded); an untimed warm-up of 2 requests "
        "per client first.",
    ]
    return section


class _Offline:
    """``lungseg segment``'s work in this process, with the model as the service loads it."""

    def __init__(self, ctx: Context, files: list[Path], cache: Path, threads: int | None) -> None:
        os.environ["LUNGSEG_CACHE_DIR"] = str(cache)  # the service finds the export here
        try:
            from lungseg.serve.loading import load_models
            from lungseg.serve.settings import ServeConfig

            self.segmenter = load_models(ServeConfig(models=(MODEL,), threads=threads))[
                MODEL
            ].segmenter
        finally:
            os.environ.pop("LUNGSEG_CACHE_DIR", None)
        self.files = files
        self.bodies = [path.read_bytes() for path in files]
        self.out = ctx.tmp / "serve-offline"

    def throughput(self) -> tuple[float, float]:
        """Images/s and CPU ms/image of :func:`lungseg.segment.segment_files` over the files,
        batch 8."""
        from lungseg.segment import segment_files

        start, cpu = time.perf_counter(), time.process_time()
        segment_files(self.segmenter, self.files, self.out, batch_size=8, progress=False)
        rate = len(self.files) / (time.perf_counter() - start)
        cpu_ms = 1000 * (time.process_time() - cpu) / len(self.files)
        shutil.rmtree(self.out, ignore_errors=True)
        return rate, cpu_ms

    def latencies(self) -> list[float]:
        """Milliseconds of one request's work on each file, one at a time (after a warm-up)."""
        from lungseg.inference import road

        times = []
        for data in [self.bodies[0], *self.bodies]:
            start = time.perf_counter()
            road.segment_bytes(data, "upload", self.segmenter)
            times.append((time.perf_counter() - start) * 1000)
        return times[1:]


@dataclass
class _Server:
    process: subprocess.Popen
    port: int
    ready_s: float


def _start(ctx: Context, cache: Path, threads: int | None) -> _Server:
    """``python -m lungseg serve`` on a free loopback port, timed to ``/readyz`` 200."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "lungseg", "serve", "--model", MODEL, "--port", str(port)]
    command += ["--threads", str(threads)] if threads else []
    env = {k: v for k, v in os.environ.items() if k != "LUNGSEG_API_KEY"}
    env["LUNGSEG_CACHE_DIR"] = str(cache)
    start = time.perf_counter()
    log = open(ctx.tmp / f"serve-{port}.log", "wb")  # noqa: SIM115 - the process holds it
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    while time.perf_counter() - start < 120:
        if process.poll() is not None:
            raise RuntimeError((ctx.tmp / f"serve-{port}.log").read_text()[-2000:])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return _Server(process, port, time.perf_counter() - start)
        except OSError:
            time.sleep(0.02)
        finally:
            conn.close()
    process.kill()
    raise RuntimeError("lungseg serve was not ready within 120 s")


def _stop(server: _Server) -> None:
    server.process.terminate()
    server.process.wait(30)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rates(runs: list[tuple[float, list, float]]) -> list[tuple[float, int]]:
    """``(requests/s, requests)`` of each timed run."""
    return [(len(answers) / wall, len(answers)) for wall, answers, _ in runs]


def _level(
    section: Section, level: int, runs: list, offline_rates: list[float], offline_cpu_ms: float
) -> list:
    """One concurrency level's figures, and its row of the table."""
    answers = [a for _, run_answers, _ in runs for a in run_answers]
    bad = sorted({status for status, _, _ in answers if status != 200})
    if bad:
        raise RuntimeError(f"requests failed at concurrency {level}: HTTP {bad}")
    rates = [rate for rate, _ in _rates(runs)]
    latencies = [ms for _, ms, _ in answers]
    section.add(f"service throughput, concurrency {level}", rates, "requests/s")
    section.add(f"service latency, concurrency {level}", latencies, "ms/request")
    cpu_ms = section.add(
        f"service CPU per image, concurrency {level}",
        [cpu for _, _, cpu in runs],
        "CPU ms/image",
        "the service process's CPU time over a run / images answered",
    )["median"]
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    rate = float(np.median(rates))
    return [
        level, len(answers), round(rate, 1), round(p50, 1), round(p95, 1), round(p99, 1),
        round(float(np.mean([size for _, _, size in answers])), 2),
        f"{rate / float(np.median(offline_rates)):.0%}", round(cpu_ms, 1),
        f"{cpu_ms / offline_cpu_ms:.2f}x",
    ]  # fmt: skip


def _clients(port, bodies, concurrency, total) -> tuple[float, list[tuple[int, float, int]]]:
    """``total`` requests from ``concurrency`` clients: wall seconds and, per request,
    ``(status, milliseconds, batch size)``."""
    counter = itertools.count()

    def client() -> list[tuple[int, float, int]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        done = []
        try:
            while (k := next(counter)) < total:
                start = time.perf_counter()
                conn.request("POST", "/v1/segment", body=bodies[k % len(bodies)])
                response = conn.getresponse()
                data = response.read()
                ms = (time.perf_counter() - start) * 1000
                size = json.loads(data)["batch_size"] if response.status == 200 else 0
                done.append((response.status, ms, size))
        finally:
            conn.close()
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [f.result() for f in [pool.submit(client) for _ in range(concurrency)]]
    return time.perf_counter() - start, [a for r in results for a in r]
