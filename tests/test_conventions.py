"""Mask conventions: the mismatch check on hand-made masks, the prepare setting, and that a
trained model and an evaluation carry the convention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lungseg.core.errors import LungsegError
from lungseg.data.settings import PrepareConfig, prepare_settings
from lungseg.evaluation.conventions import convention_check
from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _masks(n: int, height: int) -> np.ndarray:
    """``n`` masks of two 30-row-wide lungs, ``height`` rows tall, on 64x64."""
    masks = np.zeros((n, 64, 64), bool)
    masks[:, 4 : 4 + height, 4:20] = True
    masks[:, 4 : 4 + height, 40:56] = True
    return masks


def test_a_model_of_the_other_convention_is_recognised():
    visible = _masks(5, 40)
    anatomical = _masks(5, 48)  # 20 % more area, containing the visible lung: recall 1
    found = convention_check(anatomical, visible, "anatomical", "visible")
    assert found["mismatch"] == "larger" and found["area_ratio_median"] == pytest.approx(1.2)
    assert found["recall_mean"] == 1.0 and found["precision_mean"] == pytest.approx(40 / 48)
    assert "anatomical convention" in found["warning"] and "(visible)" in found["warning"]
    assert convention_check(visible, anatomical)["mismatch"] == "smaller"
    # Same convention, small errors either way: no warning.
    same = convention_check(_masks(5, 41), visible)
    assert same["mismatch"] is None and same["warning"] is None
    # 8 % larger is within what one convention's models disagree by.
    assert convention_check(_masks(5, 43), visible)["mismatch"] is None
    # Not consistent: larger on two images, smaller on three.
    mixed = np.concatenate([_masks(2, 56), _masks(3, 36)])
    assert convention_check(mixed, visible)["mismatch"] is None


def test_convention_setting_is_validated():
    assert PrepareConfig().convention == "unknown"
    assert prepare_settings(convention="visible").convention == "visible"
    with pytest.raises(LungsegError, match="unknown mask convention 'heart'; valid: anatomical"):
        prepare_settings(convention="heart")


def test_prepare_train_evaluate_carry_the_convention(
    examples_dir: Path, tmp_path: Path, capsys
) -> None:
    cache = tmp_path / "cache"
    code, out, err = lungseg(
        ["prepare", "--data", examples_dir, "--out", cache, "--size", "64", "--convention",
         "visible"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "(visible convention)" in out
    run = tmp_path / "run"
    code, out, err = lungseg(
        ["train", "--model", "unet", "--data", cache, "--out", run, "--epochs", "1",
         "--n-filters", "4", "--device", "cpu", "--threads", "1"], capsys,
    )  # fmt: skip
    assert code == 0, err
    from lungseg.inference.segmenter import load_model

    assert load_model(run).identity.convention == "visible"
    code, out, err = lungseg(
        ["evaluate", "--run", run, "--out", tmp_path / "eval", "--split", "all",
         "--device", "cpu"], capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["convention"] == "visible" and metrics["data_convention"] == "visible"
    assert set(metrics["convention_check"]) >= {"mismatch", "area_ratio_median", "warning"}
    assert "(visible convention)" in out
