"""The training loop's own cost, apart from the network's arithmetic: prints JSON.

``python benchmarks/loop_overheads.py [--device cpu] [--threads N] [--repeats 3]`` runs
``lungseg.train()`` on a U-Net of width 2 with 16x16 images (the same ~600 calls per step as the
real network, with negligible arithmetic) with 1 and 5 steps per epoch, and times each epoch on
the training thread as the interval between its log line and the previous epoch's (each line is
printed when the epoch's work on that thread is done):

* per epoch = the median interval after the first two epochs (warm-up);
* per step = (per epoch with 5 steps - per epoch with 1 step) / 4: dispatch, augmentation and
  the optimizer, the cost per step that a faster device does not shrink;
* fixed per epoch = per epoch with 1 step - per step: validation of one image, the checkpoint,
  the history and curves (or, since the background writer, the snapshot handed to it).

It uses only lungseg's public API, so ``benchmarks/train_bench.py`` runs it on this checkout and
on an earlier commit (``python -m benchmarks --only train --baseline REF``), before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTH, SIZE, BATCH = 2, 16, 16
EPOCHS, WARMUP = 14, 2


def _prepare_config():
    try:  # lungseg after the settings moved to lungseg.data.settings
        from lungseg.data.settings import PrepareConfig
    except ImportError:  # the earlier layout, for --baseline runs
        from lungseg.data.cache import PrepareConfig
    from lungseg.data.preprocessing import PreprocessConfig

    return PrepareConfig(PreprocessConfig(size=SIZE))


class _EpochClock:
    """Stands in for stderr: notes when each ``epoch N/M`` line arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def write(self, text: str) -> int:
        if text.startswith("epoch "):
            self.times.append(time.perf_counter())
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def epoch_times(steps: int, device: str, threads: int | None, out: Path) -> list[float]:
    """Seconds of each epoch after the first two on the training thread."""
    from lungseg.data.cache import PreparedData
    from lungseg.training import TrainConfig, train

    n = steps * BATCH + 1  # and one validation image
    rng = np.random.default_rng(0)
    data = PreparedData(
        path=out / "data", source="benchmark: random 16x16 images",
        images=rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8),
        masks=(rng.random((n, SIZE, SIZE)) > 0.5).astype(np.uint8), config=_prepare_config(),
        rows=[{"stem": f"i{i}", "split": "train" if i < n - 1 else "val"} for i in range(n)],
    )  # fmt: skip
    config = TrainConfig(model="unet", n_filters=WIDTH, epochs=EPOCHS, batch_size=BATCH,
                         device=device, threads=threads)  # fmt: skip
    clock, stderr = _EpochClock(), sys.stderr
    sys.stderr = clock
    try:
        train(config, data, out / f"run-{steps}-{time.monotonic_ns()}", progress=True)
    finally:
        sys.stderr = stderr
    return list(np.diff(clock.times)[WARMUP - 1 :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="lungseg-overheads-"))
    out.mkdir(parents=True, exist_ok=True)
    step, fixed = [], []
    for _ in range(args.repeats):
        one = float(np.median(epoch_times(1, args.device, args.threads, out)))
        five = float(np.median(epoch_times(5, args.device, args.threads, out)))
        step.append((five - one) / 4)
        fixed.append(one - step[-1])
    print(json.dumps({
        "step_ms": [1000 * s for s in step],
        "fixed_ms": [1000 * f for f in fixed],
        "step_note": f"batch {BATCH}, width {WIDTH}, {SIZE}x{SIZE}: dispatch, augmentation, "
                     "Adam; the cost per step a faster device does not shrink",
        "fixed_note": "validation of 1 image and the epoch's checkpoint/history/curves work "
                      "on the training thread",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
