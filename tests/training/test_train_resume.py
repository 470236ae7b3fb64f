"""Interrupted runs: kill -9 and Ctrl-C then ``--resume``; two-process training under torchrun."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lungseg.data.cache import prepare
from lungseg.data.preprocessing import PreprocessConfig
from lungseg.data.settings import PrepareConfig
from lungseg.training import load_checkpoint

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "covid-cxr"
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"needs the shared dataset at {DATA}"),
]
EPOCHS = 5
#: Augmentation, dropout, a per-step schedule: every source of randomness and state is in play.
TRAIN_ARGS = [
    "--model", "unet", "--n-filters", "8", "--epochs", str(EPOCHS), "--batch-size", "4",
    "--schedule", "onecycle", "--augment", "--threads", "1",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def cache32(covid_subset30: Path, tmp_path_factory) -> Path:
    """30 image/mask pairs of the shared dataset, prepared at 32x32."""
    out = tmp_path_factory.mktemp("cache32")
    settings = PrepareConfig(PreprocessConfig.from_preset("seed", 32))
    prepare(covid_subset30, out, settings, workers=1, progress=False)
    return out


def _lungseg(*args: object) -> list[str]:
    return [sys.executable, "-m", "lungseg", *map(str, args)]


@pytest.fixture(scope="module")
def reference(cache32, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(
        _lungseg("train", "--data", cache32, "--out", out, *TRAIN_ARGS),
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _start_and_stop_after(run: Path, cache: Path, epochs_done: int, sig: int):
    """Start a training subprocess and send it ``sig`` once ``epochs_done`` epochs are saved."""
    proc = subprocess.Popen(
        _lungseg("train", "--data", cache, "--out", run, *TRAIN_ARGS),
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    # history.csv is written after last.pt, so when it has the rows, last.pt has the epoch.
    while not ((run / "history.csv").is_file() and len(_rows(run)) >= epochs_done):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert not (run / "summary.json").exists(), "the run finished before it could be stopped"
    return proc.returncode, err


def _assert_same_run(run: Path, reference: Path) -> None:
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(run / name), load_checkpoint(reference / name)
        assert a["epoch"] == b["epoch"] and a["best_epoch"] == b["best_epoch"]
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key, value in a["state_dict"].items():
            assert torch.equal(value, b["state_dict"][key]), f"{name}: {key} differs"
        strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in c["history"]]
                 for c in (a, b)]  # fmt: skip
        assert strip[0] == strip[1]
    rows, ref_rows = _rows(run), _rows(reference)
    assert len(rows) == EPOCHS
    for row, ref in zip(rows, ref_rows, strict=True):
        row.pop("seconds"), ref.pop("seconds")
        assert row == ref
    assert json.loads((run / "summary.json").read_text())["epochs"] == EPOCHS


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_and_history(cache32, reference, tmp_path):
    run = tmp_path / "run"
    code, _ = _start_and_stop_after(run, cache32, 2, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert 2 <= load_checkpoint(run / "last.pt")["epoch"] < EPOCHS

    done = subprocess.run(
        _lungseg("train", "--out", run, "--resume"), env=ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_ctrl_c_keeps_last_checkpoint_and_history_consistent(cache32, reference, tmp_path):
    run = tmp_path / "run"
    code, err = _start_and_stop_after(run, cache32, 1, signal.SIGINT)
    assert code == 130, err
    assert "continue with --resume" in err
    last = load_checkpoint(run / "last.pt")
    assert len(_rows(run)) == last["epoch"] == len(last["history"])

    done = subprocess.run(
        _lungseg("train", "--out", run, "--resume"), env=ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _assert_same_run(run, reference)


DDP_SCRIPT = """
import os, sys, torch
from lungseg.training import TrainConfig, train

config = TrainConfig(model="fcn", n_filters=4, epochs=2, batch_size=4, threads=1, device="cpu")
result = train(config, sys.argv[1], sys.argv[2], progress=False)
state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
torch.save(state, os.path.join(sys.argv[3], f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
def test_torchrun_two_processes_train_identical_replicas(cache32, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(cache32), str(run), str(tmp_path)],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    saved = load_checkpoint(run / "last.pt")["state_dict"]
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), f"ranks differ in {key}"
        assert torch.equal(value, saved[key]), f"last.pt differs from the ranks in {key}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert len(_rows(run)) == 2
