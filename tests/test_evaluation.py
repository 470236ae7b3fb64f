"""``lungseg evaluate``: metrics.json and per_image.csv agree with the saved masks; errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lungseg.core.errors import LungsegError
from lungseg.data.cache import load_cache, prepare
from lungseg.data.preprocessing import PreprocessConfig
from lungseg.data.settings import PrepareConfig
from lungseg.evaluation.evaluate import evaluate
from lungseg.models.shipped import shipped_weights
from lungseg.training import load_checkpoint
from trained import SIZE, assert_one_line_error, dice, lungseg, read_gray

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SUMMARY_KEYS = ("model", "n_images", "dice_mean", "iou_mean", "mse_mean", "hd95_mean", "dice_ci95")


def _per_image(folder: Path) -> list[dict[str, str]]:
    with open(folder / "per_image.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_run_agrees_with_saved_masks(tiny_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--run", tiny_run.run, "--out", out, "--split", "all",
            "--postprocess", "seed,none", "--save-masks", "--device", "cpu"]  # fmt: skip
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in metrics, key
    data = load_cache(tiny_run.cache)
    assert metrics["model"] == "unet" and metrics["n_images"] == 12 and metrics["split"] == "all"
    low, high = metrics["dice_ci95"]
    assert low <= metrics["dice_mean"] <= high
    assert set(metrics["postprocess_presets"]) == {"seed", "none"}
    assert metrics["postprocess_presets"]["seed"]["dice_mean"] == metrics["dice_mean"]
    assert f"Dice {metrics['dice_mean']:.4f}" in stdout

    rows = _per_image(out)
    assert list(rows[0])[:5] == ["stem", "dice", "iou", "mse", "hd95"]
    # The uncertainty and the review flag are written, by the model's own threshold.
    assert list(rows[0])[-2:] == ["uncertain_fraction", "review"]
    flagged = [bool(r["review"]) for r in rows]
    assert metrics["review_flagged_share"] == pytest.approx(np.mean(flagged))
    assert all(
        r["review"].startswith(("uncertain", "implausible", "no lung")) for r in rows if r["review"]
    )
    assert [r["stem"] for r in rows] == data.stems
    # Dice and IoU recomputed here, from the PNGs on disk and the cache's ground truth.
    dices, ious = [], []
    for i, row in enumerate(rows):
        pred = read_gray(out / "masks" / f"{row['stem']}.png")
        assert pred.shape == (SIZE, SIZE) and set(np.unique(pred)) <= {0, 255}
        truth = np.asarray(data.masks[i]).astype(bool)
        pred = pred > 127
        d = dice(pred, truth)
        union = int((pred | truth).sum())
        dices.append(d)
        ious.append(int((pred & truth).sum()) / union if union else 1.0)
        assert float(row["dice"]) == pytest.approx(d, abs=1e-6), row["stem"]
        assert float(row["iou"]) == pytest.approx(ious[-1], abs=1e-6), row["stem"]
    assert metrics["dice_mean"] == pytest.approx(np.mean(dices), abs=1e-9)
    assert metrics["iou_mean"] == pytest.approx(np.mean(ious), abs=1e-9)
    assert metrics["dice_mean"] > 0.3, "the tiny model should find the lungs"


def test_evaluate_mse_and_default_test_split(tiny_run) -> None:
    result = evaluate(tiny_run.run, None, device="cpu")
    data = load_cache(tiny_run.cache)
    test = data.indices("test")
    assert result.metrics["split"] == "test" and result.metrics["n_images"] == len(test) == 3
    target = np.asarray(data.masks[test], dtype=np.float64)
    mse = ((result.probabilities.astype(np.float64) - target) ** 2).mean(axis=(1, 2))
    assert result.metrics["mse_mean"] == pytest.approx(mse.mean(), rel=1e-6)


def test_checkpoint_on_source_folder_uses_its_preprocessing(
    tiny_run, examples_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", tiny_run.checkpoint, "--data", examples_dir, "--split", "all",
            "--out", out, "--device", "cpu"]  # fmt: skip
    code, _, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    recorded = load_checkpoint(tiny_run.checkpoint)["preprocess"]
    (cache,) = (out / ".cache").glob("examples-*")
    prepared = load_cache(cache)
    assert vars(prepared.config.preprocess) == recorded
    assert metrics["preprocess"] == recorded and metrics["n_images"] == 12
    # Same files, same preprocessing: the very images the model was trained on, the same scores.
    np.testing.assert_array_equal(prepared.images, load_cache(tiny_run.cache).images)
    own = evaluate(tiny_run.run, None, split="all", device="cpu").metrics
    assert metrics["dice_mean"] == pytest.approx(own["dice_mean"], abs=1e-12)


def test_cache_with_other_preprocessing_is_prepared_again(
    tiny_run, examples_dir: Path, tmp_path: Path
) -> None:
    plain = PrepareConfig(PreprocessConfig.from_preset("none", SIZE), 0.25, 0.25, 0)
    other = prepare(examples_dir, tmp_path / "plain", plain, workers=1, progress=False)
    result = evaluate(tiny_run.checkpoint, tmp_path / "eval", data=other.path, device="cpu")
    assert result.data.path != other.path
    assert result.data.config.preprocess.preset == "seed"
    assert result.metrics["n_images"] == 12


def test_shipped_weights_missing_says_what_to_do(
    tmp_path: Path, examples_dir, capsys, monkeypatch
) -> None:
    monkeypatch.setattr("lungseg.models.shipped.weights_dir", lambda: tmp_path / "no-weights")
    with pytest.raises(LungsegError) as info:
        shipped_weights("unet")
    assert "not in this installation" in str(info.value)
    assert "lungseg train" in str(info.value)
    with pytest.raises(LungsegError, match="no shipped model named 'vgg'"):
        shipped_weights("vgg")
    argv = ["evaluate", "--model", "unet", "--data", examples_dir, "--out", tmp_path / "e"]
    assert_one_line_error(*lungseg(argv, capsys)[::2], "shipped weights of 'unet'")


def _zero_test_cache(examples_dir: Path, root: Path) -> Path:
    """Two example pairs, prepared as the tiny model wants them, with no test split."""
    for kind in ("images", "masks"):
        (root / "src" / "COVID" / kind).mkdir(parents=True)
        for name in ("1d435a4b.png", "333932bd.png"):
            shutil.copy(examples_dir / "COVID" / kind / name, root / "src" / "COVID" / kind / name)
    config = PrepareConfig(PreprocessConfig.from_preset("seed", SIZE), 0.5, 0.0, 0)
    return prepare(root / "src", root / "cache", config, workers=1, progress=False).path


@pytest.mark.parametrize("case", ["no_checkpoint", "no_masks", "bad_split", "zero_images", "both"])
def test_bad_input_one_line(case: str, tiny_run, examples_dir, tmp_path: Path, capsys) -> None:
    out = ["--out", tmp_path / "out", "--device", "cpu"]
    if case == "no_checkpoint":
        (tmp_path / "run").mkdir()
        argv, words = ["--run", tmp_path / "run"], ["no best.pt", str(tmp_path / "run")]
    elif case == "no_masks":
        shutil.copytree(examples_dir / "COVID" / "images", tmp_path / "xrays" / "COVID" / "images")
        argv = ["--model", tiny_run.checkpoint, "--data", tmp_path / "xrays"]
        words = ["no ground-truth masks", "lungseg segment", "xrays"]
    elif case == "bad_split":
        argv, words = ["--run", tiny_run.run, "--split", "tset"], ["unknown split 'tset'", "test"]
    elif case == "zero_images":
        cache = _zero_test_cache(examples_dir, tmp_path)
        argv = ["--model", tiny_run.checkpoint, "--data", cache, "--split", "test"]
        words = ["'test' split", "has no images"]
    else:
        argv, words = ["--run", tiny_run.run, "--model", tiny_run.checkpoint], ["exactly one"]
    code, _, err = lungseg(["evaluate", *argv, *out], capsys)
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_common_scoring_size(tiny_run, examples_dir: Path, tmp_path: Path, capsys) -> None:
    """--size scores a model trained at SIZE against masks prepared at another size."""
    big = 2 * SIZE
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", tiny_run.checkpoint, "--data", examples_dir, "--split", "all",
            "--out", out, "--device", "cpu", "--size", big, "--save-masks"]  # fmt: skip
    code, _, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["size"], metrics["model_size"]) == (big, SIZE)
    own = evaluate(tiny_run.checkpoint, tmp_path / "own", data=examples_dir, split="all",
                   device="cpu", save_masks=True)  # fmt: skip
    # Ground truth prepared independently at the scoring size; the masks at the working size,
    # resized the way segment resizes them.
    truth = prepare(examples_dir, tmp_path / "big",
                    PrepareConfig(PreprocessConfig.from_preset("seed", big)), workers=1,
                    progress=False)  # fmt: skip
    from lungseg.inference.segmenter import upscale_mask

    for row in _per_image(out):
        small = read_gray(tmp_path / "own" / "masks" / f"{row['stem']}.png") > 127
        saved = read_gray(out / "masks" / f"{row['stem']}.png") > 127
        assert saved.shape == (big, big)
        np.testing.assert_array_equal(saved, upscale_mask(small, (big, big)))
        expected = dice(saved, np.asarray(truth.masks[truth.stems.index(row["stem"])]) > 0)
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-6), row["stem"]
    assert abs(metrics["dice_mean"] - own.metrics["dice_mean"]) < 0.05
    with pytest.raises(LungsegError, match="at least 16"):
        evaluate(tiny_run.checkpoint, None, data=examples_dir, device="cpu", size=8)
