"""Defect 4: an output that cannot be written is one line naming the path, in every command.

A read-only ``--out`` used to give a Python traceback in prepare, train, segment, evaluate and
export. Each command here writes into a place where writing fails for a reason a user can cause,
and must answer with one ``error:`` line naming the path and the problem, exit 2, and leave no
temporary or half-written file:

* ``under-a-file``: the output's parent is a regular file (``Not a directory``; works as root);
* ``read-only``: a read-only tmpfs (``Read-only file system``);
* ``full``: a 64 KiB tmpfs filled up (``No space left on device``).

The two tmpfs kinds need ``mount`` (root, or a container that allows it) and are skipped with
the reason elsewhere; :func:`test_file_size_limit` covers the full-disk path anywhere, with
``RLIMIT_FSIZE``, including PyTorch's own error for a failed checkpoint write.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_hostile_hints import command_flags

from hostile import STEM, error_line
from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = {
    "under-a-file": "Not a directory",
    "read-only": "Read-only file system",
    "full": "No space left on device",
}

#: Commands that write no local file, and why.
WRITES_NOTHING = {
    "models": "prints a table",
    "upload": "writes to Azure Blob Storage only (its errors are tested in tests/azure)",
    "serve": "keeps uploads in memory; an unwritable ONNX export cache falls back to a "
    "temporary folder (tests/serve/test_loading.py)",
}


def _cases(tiny_run, examples: Path) -> dict[str, tuple[str, Callable[[Path], list]]]:
    """``{case: (command, argv for an output folder)}``: every command that writes files."""
    image = examples / "COVID" / "images" / f"{STEM}.png"
    return {
        "prepare": ("prepare", lambda out: ["prepare", "--data", examples, "--out", out,
                                            "--size", 64, "--workers", 1]),
        "train": ("train", lambda out: ["train", "--model", "unet", "--data", tiny_run.cache,
                                        "--out", out, "--epochs", 1, "--n-filters", 4,
                                        "--threads", 1, "--device", "cpu"]),
        "evaluate": ("evaluate", lambda out: ["evaluate", "--run", tiny_run.run, "--out", out,
                                              "--save-masks"]),
        "compare": ("compare", lambda out: ["compare", "--data", examples, "--out", out,
                                            "--models", "unet", "--epochs", 1, "--size", 64]),
        "compare --from-runs": ("compare", lambda out: ["compare", "--out", out, "--from-runs",
                                                        tiny_run.run]),
        "segment": ("segment", lambda out: ["segment", image, "--out", out, "--weights",
                                            tiny_run.run]),
        "export": ("export", lambda out: ["export", "--model", tiny_run.checkpoint,
                                          "--onnx", out / "model.onnx"]),
        # The node's output is its spool: refused before it listens or loads a model.
        "dicom-node": ("dicom-node", lambda out: ["dicom-node", "--spool", out, "--allow",
                                                  "PACS@127.0.0.1", "--send-to",
                                                  "PACS@127.0.0.1:1", "--port", 1,
                                                  "--model", tiny_run.run]),
    }  # fmt: skip


CASES = [
    "prepare",
    "train",
    "evaluate",
    "compare",
    "compare --from-runs",
    "segment",
    "export",
    "dicom-node",
]


def _mount(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); under-a-file still runs")


def _unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path) -> None:
    """Write until the file system is full."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.fixture
def blocked(request, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(base, out)``: ``out`` cannot be written for the reason ``request.param`` names."""
    kind = request.param
    if kind == "under-a-file":
        base = tmp_path / "a-file"
        base.write_text("not a folder\n")
        yield base, base / "out"
        return
    base = tmp_path / "mnt"
    _mount(base, "ro,size=64k" if kind == "read-only" else "size=64k")
    try:
        if kind == "full":
            _fill(base)
        yield base, base / "out"
    finally:
        _unmount(base)


def _leftovers(base: Path) -> list[str]:
    if not base.is_dir():
        return []
    return sorted(str(p) for p in base.rglob("*") if p.name.endswith((".tmp", ".part")))


@pytest.mark.parametrize("blocked", list(KINDS), indirect=True)
@pytest.mark.parametrize("case", CASES)
def test_unwritable_output_is_one_line(
    case: str, blocked: tuple[Path, Path], request, tiny_run, examples_dir: Path, capsys
) -> None:
    base, out = blocked
    command, argv = _cases(tiny_run, examples_dir)[case]
    code, _, err = lungseg(argv(out), capsys)
    problem = KINDS[request.node.callspec.params["blocked"]]
    error_line(code, err, command, str(base), problem)
    assert _leftovers(base) == []
    assert not (out / "prepare.yaml").exists() and not (out / "summary.json").exists()


def test_every_command_that_writes_is_covered(tiny_run, examples_dir: Path) -> None:
    covered = {command for command, _ in _cases(tiny_run, examples_dir).values()}
    covered |= {"cache", "segment-merge"}  # tested on their own below
    assert covered | set(WRITES_NOTHING) == set(command_flags())


def test_clearing_a_read_only_download_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    """``lungseg cache --clear`` on a read-only cache folder (its only output)."""
    base = tmp_path / "mnt"
    _mount(base, "size=64k")
    try:
        blob = base / "azure" / "account" / "container" / "ab" / "blob.png"
        blob.parent.mkdir(parents=True)
        blob.write_bytes(b"x" * 100)
        subprocess.run(["mount", "-o", "remount,ro", str(base)], check=True)
        monkeypatch.setenv("LUNGSEG_CACHE_DIR", str(base))
        code, _, err = lungseg(["cache", "--clear"], capsys)
        error_line(code, err, "cache", str(blob.parent), "Read-only file system")
    finally:
        _unmount(base)


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["prepare", "train"])
def test_file_size_limit(case: str, tiny_run, examples_dir: Path, tmp_path: Path) -> None:
    """A write that fails half-way (as on a full disk), in a fresh process, without mount:
    NumPy's and PyTorch's own errors (PyTorch says 'unexpected pos') become the OS's reason."""
    command, argv = _cases(tiny_run, examples_dir)[case]
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "lungseg", *map(str, argv(out))],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = error_line(done.returncode, done.stderr, command, str(out), "File too large")
    assert "unexpected pos" not in line
    assert _leftovers(out) == []


def test_merging_into_a_read_only_segment_output(tiny_run, examples_dir: Path, tmp_path: Path,
                                                 capsys) -> None:  # fmt: skip
    """``lungseg segment-merge`` on an output that has become read-only: one line naming it."""
    base = tmp_path / "mnt"
    _mount(base, "size=8m")
    try:
        image = examples_dir / "COVID" / "images" / f"{STEM}.png"
        out = base / "seg"
        code, _, err = lungseg(["segment", image, "--out", out, "--weights", tiny_run.run], capsys)
        assert code == 0, err
        (out / "measurements.csv").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(base)], check=True)
        code, _, err = lungseg(["segment-merge", out], capsys)
        error_line(code, err, "segment-merge", str(out), KINDS["read-only"])
        assert _leftovers(base) == []
    finally:
        _unmount(base)


def test_a_file_in_a_read_only_folder_is_named_not_its_temporary(
    tiny_run, tmp_path: Path, capsys
) -> None:
    """Issue 24: ``export --onnx RO/model.onnx`` named ``RO/.model.onnx.XXXX.tmp``."""
    base = tmp_path / "mnt"
    _mount(base, "ro,size=64k")
    try:
        onnx = base / "model.onnx"
        code, _, err = lungseg(["export", "--model", tiny_run.checkpoint, "--onnx", onnx], capsys)
        line = error_line(code, err, "export", str(onnx), "Read-only file system")
        assert ".tmp" not in line, line
    finally:
        _unmount(base)
