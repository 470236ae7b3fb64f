"""qc.json and the CLI's "flagged" line: the worst masks first (not the first keys A-Z), and the
same qc.json however the work was sharded."""

from __future__ import annotations

import json
from pathlib import Path

from lungseg.segment.ledger import Ledger, now, open_run
from lungseg.segment.merge import merge
from lungseg.segment.shard import Shard
from lungseg.storage.sink import LocalSink
from trained import lungseg

#: ``key -> uncertain_fraction``; every mask is flagged; the worst come last alphabetically.
UNCERTAIN = {f"{chr(ord('a') + i)}.png": 0.3 + 0.1 * i for i in range(8)}


def row(key: str) -> dict[str, object]:
    u = UNCERTAIN[key]
    return {"key": key, "file": f"in/{key}", "version": "1", "status": "ok", "done_at": now(),
            "problem": "", "mask": f"masks/{key}.png", "height": 8, "width": 8, "lung_px": 20,
            "lung_fraction": 0.3125, "right_lung_px": 10, "left_lung_px": 10,
            "uncertain_fraction": f"{u:.6f}", "review": f"uncertain ({u:.3f} > 0.2)"}  # fmt: skip


def output(root: Path, shards: int) -> LocalSink:
    sink = LocalSink(root)
    for index in range(shards):
        shard = Shard(index, shards)
        sid = open_run(sink, {"model": "m"}, shard, overwrite=False)
        ledger = Ledger(sink, sid, shard)
        for key in UNCERTAIN:
            if shard.owns(key):
                ledger.add(row(key))
        ledger.complete({})
    return sink


def test_flagged_masks_are_listed_worst_first(tmp_path, capsys) -> None:
    sink = output(tmp_path / "out", 1)
    merged = merge(sink, top=3)
    assert [key for key, _ in merged.flagged] == ["h.png", "g.png", "f.png"]
    qc = json.loads((tmp_path / "out" / "qc.json").read_text())
    assert [m["key"] for m in qc["flagged_worst_first"]] == ["h.png", "g.png", "f.png"]
    code, stdout, stderr = lungseg(["segment-merge", tmp_path / "out"], capsys)
    assert code == 0, stderr
    line = next(line for line in stdout.splitlines() if "flagged for review" in line)
    assert line.index("h.png") < line.index("g.png") < line.index("f.png"), line
    assert "a.png" not in line and "and 5 more" in line


def test_qc_json_is_the_same_however_the_work_was_sharded(tmp_path) -> None:
    one, three = output(tmp_path / "one", 1), output(tmp_path / "three", 3)
    merge(one)
    merge(three)
    assert (tmp_path / "one" / "qc.json").read_bytes() == (
        tmp_path / "three" / "qc.json"
    ).read_bytes()
    assert (tmp_path / "one" / "measurements.csv").read_bytes() == (
        tmp_path / "three" / "measurements.csv"
    ).read_bytes()
