"""scripts/gpu_session.sh, tried on the CPU (GPU_DEVICE=cpu) so its plumbing cannot rot while no
session draws a GPU: every phase packed into the one returned archive as it ends, a phase out
of time stopped without losing the others, the runs adopted here by ``collect``. One dry run
with a training out of time covers them all; a training that ends writes summary.json as any
``lungseg train`` does (tests/training)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from lungseg.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_session.sh"
pytestmark = pytest.mark.slow


def _device(tmp: Path, examples: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    carry, out = tmp / "carry", tmp / "out"
    (carry / "data").mkdir(parents=True)
    shutil.copytree(examples, carry / "data" / "covid-cxr")
    out.mkdir()
    settings = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OUT": str(out), "GPU_DEVICE": "cpu", "GPU_CARRY": str(carry),
        "GPU_SITE": str(tmp / "site"), "GPU_MODELS": "unet-fast",
        "GPU_BENCH_ARGS": "--quick --only cli --device cpu", **env,
    }  # fmt: skip
    done = subprocess.run(["bash", str(SCRIPT), "device"], env=settings, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    return done, out / "session.tar"


def _phases(archive: Path) -> dict[str, int]:
    with tarfile.open(archive) as tar:
        text = tar.extractfile("./phases.tsv").read().decode()
    return {
        name: int(status)
        for name, status, _ in (line.split("\t") for line in text.split("\n") if line)
    }


def test_a_dry_run_packs_every_phase_keeps_a_timed_out_training_and_collect_adopts_it(
    examples_dir, tmp_path
):
    """One dry run (each costs a minute of the suite): the training runs out of its time box,
    the phases before it are in the one archive, the run keeps the epochs it finished (fp16
    best weights, no optimizer state), and ``collect`` adopts it here."""
    done, archive = _device(tmp_path, examples_dir, GPU_EPOCHS="400", GPU_TRAIN_S="15")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in archive.parent.iterdir()) == ["session.tar"]
    phases = _phases(archive)
    assert list(phases) == ["install", "bench", "train-unet-fast"]
    assert phases["install"] == 0 and phases["bench"] == 0 and phases["train-unet-fast"] != 0
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert {"./records/cpu.json", "./logs/install.log", "./logs/bench.log"} <= names
        tar.extractall(tmp_path / "back", filter="data")
    run = tmp_path / "back" / "runs" / "unet-fast"
    best = load_checkpoint(run / "best.pt")
    assert "optimizer" not in best and 1 <= len(best["history"]) < 400
    assert all(
        v.dtype == torch.float16 for v in best["state_dict"].values() if v.is_floating_point()
    )
    assert not (run / "summary.json").exists()

    # collect adopts the run here (data prepared again, split checked), into GPU_WORK.
    work = tmp_path / "work"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GPU_WORK": str(work), "GPU_SOURCE": str(examples_dir)}  # fmt: skip
    adopted = subprocess.run(["bash", str(SCRIPT), "collect", str(archive.parent)], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert adopted.returncode == 0, adopted.stderr
    assert "unet-fast: adopted" in adopted.stdout
    assert (work / "runs" / "unet-fast" / "best.pt").is_file()
