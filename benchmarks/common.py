"""What every benchmark shares: the run context, timing and statistics, memory peaks, goals,
the machine description, real data, the per-device JSON records and the BENCHMARKS.md writer
(its layout is ``templates/benchmarks.md.j2``).

A benchmark module exposes ``run(ctx: Context) -> Section``. A :class:`Section` holds figures
(each the median of repeated samples with its min-max spread and interquartile range), goals
judged PASS/MISS with their margin, small extra tables and notes. Sections are stored per device
in ``records/<device>.json`` and BENCHMARKS.md is rendered from all the records present, so a
run of one benchmark, or on another machine, replaces only its own part.
"""

from __future__ import annotations

import csv
import ctypes
import datetime
import gc
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: Committed records, one JSON file per device (``results/`` is git-ignored, hence the name).
RECORDS = REPO / "benchmarks" / "records"
SHARED_DATA = Path(os.environ.get("LUNGSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
EXAMPLES = REPO / "examples"
TEMPLATES = REPO / "benchmarks" / "templates"
#: Section name -> title, in the order BENCHMARKS.md shows them.
TITLES = {
    "prepare": "1. Preparation throughput",
    "train": "2. Training throughput, memory and epoch time",
    "infer": "3. Inference latency and throughput",
    "scaling": "4. Scaling: training with 1 and 2 processes (torchrun)",
    "segment": "5. Archive segmentation: lungseg segment end to end at full resolution",
    "serve": "6. lungseg serve under load, beside offline lungseg segment",
    "cli": "7. Command-line start-up",
    "node": "8. lungseg dicom-node: C-STORE in, SEG + SR back, beside offline lungseg segment",
}


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Context:
    """One invocation of ``python -m benchmarks``.

    Attributes:
        quick: tiny sizes and single repeats, to check that everything runs (not a measurement).
        device: ``cpu`` or ``cuda``: where the models run, and the record the figures go to.
        tmp: scratch folder, removed at the end.
        shared_data: ``../shared/data`` (``covid-cxr`` inside), or ``None`` where it is absent.
        command: the exact command line, for the record.
        threads: CPU threads for PyTorch and ONNX Runtime; ``None``: each benchmark's own
            setting (the engine's default, or 2 for inference). Quick mode uses 1: on a loaded
            machine, OpenMP threads that compete for the cores are far slower.
        baseline: a commit whose training-loop overheads are measured beside this checkout's.
    """

    quick: bool
    device: str
    tmp: Path
    shared_data: Path | None
    command: str
    threads: int | None = None
    baseline: str | None = None
    _prepared: dict[tuple, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    @property
    def device_label(self) -> str:
        """``cpu`` or ``cuda (GPU name)``: stamped on every figure."""
        if self.device == "cuda":
            import torch

            return f"cuda ({torch.cuda.get_device_name(0)})"
        return "cpu"

    def sync(self) -> None:
        """Wait for queued GPU work, so wall-clock timings cover it."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def real_data(self) -> tuple[Path, str]:
        """The real dataset to measure on: the shared COVID set, else the bundled examples."""
        if self.shared_data is not None and (self.shared_data / "covid-cxr").is_dir():
            return self.shared_data / "covid-cxr", "shared covid-cxr (355 real pairs)"
        return EXAMPLES, "examples/ (12 real pairs; the shared data is absent here)"

    def prepared(self, size: int, limit: int | None = None, copies: int = 1):
        """The real dataset (its first ``limit`` pairs, ``copies`` times) prepared at ``size``.

        Prepared once per run with the default preset and kept for the other benchmarks.
        """
        from lungseg.data.cache import prepare
        from lungseg.data.preprocessing import PreprocessConfig
        from lungseg.data.settings import PrepareConfig

        key = (size, limit, copies)
        if key not in self._prepared:
            src, _ = self.real_data()
            tag = f"{size}-{limit or 'all'}-x{copies}"
            if limit is not None or copies > 1:
                src = replicate(src, self.tmp / f"set-{tag}", copies, limit)
            config = PrepareConfig(PreprocessConfig.from_preset("seed", size))
            self._prepared[key] = prepare(src, self.tmp / f"cache-{tag}", config, progress=False)
        return self._prepared[key]


def replicate(src: Path, dst: Path, copies: int, limit: int | None = None) -> Path:
    """Make a dataset folder of ``copies`` x the pairs of ``src`` (the first ``limit`` of each
    class folder) as symbolic links with renamed stems (``<stem>~<k>``), with a matching
    METADATA.csv so replicas keep their patient (the split stays grouped).

    Returns:
        ``dst``.
    """
    meta_rows: list[dict[str, str]] = []
    meta_file = src / "METADATA.csv"
    meta = {}
    fields: list[str] = []
    if meta_file.is_file():
        with open(meta_file, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            meta = {row["stem"]: row for row in reader}
    for images in sorted(src.glob("*/images")):
        cls = images.parent.name
        masks = images.parent / "masks"
        files = sorted(p for p in images.iterdir() if not p.name.startswith("."))[:limit]
        for kind in ("images", "masks"):
            (dst / cls / kind).mkdir(parents=True, exist_ok=True)
        for image in files:
            mask = next(iter(sorted(masks.glob(f"{image.stem}.*"))), None)
            if mask is None:
                continue
            for k in range(copies):
                stem = f"{image.stem}~{k}"
                (dst / cls / "images" / f"{stem}{image.suffix}").symlink_to(image.resolve())
                (dst / cls / "masks" / f"{stem}{mask.suffix}").symlink_to(mask.resolve())
                if image.stem in meta:
                    meta_rows.append({**meta[image.stem], "stem": stem})
    if meta_rows:
        with open(dst / "METADATA.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(meta_rows)
    return dst


def tile(array: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` items of ``array`` repeated cyclically: ``[N, ...] -> [n, ...]``."""
    return np.ascontiguousarray(np.asarray(array)[np.arange(n) % len(array)])


# -- timing and statistics -----------------------------------------------------------------


def repeat(
    fn: Callable[[], Any],
    *,
    repeats: int,
    warmup: int = 1,
    min_seconds: float = 0.0,
    max_repeats: int | None = None,
    sync: Callable[[], None] | None = None,
) -> list[float]:
    """Wall-clock seconds of ``fn()`` calls after ``warmup`` untimed ones.

    Runs at least ``repeats`` times and on until ``min_seconds`` have been timed, at most
    ``max_repeats`` times. ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock read.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    cap = max(repeats, max_repeats or repeats)
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < cap):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def stats(samples: Sequence[float]) -> dict[str, float]:
    """Median, min, max, quartiles and count of ``samples``."""
    arr = np.asarray(samples, dtype=float)
    q1, median, q3 = np.percentile(arr, [25, 50, 75])
    return {
        "median": float(median),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "q1": float(q1),
        "q3": float(q3),
        "n": len(arr),
    }


def ratio_stats(num: dict[str, float], den: dict[str, float]) -> dict[str, float]:
    """``num / den`` of two :func:`stats`: ratio of the medians, spread from the extremes."""
    return {
        "median": num["median"] / den["median"],
        "min": num["min"] / den["max"],
        "max": num["max"] / den["min"],
        "q1": num["q1"] / den["q3"],
        "q3": num["q3"] / den["q1"],
        "n": min(num["n"], den["n"]),
    }


def invert_stats(rate: dict[str, float], k: float) -> dict[str, float]:
    """``k / x`` of a :func:`stats` dict (e.g. a time from a throughput): the order flips."""
    return {
        "median": k / rate["median"],
        "min": k / rate["max"],
        "max": k / rate["min"],
        "q1": k / rate["q3"],
        "q3": k / rate["q1"],
        "n": rate["n"],
    }


# -- memory --------------------------------------------------------------------------------


def release_memory() -> None:
    """Return freed memory to the OS, so the next model's peak starts from a clean baseline."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline is only less tight
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakMemory:
    """Peak memory of the code inside ``with``, above what was in use when it started.

    On CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). On the CPU: the process's
    resident set, sampled every 2 ms by a thread (torch releases the GIL in its kernels), so it
    counts every allocation (tensors, allocator slack, libraries' buffers).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        release_memory()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = rss_bytes()
            self._top = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._top = max(self._top, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._top, rss_bytes()) - self._base

    @property
    def what(self) -> str:
        if self.device == "cuda":
            return "torch.cuda.max_memory_allocated above the data already on the GPU"
        return "peak resident memory (RSS, sampled every 2 ms) above the process's before"


# -- sections, figures, goals -----------------------------------------------------------------


@dataclass
class Section:
    """The result of one benchmark on one device."""

    name: str
    ctx: Context
    figures: list[dict[str, Any]] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        figure: str,
        samples: Sequence[float] | dict[str, float],
        unit: str,
        note: str = "",
        device: str | None = None,
    ) -> dict[str, Any]:
        """Record a figure from raw samples (or a ready :func:`stats` dict)."""
        summary = samples if isinstance(samples, dict) else stats(samples)
        row = {
            "figure": figure,
            "unit": unit,
            **summary,
            "device": device or self.ctx.device_label,
            "note": note,
        }
        self.figures.append(row)
        self.ctx.log(f"{figure}: {fmt(row['median'])} {unit} ({spread(row)})")
        return row

    def goal(self, text: str, value: float, op: str, target: float, unit: str) -> None:
        """Judge ``value op target`` (``>=``, ``<=`` or ``<``) on the median; PASS or MISS."""
        ok = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
        times = value / target if op == ">=" else target / value  # > 1: better than asked
        if ok:
            margin = f"{(times - 1) * 100:+.0f}% better than the goal"
        else:
            margin = f"{times:.2f}x of the goal; needs {1 / times:.1f}x"
        self.goals.append(
            {
                "goal": text,
                "measured": f"{fmt(value)} {unit}",
                "target": f"{op} {fmt(target)} {unit}",
                "verdict": "PASS" if ok else "MISS",
                "margin": margin,
                "device": self.ctx.device_label,
            }
        )

    def not_judged(self, text: str, reason: str) -> None:
        """A goal that this device does not decide (it is about another device)."""
        self.goals.append(
            {
                "goal": text,
                "measured": "",
                "target": "",
                "verdict": "not judged",
                "margin": reason,
                "device": self.ctx.device_label,
            }
        )

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append({"title": title, "columns": columns, "rows": rows})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": TITLES[self.name],
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": self.ctx.command,
            "quick": self.ctx.quick,
            "machine": machine_info(self.ctx.device),
            "load_average": _loadavg(),
            "figures": self.figures,
            "goals": self.goals,
            "tables": self.tables,
            "notes": self.notes,
        }


def fmt(value: float) -> str:
    """A figure with about three significant digits and thousands separators."""
    if value != value:  # NaN
        return "n/a"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def spread(row: dict[str, Any]) -> str:
    if row["n"] <= 1:
        return "single run"
    return f"{fmt(row['min'])}–{fmt(row['max'])}, IQR {fmt(row['q1'])}–{fmt(row['q3'])}"


# -- machine -----------------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, cores, memory, GPU and library versions of this machine."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }
    import torch

    from lungseg.core.devices import physical_cores

    info["physical_cores"] = physical_cores()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{torch.cuda.device_count()} x {props.name}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    info["versions"] = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": _version("opencv-python-headless", "opencv-python", module="cv2"),
        "onnxruntime": _version("onnxruntime", "onnxruntime-gpu", module="onnxruntime"),
        "monai": _version("monai"),
        "lungseg": _version("lungseg", module="lungseg"),
    }
    return info


def _version(*dists: str, module: str | None = None) -> str:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if module is not None:  # e.g. lungseg on PYTHONPATH, not installed
        try:
            return str(__import__(module).__version__)
        except (ImportError, AttributeError):
            pass
    return "absent"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# -- records and BENCHMARKS.md -----------------------------------------------------------------


def save_section(records: Path, device: str, section: dict[str, Any]) -> Path:
    """Put ``section`` into ``records/<device>.json``, keeping that device's other sections."""
    from lungseg.core.io_utils import atomic_write_text

    path = records / f"{device}.json"
    record = load_records(records).get(device, {"device": device, "sections": {}})
    record["sections"][section["name"]] = section
    record["sections"] = {k: record["sections"][k] for k in TITLES if k in record["sections"]}
    records.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return path


def load_records(records: Path) -> dict[str, dict[str, Any]]:
    """Every ``<device>.json`` in ``records``, by device."""
    out = {}
    for path in sorted(records.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        out[record["device"]] = record
    return out


def render(records: dict[str, dict[str, Any]], records_dir: str) -> str:
    """BENCHMARKS.md from all devices' records (``templates/benchmarks.md.j2``)."""
    from lungseg.core.render import render as render_template

    machines: list[dict[str, Any]] = []
    for record in records.values():
        for section in record["sections"].values():
            if section["machine"] not in machines:
                machines.append(section["machine"])
    filters = {"number": fmt, "spread": spread, "describe": _describe}
    return render_template("benchmarks.md.j2", TEMPLATES, filters=filters, records=records,
                           records_dir=records_dir, machines=machines, titles=TITLES)  # fmt: skip


def _describe(m: dict[str, Any]) -> str:
    parts = [
        f"{m['cpu']}, {m.get('physical_cores')} physical cores ({m['logical_cpus']} logical, "
        f"{m.get('usable_cpus')} usable), {m['memory_gib']} GiB memory"
    ]
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']} ({m['gpu_memory_gib']} GiB, CUDA {m['cuda']})")
    parts.append(f"{m['os']}, Python {m['python']}")
    parts.append(", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    return "; ".join(parts)


def print_section(section: dict[str, Any]) -> None:
    """The section's figures and goals as a plain table on stdout."""
    print(f"\n{section['title']} — {section['machine'].get('gpu') or section['machine']['cpu']}")
    width = max((len(r["figure"]) for r in section["figures"]), default=10)
    for row in section["figures"]:
        print(
            f"  {row['figure']:<{width}}  {fmt(row['median']):>9} {row['unit']:<10} "
            f"[{spread(row)}]  {row['device']}"
        )
    for g in section["goals"]:
        if g["measured"]:
            result = f"{g['measured']} ({g['target']}); {g['margin']}"
            print(f"  GOAL {g['verdict']}: {g['goal']}: {result}")
        else:
            print(f"  GOAL {g['verdict']}: {g['goal']} ({g['margin']})")
    for table in section["tables"]:
        print(f"  {table['title']}:")
        print("    " + " | ".join(table["columns"]))
        for row in table["rows"]:
            print("    " + " | ".join(str(c) for c in row))
    for note in section["notes"]:
        print(f"  note: {note}")
    sys.stdout.flush()
