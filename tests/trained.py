"""Helpers for the tests of the trained-model stages (evaluate, segment, compare, ONNX, the API).

The session fixture ``tiny_run`` (in ``conftest.py``) calls :func:`train_tiny` once: a U-Net with
4 base filters, 8 epochs on the 12 bundled examples at 64x64 (about 6 s on one core). It is far
from a good model, but good enough that its masks cover the lungs (mean Dice about 0.7), so the
tests see real, non-empty predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.cli import main

SIZE = 64


@dataclass(frozen=True)
class TinyRun:
    """A trained run directory and the prepared cache it was trained on."""

    run: Path
    cache: Path

    @property
    def checkpoint(self) -> Path:
        return self.run / "best.pt"


def train_tiny(examples: Path, root: Path) -> TinyRun:
    """Prepare the examples (3 test, 2 val images) and train the tiny U-Net on them."""
    from lungseg.data.cache import prepare
    from lungseg.data.preprocessing import PreprocessConfig
    from lungseg.data.settings import PrepareConfig
    from lungseg.training import TrainConfig, train

    config = PrepareConfig(PreprocessConfig.from_preset("seed", SIZE), 0.25, 0.25, 0)
    prepared = prepare(examples, root / "cache", config, workers=1, progress=False)
    settings = TrainConfig(
        model="unet", n_filters=4, epochs=8, batch_size=4, lr=3e-3, augment=False,
        threads=1, device="cpu",
    )  # fmt: skip
    train(settings, prepared, root / "run", progress=False)
    return TinyRun(root / "run", root / "cache")


def lungseg(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    code = info.value.code
    out, err = capsys.readouterr()
    return (0 if code is None else int(code)), out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    """Exit code 2, and stderr is a single ``error:`` line containing every word."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for word in words:
        assert word in lines[0], (word, lines[0])


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two boolean masks, computed directly (1.0 when both are empty)."""
    pred, target = pred.astype(bool), target.astype(bool)
    total = int(pred.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & target).sum()) / total


def read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image
