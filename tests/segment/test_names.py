"""File and blob names that a file system allows but that break naive code: a carriage return,
255 bytes, bytes that are not UTF-8, ESC and BEL, a leading ``=``. Each gets a mask (or an
errors.csv row), the CSVs keep the original key, and neither a spreadsheet nor a terminal
interprets them."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = {
    "carriage return": b"cr\rname.png",
    "255 bytes": b"L" * 251 + b".png",
    "not UTF-8": b"latin1-\xe9\xff.png",
    "formula": b'=HYPERLINK("http:x").png',
    "plus": b"+1.png",
    "escape and bell": b"esc\x1b[31mred\x07.png",
    "plain": b"plain.png",
}


@pytest.fixture
def odd_names(examples_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    source = sorted((examples_dir / "COVID" / "images").glob("*.png"))[0]
    for name in NAMES.values():
        shutil.copyfile(source, os.path.join(os.fsencode(folder), name))
    return folder


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_every_name_gets_a_mask_and_a_row(tiny_run, odd_names, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["segment", odd_names, "--out", out, "--weights", tiny_run.run, "--device", "cpu"]
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    assert f"segmented {len(NAMES)} image(s)" in stdout
    for text in (stdout, stderr):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    measured = rows(out / "measurements.csv")
    assert not (out / "errors.csv").exists()
    assert len(measured) == len(NAMES)
    keys = {row["key"] for row in measured}
    assert "cr\rname.png" in keys and "L" * 251 + ".png" in keys  # the original key is kept
    assert "latin1-\\xe9\\xff.png" in keys  # bytes that are not UTF-8, escaped
    assert '\'=HYPERLINK("http:x").png' in keys and "'+1.png" in keys  # no live formula
    for row in measured:
        mask = out / row["mask"]
        assert mask.is_file(), row
        assert all(len(part.encode()) <= 255 for part in Path(row["mask"]).parts)
        assert not row["mask"].startswith(("=", "+", "-", "@"))
    # A rerun finds everything done; segment-merge rewrites the same tables.
    before = (out / "measurements.csv").read_bytes()
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    assert f"{len(NAMES)} done before" in stdout
    code, stdout, stderr = lungseg(["segment-merge", out], capsys)
    assert code == 0, stderr
    assert (out / "measurements.csv").read_bytes() == before


def test_an_error_row_keeps_its_name_and_one_line(tiny_run, examples_dir, tmp_path, capsys):
    """An unreadable file named with a carriage return and ESC: errors.csv keeps the key, and a
    problem of several lines (a decoder's own text) is one cell on one line."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad\r\x1b]0;title\x07.png").write_bytes(b"not an image")
    shutil.copyfile(sorted((examples_dir / "COVID" / "images").glob("*.png"))[0],
                    folder / "good.png")  # fmt: skip
    out = tmp_path / "out"
    argv = ["segment", folder, "--out", out, "--weights", tiny_run.run, "--device", "cpu"]
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    for text in (stdout, stderr):
        assert "\x1b" not in text and "\x07" not in text
    failed = rows(out / "errors.csv")
    assert [row["key"] for row in failed] == ["bad\r\x1b]0;title\x07.png"]


def test_a_problem_of_several_lines_is_one_cell_on_one_line(tmp_path) -> None:
    from lungseg.segment.ledger import Ledger, now, open_run
    from lungseg.segment.merge import merge
    from lungseg.segment.shard import Shard
    from lungseg.storage.sink import LocalSink

    sink = LocalSink(tmp_path / "out")
    sid = open_run(sink, {"model": "m"}, Shard(), overwrite=False)
    ledger = Ledger(sink, sid, Shard())
    ledger.add(
        {
            "key": "x.png",
            "file": "in/x.png",
            "version": "1",
            "status": "error",
            "done_at": now(),
            "problem": "cannot read image (line one\r\n  line two)",
        }
    )
    ledger.complete({})
    merge(sink)
    text = (tmp_path / "out" / "errors.csv").read_text(encoding="utf-8")
    assert text.splitlines()[1] == "x.png,in/x.png,cannot read image (line one line two)"


@pytest.mark.parametrize("inside", ["in", "in/seg", "in/sub/seg"])
def test_an_output_inside_the_input_is_refused(
    tiny_run, odd_names, tmp_path, capsys, inside
) -> None:
    from trained import assert_one_line_error

    argv = ["segment", odd_names, "--out", tmp_path / inside, "--weights", tiny_run.run]
    code, _, err = lungseg(argv, capsys)
    assert_one_line_error(code, err, "the output", "inside the input", "write into the dataset")
    assert sorted(os.listdir(odd_names)) == sorted(os.fsdecode(n) for n in NAMES.values())
