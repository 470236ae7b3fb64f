"""lungseg's worker processes (:mod:`lungseg.core.workers`): results in order from every worker,
a function's failure named by its type, a dead worker replaced once, a parent's death ending
them, and a user's script without a main guard not run again by them."""

from __future__ import annotations

import math
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from held import running
from lungseg.core.workers import WorkerDied, Workers

SRC = Path(__file__).resolve().parents[2] / "src"


def test_map_gives_results_in_order_from_several_processes():
    with Workers(2) as workers:
        assert list(workers.map(operator.add, range(12), 10)) == [i + 10 for i in range(12)]
        assert workers.call(os.getpid) != os.getpid()  # in a process of its own
        assert 1 <= workers.started <= 2


def test_a_failing_function_is_named_by_its_type_and_the_worker_goes_on():
    with Workers(1) as workers:
        with pytest.raises(RuntimeError, match="in a worker process: ValueError"):
            workers.call(math.sqrt, -1.0)
        assert workers.call(math.sqrt, 9.0) == 3.0
        assert workers.started == 1


def test_a_worker_that_dies_is_replaced_once_then_reported():
    with Workers(1) as workers:
        assert workers.call(math.sqrt, 4.0) == 2.0
        (worker,) = workers._idle
        os.kill(worker.process.pid, signal.SIGKILL)  # as an out-of-memory kill does
        worker.process.wait()
        assert workers.call(math.sqrt, 16.0) == 4.0
        assert workers.started == 2
        with pytest.raises(WorkerDied):
            workers.call(os._exit, 3)  # dies on every try


def test_workers_end_with_their_parent():
    script = (
        "import math, time\n"
        "from lungseg.core.workers import Workers\n"
        "w = Workers(2)\n"
        "list(w.map(math.sqrt, [1.0, 4.0, 9.0, 16.0]))\n"
        "print(' '.join(str(x.process.pid) for x in w._workers), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(SRC)})  # fmt: skip
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert pids
    parent.kill()  # kill -9: no clean-up of its own
    parent.wait()
    deadline = time.monotonic() + 10
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if running(p)]


def test_a_script_without_a_main_guard_is_not_run_again(tmp_path):
    """multiprocessing's spawn workers import the parent's main script again: this one would
    print twice more (and ``lungseg.prepare`` in such a script waited for its own lock)."""
    script = tmp_path / "noguard.py"
    script.write_text(
        "import math\n"
        "from lungseg.core.workers import Workers\n"
        "print('top level', flush=True)\n"
        "with Workers(2) as w:\n"
        "    print(sum(w.map(math.sqrt, [1.0, 4.0, 9.0, 16.0])))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["top level", "10.0"]
