"""Resuming and sharding ``segment``: a run killed with SIGKILL is finished by the next one, which
does only the missing images; two shards under torchrun equal one process. Both end with
outputs byte-identical to an uninterrupted single run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from held import PATCH, kill_when
from lungseg.inference.segmenter import load_model
from lungseg.segment import segment_files
from lungseg.segment.shard import shard_of
from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def replicated(examples_dir: Path, folder: Path, copies: int) -> Path:
    """``copies`` x the 12 examples, as symbolic links in sub-folders ``c<k>/``."""
    for k in range(copies):
        (folder / f"c{k}").mkdir(parents=True)
        for source in sorted((examples_dir / "COVID" / "images").glob("*.png")):
            (folder / f"c{k}" / source.name).symlink_to(source)
    return folder


def ledger_rows(out: Path) -> list[dict[str, str]]:
    rows = []
    for path in sorted(out.glob("parts/*/*/*.csv")):
        with open(path, newline="") as fh:
            rows.extend({**row, "ledger": path.parent.name} for row in csv.DictReader(fh))
    return rows


def outputs(out: Path) -> dict[str, bytes]:
    """Every visible output file's bytes (the ledgers and run records aside)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
        and p.relative_to(out).parts[0] != "parts"
    }  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_run, examples_dir, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """36 images segmented by one uninterrupted run: ``(input folder, outputs)``."""
    root = tmp_path_factory.mktemp("reference")
    folder = replicated(examples_dir, root / "in", 3)
    out = root / "out"
    segment_files(load_model(tiny_run.run, device="cpu"), folder, out, progress=False)
    return folder, outputs(out)


def test_a_killed_run_is_finished_by_the_next(tiny_run, reference, tmp_path) -> None:
    folder, expected = reference
    # A read that never returns (a stalled network file system): listed before c2/, it keeps
    # the first run from ever reaching the last 12 images.
    held = folder / "c1-held" / "x.png"
    held.parent.mkdir()
    held.write_bytes(b"")
    out = tmp_path / "out"
    script = (
        f"{PATCH}"
        "from lungseg.inference.segmenter import load_model\n"
        "from lungseg.segment import segment_files\n"
        f"segment_files(load_model({str(tiny_run.run)!r}, device='cpu'), {str(folder)!r}, "
        f"{str(out)!r}, batch_size=4, ledger_rows=5, progress=False)\n"
    )
    try:
        kill_when(script, lambda: len(ledger_rows(out)) >= 10, "the first run recorded nothing")
    finally:
        held.unlink()
        held.parent.rmdir()
    recorded = {row["key"] for row in ledger_rows(out)}
    assert 10 <= len(recorded) <= 24
    assert not (out / "measurements.csv").exists()

    result = segment_files(load_model(tiny_run.run, device="cpu"), folder, out, progress=False)
    assert result.counts.skipped == len(recorded)
    # Only the images not recorded were read and went through the model.
    assert result.counts.read == result.counts.segmented == 36 - len(recorded)
    assert result.merged is not None and result.merged.n_segmented == 36
    assert outputs(out) == expected  # masks, measurements.csv and qc.json, byte for byte


def test_two_shards_under_torchrun_equal_one_process(tiny_run, reference, tmp_path, capsys):
    folder, expected = reference
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "lungseg", "segment", str(folder), "--out", str(out), "--weights",
         str(tiny_run.run), "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shard 0/2, from RANK/WORLD_SIZE (torchrun)" in done.stdout
    rows = ledger_rows(out)
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == 36, "no image done twice or missed"
    for row in rows:
        assert row["ledger"] == f"shard-{shard_of(row['key'], 2)}-of-2"
    assert {row["ledger"] for row in rows} == {"shard-0-of-2", "shard-1-of-2"}

    (out / "measurements.csv").unlink()  # the last shard merged; the documented step does too
    code, stdout, stderr = lungseg(["segment-merge", out], capsys)
    assert code == 0, stderr
    assert "merged 36 image(s)" in stdout and "not complete" not in stdout
    merged, alone = outputs(out), dict(expected)
    assert merged == alone  # masks, measurements.csv and qc.json, byte for byte
