"""``python -m benchmarks``: the quick mode runs every benchmark end to end, and the records of
several runs and devices merge into one BENCHMARKS.md."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lungseg.data.dataset import discover
from lungseg.storage.sources import LocalSource

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not installed
    sys.path.insert(0, str(REPO))

from benchmarks.__main__ import main  # noqa: E402
from benchmarks.common import (  # noqa: E402
    SHARED_DATA,
    TITLES,
    Context,
    Section,
    invert_stats,
    load_records,
    ratio_stats,
    render,
    replicate,
    save_section,
    stats,
)


@pytest.mark.slow
def test_quick_run_writes_every_section_with_numbers(tmp_path):
    out, records = tmp_path / "BENCHMARKS.md", tmp_path / "records"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out),
         "--records", str(records)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    text = out.read_text()
    for title in TITLES.values():
        assert f"## {title}" in text
    assert "Not measured yet" not in text
    assert "Quick mode" in text
    assert "unet-fast: latency, batch 1, ONNX Runtime" in text  # shipped variants are timed too
    cells = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    figures = [row for row in cells if len(row) == 7 and row[2] in ("images/s", "ms/image")]
    assert len(figures) > 20
    assert all(re.fullmatch(r"[\d,.]+", row[1]) for row in figures), figures

    record = json.loads((records / "cpu.json").read_text())
    assert list(record["sections"]) == list(TITLES)
    for section in record["sections"].values():
        assert section["figures"], section["name"]
        for figure in section["figures"]:
            assert math.isfinite(figure["median"]) and figure["median"] > 0, figure
        assert section["machine"]["versions"]["torch"]
    goals = {g["goal"]: g["verdict"] for s in record["sections"].values() for g in s["goals"]}
    assert any("600 images/s" in g and v in ("PASS", "MISS") for g, v in goals.items())
    assert any("8 ms/image" in g and v in ("PASS", "MISS") for g, v in goals.items())
    assert all(v == "not judged" for g, v in goals.items() if "H100" in g or "GPU" in g)

    used = "shared covid-cxr" if (SHARED_DATA / "covid-cxr").is_dir() else "examples/"
    assert used in text, "the data the figures came from must be named"


def _section(tmp_path, name: str, value: float) -> dict:
    ctx = Context(quick=False, device="cpu", tmp=tmp_path, shared_data=None, command="cmd")
    section = Section(name, ctx)
    section.add("speed", [value, value * 2, value * 3], "images/s")
    section.goal("fast enough", value * 2, ">=", 10.0, "images/s")
    return section.to_dict()


def test_inference_times_the_study_networks_and_what_ships():
    from benchmarks.infer_bench import timed_models

    from lungseg.inference.segmenter import load_model
    from lungseg.models import create_model, list_models
    from lungseg.models.shipped import SHIPPED_MODELS

    models = timed_models()
    assert all(models[name] == (name, {}) for name in list_models())
    for name in SHIPPED_MODELS:
        shipped = load_model(name, device="cpu").networks[0][0].model
        timed = [create_model(arch, **kw) for arch, kw in models.values()]
        # Some timed network has the shipped one's architecture and every parameter shape.
        shapes = {k: v.shape for k, v in shipped.state_dict().items()}
        assert any({k: v.shape for k, v in net.state_dict().items()} == shapes for net in timed), (
            name
        )


def test_records_merge_across_runs_and_devices(tmp_path):
    records = tmp_path / "records"
    save_section(records, "cpu", _section(tmp_path, "prepare", 100.0))
    save_section(records, "cpu", _section(tmp_path, "train", 5.0))
    gpu = _section(tmp_path, "train", 3000.0)
    gpu["machine"] = {**gpu["machine"], "gpu": "1 x NVIDIA H100", "gpu_memory_gib": 80}
    gpu["machine"]["cuda"] = "13.0"
    save_section(records, "cuda", gpu)
    # A later run of one benchmark replaces that section only.
    save_section(records, "cpu", _section(tmp_path, "train", 7.0))

    loaded = load_records(records)
    assert set(loaded) == {"cpu", "cuda"}
    assert list(loaded["cpu"]["sections"]) == ["prepare", "train"]
    assert loaded["cpu"]["sections"]["train"]["figures"][0]["median"] == 14.0
    text = render(loaded, "records")
    assert "### On cpu (M1)" in text and "### On cuda (M2)" in text
    assert "1 x NVIDIA H100" in text
    assert text.count("Not measured yet") == 6  # infer, scaling, segment, serve, cli and node
    assert "| speed | 6,000 | images/s | 3,000–9,000" in text

    out = tmp_path / "BENCHMARKS.md"
    assert main(["--render", "--out", str(out), "--records", str(records)]) == 0
    assert out.read_text().splitlines()[4:] == text.splitlines()[4:]  # the records path differs


def test_goal_verdicts_and_margins(tmp_path):
    ctx = Context(quick=False, device="cpu", tmp=tmp_path, shared_data=None, command="cmd")
    section = Section("infer", ctx)
    section.goal("throughput", 300.0, ">=", 600.0, "images/s")
    section.goal("latency", 4.0, "<=", 8.0, "ms")
    section.goal("time", 6.0, "<", 5.0, "min")
    verdicts = [(g["verdict"], g["margin"]) for g in section.goals]
    assert verdicts[0] == ("MISS", "0.50x of the goal; needs 2.0x")
    assert verdicts[1] == ("PASS", "+100% better than the goal")
    assert verdicts[2][0] == "MISS"


def test_stats_ratios_and_inverses():
    s = stats([4.0, 1.0, 3.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 4.0, 4)
    r = ratio_stats(stats([10.0, 20.0]), stats([2.0, 5.0]))
    assert (r["median"], r["min"], r["max"]) == (15.0 / 3.5, 2.0, 10.0)
    t = invert_stats(stats([100.0, 200.0]), 1000.0)
    assert (t["min"], t["max"], t["median"]) == (5.0, 10.0, 1000.0 / 150.0)


def test_replicate_renames_stems_and_keeps_patients(examples_dir, tmp_path):
    out = replicate(examples_dir, tmp_path / "set", copies=3, limit=4)
    found = discover(LocalSource(out))
    assert not found.problems
    assert len(found.records) == 12
    assert len({r.stem for r in found.records}) == 12
    by_image = {}
    for r in found.records:
        by_image.setdefault(r.stem.split("~")[0], set()).add(r.patient_id)
    assert len(by_image) == 4 and all(len(ids) == 1 for ids in by_image.values())
