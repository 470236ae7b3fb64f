"""Issue 24, item 12: ``--overwrite`` on one shard replaces every shard's outputs of the old
settings (no mask of another model left under a segment.json that names the new one), and two
shardings of one output never run at the same time."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lungseg.core.errors import LungsegError
from lungseg.inference.segmenter import load_model
from lungseg.segment import segment_files
from lungseg.storage.sink import LocalSink

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def recorded_masks(out: Path) -> set[str]:
    sid = json.loads((out / "segment.json").read_text())["settings_id"]
    masks = set()
    for path in (out / "parts" / sid).glob("*/*.csv"):
        with open(path, newline="") as fh:
            masks |= {row["mask"] for row in csv.DictReader(fh) if row["mask"]}
    return masks


def test_overwrite_on_one_shard_leaves_no_mask_of_other_settings(
    tiny_run, examples_dir, tmp_path
) -> None:
    images, out = examples_dir / "COVID" / "images", tmp_path / "out"
    first = load_model(tiny_run.run, device="cpu", postprocess="none")
    segment_files(first, images, out, shard="0/2", progress=False)
    assert list((out / "masks").glob("*.png"))

    second = load_model(tiny_run.run, device="cpu", postprocess="clean")
    result = segment_files(second, images, out, shard="1/2", overwrite=True, progress=False)
    assert result.counts.segmented > 0
    found = {p.relative_to(out).as_posix() for p in (out / "masks").rglob("*.png")}
    assert found == recorded_masks(out)  # every mask there is one the new settings made
    manifest = json.loads((out / "segment.json").read_text())
    assert manifest["settings"]["postprocess"]["keep_largest"] is True


def test_two_shardings_never_run_together(tiny_run, examples_dir, tmp_path) -> None:
    images, out = examples_dir / "COVID" / "images", tmp_path / "out"
    model = load_model(tiny_run.run, device="cpu")
    with LocalSink(out).lock(".locks/shard-0-of-2", "segment"):
        with pytest.raises(LungsegError, match="another lungseg segment runs on this output"):
            segment_files(model, images, out, shard="0/1", progress=False)
        # A shard of the same count may run beside it.
        segment_files(model, images, out, shard="1/2", progress=False)
    assert not list(out.glob("parts/*/shard-0-of-1"))
