"""Issue 24, ``segment`` on archives under a hostile hand: a shard count of 10^23, named pipes
and devices dressed as images, a run that hangs on a read and is told to stop, damaged ledgers.
Each runs in a child process with its address space capped and a timeout."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hostile import STEM, capped_child, copy_examples, error_line, run_capped

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_image(examples_dir: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copyfile(examples_dir / "COVID" / "images" / f"{STEM}.png", folder / "good.png")
    return folder


def errors(out: Path) -> dict[str, str]:
    with open(out / "errors.csv", newline="", encoding="utf-8") as fh:
        return {row["key"]: row["problem"] for row in csv.DictReader(fh)}


def test_a_huge_shard_count_is_refused(tiny_run, examples_dir, tmp_path) -> None:
    folder = one_image(examples_dir, tmp_path / "in")
    code, _, err = run_capped(["segment", folder, "--out", tmp_path / "out", "--weights",
                               tiny_run.run, "--shard", "0/99999999999999999999999"])  # fmt: skip
    error_line(code, err, "segment", "--shard", "at most")


def test_a_huge_shard_folder_does_not_stop_the_merge(tiny_run, examples_dir, tmp_path) -> None:
    folder = one_image(examples_dir, tmp_path / "in")
    out = tmp_path / "out"
    code, _, err = run_capped(["segment", folder, "--out", out, "--weights", tiny_run.run])
    assert code == 0, err
    (part,) = out.glob("parts/*")
    (part / "shard-0-of-1" / "complete.json").unlink()  # the merge then looks for a sharding
    (part / "shard-0-of-99999999999999999999999").mkdir()
    (part / "shard-0-of-99999999999999999999999" / "complete.json").write_text("{}\n")
    code, stdout, err = run_capped(["segment-merge", out])
    assert code == 0, err
    assert "merged 1 image(s)" in stdout and "not complete" in stdout


def test_pipes_and_devices_named_png_are_error_rows(tiny_run, examples_dir, tmp_path) -> None:
    """A FIFO would block the reader forever, /dev/zero would fill memory: both are refused
    before a byte is read, and the run goes on."""
    folder = one_image(examples_dir, tmp_path / "in")
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "random.png").symlink_to("/dev/urandom")
    out = tmp_path / "out"
    code, stdout, err = run_capped(["segment", folder, "--out", out, "--weights", tiny_run.run],
                                   timeout=90)  # fmt: skip
    assert code == 0, err
    assert "segmented 1 image(s)" in stdout
    found = errors(out)
    assert sorted(found) == ["fifo.png", "random.png", "zero.png"]
    assert all("not a regular file" in problem for problem in found.values()), found


def test_prepare_refuses_a_pipe_named_png(examples_dir, tmp_path) -> None:
    data = copy_examples(examples_dir, tmp_path / "data")
    image = data / "COVID" / "images" / f"{STEM}.png"
    image.unlink()
    os.mkfifo(image)
    code, _, err = run_capped(["prepare", "--data", data, "--out", tmp_path / "cache", "--size",
                               "64"], timeout=90)  # fmt: skip
    assert code == 2, err
    assert "not a regular file" in err and f"{STEM}.png" in err, err
    assert "Traceback" not in err


def test_sigterm_ends_a_run_stuck_on_a_read(tiny_run, examples_dir, tmp_path) -> None:
    """A read that never returns (a stalled network file system): SIGTERM records what was
    done, says so, and the process ends (the stuck thread does not keep it alive)."""
    folder = one_image(examples_dir, tmp_path / "in")
    shutil.copyfile(folder / "good.png", folder / "stuck.png")
    marker = tmp_path / "stuck"
    before = (
        "import threading, pathlib\n"
        "from lungseg.segment.inputs import LocalInputs\n"
        "read = LocalInputs.read\n"
        "def stuck(self, item):\n"
        "    if item.key == 'stuck.png':\n"
        f"        pathlib.Path({str(marker)!r}).touch()\n"
        "        threading.Event().wait()\n"
        "    return read(self, item)\n"
        "LocalInputs.read = stuck\n"
    )
    argv = ["segment", folder, "--out", tmp_path / "out", "--weights", tiny_run.run]
    child = subprocess.Popen(capped_child(argv, before), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the run never reached the stuck read"
            time.sleep(0.05)
        time.sleep(0.3)
        child.send_signal(signal.SIGTERM)
        try:
            _, err = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the process did not end within 20 s of SIGTERM")
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err


@pytest.mark.parametrize("damage", ["cut mid-row", "garbage value"])
def test_a_damaged_ledger_is_one_line_and_its_images_are_redone(
    tiny_run, examples_dir, tmp_path, capsys, damage
) -> None:
    from trained import lungseg

    folder = tmp_path / "in"
    shutil.copytree(examples_dir / "COVID" / "images", folder)
    out = tmp_path / "out"
    argv = ["segment", folder, "--out", out, "--weights", tiny_run.run, "--device", "cpu"]
    code, _, err = lungseg(argv, capsys)
    assert code == 0, err
    expected = (out / "measurements.csv").read_bytes()
    (ledger,) = out.glob("parts/*/shard-0-of-1/000000.csv")
    text = ledger.read_text(encoding="utf-8")
    if damage == "cut mid-row":
        ledger.write_text(text[: len(text) - 40], encoding="utf-8")
    else:
        lines = text.splitlines(keepends=True)
        cells = lines[2].split(",")
        cells[lines[0].split(",").index("uncertain_fraction")] = "abc"
        ledger.write_text("".join([*lines[:2], ",".join(cells), *lines[3:]]), encoding="utf-8")

    code, _, err = lungseg(["segment-merge", out], capsys)
    error_line(code, err, "segment-merge", "damaged ledger file", "000000.csv",
               "lungseg segment again")  # fmt: skip

    code, stdout, err = lungseg(argv, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "damaged ledger file" in line] == [
        line for line in err.splitlines() if "000000.csv" in line
    ] and "removed, its images are done again" in err, err
    assert "segmented 12 image(s)" in stdout
    assert (out / "measurements.csv").read_bytes() == expected


def test_prepare_takes_a_name_that_is_not_utf8(examples_dir, tmp_path, capsys) -> None:
    from trained import lungseg

    data = copy_examples(examples_dir, tmp_path / "data")
    for folder in ("images", "masks"):
        os.rename(data / "COVID" / folder / f"{STEM}.png",
                  os.path.join(os.fsencode(data / "COVID" / folder), b"x\xff.png"))  # fmt: skip
    out = tmp_path / "cache"
    argv = ["prepare", "--data", data, "--out", out, "--size", 64, "--workers", 1]
    code, stdout, err = lungseg(argv, capsys)
    assert code == 0, err
    assert "prepared 12 images" in stdout
    assert "x\\xff.png" in (out / "split.csv").read_text(encoding="utf-8")
