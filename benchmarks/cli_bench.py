"""The command line's own start-up: ``lungseg --help``, ``lungseg segment --help`` and
``lungseg --version``, each a fresh process timed from start to exit.

The CLI builds every command at start, so this measures what a user waits for before anything
happens; ``tests/test_layout.py`` keeps the heavy libraries (NumPy, OpenCV, PyTorch, matplotlib,
Jinja2) out of it, which is what keeps it fast.
"""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.common import Context, Section

COMMANDS = {
    "lungseg --help": ["--help"],
    "lungseg segment --help": ["segment", "--help"],
    "lungseg --version": ["--version"],
}
GOAL_S = 0.5


def run(ctx: Context) -> Section:
    section = Section("cli", ctx)
    repeats = 2 if ctx.quick else 10
    for name, args in COMMANDS.items():
        command = [sys.executable, "-m", "lungseg", *args]
        subprocess.run(command, capture_output=True, check=True)  # warm the file cache
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True)
            samples.append(time.perf_counter() - t0)
        result = section.add(f"{name}: start to exit", samples, "s", "a fresh Python process")
        if name != "lungseg --version":
            section.goal(f"`{name}` returns in under {GOAL_S} s", result["median"], "<",
                         GOAL_S, "s")  # fmt: skip
    section.notes.append(
        f"`{sys.executable} -m lungseg ...`, {repeats} runs each after one warm-up run; the "
        "console script `lungseg` runs the same code."
    )
    return section
