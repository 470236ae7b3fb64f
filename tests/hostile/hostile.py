"""Helpers of the hostile-input suite: datasets with one bad file, and the error-line check."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from test_hostile_hints import command_flags, named_flags

#: The example whose image the tests replace with a bad one.
STEM = "1d435a4b"


def error_line(code: int, err: str, command: str, *words: str) -> str:
    """Assert a failed command told the user in one ``error:`` line, and return that line.

    Exit code 2; no traceback and no warning; the error is the last thing on stderr (progress
    lines before it are allowed); it contains every word; every ``--flag`` it names exists on
    ``command`` (or on the command it quotes).
    """
    assert code == 2, err
    assert "Traceback" not in err and "Warning" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    line = errors[0]
    for word in words:
        assert word in line, (word, line)
    flags = command_flags()
    for owner, flag in named_flags(line, command, set(flags)):
        assert flag in flags[owner], f"'{line}' names {flag}, which 'lungseg {owner}' lacks"
    return line


def copy_examples(examples: Path, root: Path) -> Path:
    """A writable copy of the 12 bundled examples."""
    shutil.copytree(examples, root)
    return root


def float_tiff(values: np.ndarray) -> bytes:
    """A 32-bit float TIFF (Pillow mode ``F``) holding ``values``."""
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.float32), "F").save(buf, format="TIFF")
    return buf.getvalue()


def replace_image(root: Path, data: bytes, suffix: str) -> Path:
    """Put ``data`` in place of the example image :data:`STEM` (its mask stays)."""
    images = root / "COVID" / "images"
    (images / f"{STEM}.png").unlink()
    path = images / f"{STEM}{suffix}"
    path.write_bytes(data)
    return path


#: Address space of a child run by :func:`run_capped`: the CLI with a small model needs about
#: 1.5 GB; a command that tries to hold an endless input fails instead of taking the machine.
MEMORY_CAP = 3 << 30


def capped_child(argv: list[object], before: str = "", memory: int = MEMORY_CAP) -> list[str]:
    """The command line of a child process running ``lungseg ARGV`` with its address space
    capped at ``memory`` bytes; ``before``: Python run first (e.g. a patch)."""
    import sys

    script = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n"
        f"{before}\n"
        "from lungseg.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    return [sys.executable, "-c", script, *map(str, argv)]


def run_capped(
    argv: list[object], timeout: float = 120, before: str = "", memory: int = MEMORY_CAP
) -> tuple[int, str, str]:
    """Run :func:`capped_child` to its end (at most ``timeout`` s): ``(code, stdout, stderr)``."""
    import subprocess

    done = subprocess.run(capped_child(argv, before, memory), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    return done.returncode, done.stdout, done.stderr
