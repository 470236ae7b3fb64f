"""MODEL_CARD.md of the shipped weights, rendered by ``scripts/train_shipped.py`` from the results
of ``package``: every model's row, the sections that only some results have, and the sentence on
fp16 storage."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_shipped.py"


@pytest.fixture(scope="module")
def train_shipped():
    spec = importlib.util.spec_from_file_location("train_shipped", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_shipped"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["train_shipped"]


def _metrics(dice: float, n: int = 35, **extra) -> dict:
    return {
        "n_images": n, "size": 256, "model_size": 256, "postprocess": "clean",
        "dice_mean": dice, "dice_ci95": [dice - 0.008, dice + 0.007],
        "iou_mean": dice - 0.04, "iou_ci95": [dice - 0.052, dice - 0.03],
        "mse_mean": 0.0235, "hd95_mean": 8.58, "dice_worst": dice - 0.076,
        "dice_worst_stem": "covid-19-caso-94-1-14", "uncertainty_error_spearman": 0.79, **extra,
    }  # fmt: skip


def package_results() -> dict:
    """What ``package`` gathers for four shipped models, their ensemble and an int8 export."""
    results = {}
    models = {  # test Dice, parameters, best and trained epochs, precision, minutes, network
        "unet": (0.9576, 1942289, 73, 100, "bf16 autocast", 77, "unet (n_filters=16)"),
        "fcn": (0.9583, 1757105, 74, 80, "bf16 autocast", 49,
                "fcn (n_filters=16, skips=True, depth=4)"),
        "deeplabv3": (0.9568, 470001, 70, 80, "float32", 25, "deeplabv3 (n_filters=16)"),
        "unet-fast": (0.9561, 1942289, 44, 60, "float32", 18, "unet (n_filters=16, downsample=2)"),
    }  # fmt: skip
    for name, (dice, params, best, epochs, precision, minutes, network) in models.items():
        presets = {"clean": {"dice_mean": dice - 0.001}, "none": {"dice_mean": dice - 0.002}}
        results[name] = {
            "postprocess": "clean", "val_presets": presets, "fp16_val_dice_drift": 2.2e-05,
            "summary": {"params": params, "best_epoch": best, "epochs": epochs, "n_train": 257,
                        "n_val": 63, "preprocess": "clahe", "precision": precision,
                        "train_seconds": minutes * 60.0 + 1.5},
            "new": False, "test": _metrics(dice), "cache": "work/cache", "network": network,
        }  # fmt: skip
    results["ensemble"] = {"test": _metrics(0.9601), "postprocess": "clean (mean probability)",
                           "cache": "work/cache"}  # fmt: skip
    for r in results.values():
        dice = r["test"]["dice_mean"]
        r["tta"] = {"val": {"dice_mean": dice - 0.0002}, "val_plain": dice - 0.001,
                    "test": _metrics(dice + 0.0008)}  # fmt: skip
    results["unet-fast-int8"] = {
        "postprocess": "clean", "test": _metrics(0.9563), "val_dice": 0.9523,
        "val_dice_fp32": 0.9528, "calibration_images": 64, "summary": {"params": 1942289},
    }  # fmt: skip
    return results


def _sections(card: str) -> list[str]:
    return [line for line in card.splitlines() if line.startswith("## ")]


RESULTS = "## Results on the test split (35 images of patients never seen in training)"


def test_card_has_every_model_and_section(train_shipped) -> None:
    card = train_shipped.model_card(package_results())
    lines = card.splitlines()
    assert card.startswith("# Model card: lungseg shipped lung-segmentation models\n\n")
    assert card.endswith("- Not a medical device; not for clinical diagnosis.\n")
    assert "\n\n\n" not in card
    assert _sections(card) == ["## Networks", "## Data", "## Settings", RESULTS, "## int8 ONNX",
                               "## Test-time augmentation (`--tta`, reported separately)",
                               "## Which masks to review", "## Mask conventions",
                               "## Known limits"]  # fmt: skip
    assert "| unet | `unet (n_filters=16)` | bf16 autocast | 77 min |" in lines
    assert "| fcn | `fcn (n_filters=16, skips=True, depth=4)` | bf16 autocast | 49 min |" in lines
    assert "  train 257, validation 63, test 35" in lines
    assert "- Preprocessing preset `clahe` (chosen on validation Dice over `seed`," in lines
    assert (
        "- Weights are stored in fp16; this changed validation mean Dice by at most 2.2e-05."
        in (lines)
    )
    assert "| fcn | clean (chosen) | 0.9573 |" in lines and "| fcn | none | 0.9563 |" in lines
    assert (
        "| unet | 256 | 1.94 M | 73 / 100 | clean | 0.9576 (0.9496–0.9646) | "
        "0.9176 (0.9056–0.9276) | 0.0235 | 8.58 | 0.8816 (covid-19-caso-94-1-14) |"
    ) in lines
    assert "| ensemble | 256 | – | – | clean (mean probability) | 0.9601 (0.9521–0.9671) | " in card
    assert "| unet-fast-int8 | 256 | 1.94 M | – / – | clean | 0.9563 (0.9483–0.9633) | " in card
    assert (
        "- `unet-fast-int8`: `lungseg export --model unet-fast --int8 --calibrate "
        "TRAINING_IMAGES` (static ONNX Runtime quantisation, calibrated on 64 training images): "
        "validation Dice 0.9523 against 0.9528 in float32; test split in the table above."
    ) in lines
    assert (
        "| ensemble | 0.9591 | 0.9599 | 0.9601 (0.9521–0.9671) | 0.9609 (0.9529–0.9679) | 0.8849 |"
    ) in lines
    review = lines[lines.index("## Which masks to review") + 4]
    assert review.endswith(
        "on the test split: unet 0.79, fcn 0.79, deeplabv3 0.79, unet-fast 0.79, ensemble 0.79, "
        "unet-fast-int8 0.79."
    )
    assert "- The test split is small (35 images), so confidence intervals are wide." in lines


def test_optional_sections_and_unmeasured_drift(train_shipped) -> None:
    results = package_results()
    del results["unet-fast-int8"]
    for r in results.values():
        del r["tta"]
        r["test"].pop("uncertainty_error_spearman")
    results["fcn"]["fp16_val_dice_drift"] = None
    card = train_shipped.model_card(results)
    assert _sections(card) == [
        "## Networks", "## Data", "## Settings", RESULTS, "## Mask conventions", "## Known limits"
    ]  # fmt: skip
    assert (
        "| ensemble | 256 | – | – | clean (mean probability) | 0.9601 (0.9521–0.9671) | "
        "0.9201 (0.9081–0.9301) | 0.0235 | 8.58 | 0.8841 (covid-19-caso-94-1-14) |\n\n"
        "## Mask conventions\n"
    ) in card
    assert (
        "- Weights are stored in fp16; this changed validation mean Dice by at most 2.2e-05 "
        "(not measured for fcn: training run not at hand).\n"
    ) in card
    for r in results.values():
        r.pop("fp16_val_dice_drift", None)
    assert (
        "- Weights are stored in fp16; the change in validation Dice was not measured (the runs "
        "the weights came from were not at hand).\n"
    ) in train_shipped.model_card(results)


def test_a_missing_result_is_an_error(train_shipped) -> None:
    import jinja2

    results = copy.deepcopy(package_results())
    del results["unet"]["test"]["hd95_mean"]
    with pytest.raises(jinja2.UndefinedError, match="hd95_mean"):
        train_shipped.model_card(results)


def test_per_source_section_ends_the_card(train_shipped) -> None:
    figures = {
        "n_images": 85, "dice_mean": 0.9012, "dice_ci95": [0.89, 0.91], "dice_worst": 0.697,
        "below_090": 0.54, "below_080": 0.02, "recall_mean": 0.97, "precision_mean": 0.83,
        "area_ratio_median": 1.17, "spearman": 0.41, "flagged": 0.2, "flagged_below_090": 0.3,
        "worst5": [{"stem": "CHNCXR_0455_1", "dice": 0.697, "review": "uncertain (0.3 > 0.2)"}],
    }  # fmt: skip
    shenzhen = {"split": "val", "convention": "visible", **figures}
    sources = {"fcn": {"convention": "anatomical", "review_threshold": 0.175, "shenzhen": shenzhen}}
    card = train_shipped.model_card(package_results(), sources)
    assert _sections(card)[-1] == "## Results per source (development data)"
    assert (
        "| fcn (anatomical) | 85 | 0.9012 (0.8900-0.9100) | 0.697 | 54% | 2% | 0.970 / 0.830 | "
        "x1.17 | 0.41 | 20% | 30% |"
    ) in card
    assert "- **fcn, shenzhen**: CHNCXR_0455_1 0.697 (flagged: uncertain (0.3 > 0.2))" in card
    assert "\n\n\n" not in card and card.endswith("\n")


def test_tta_figures_of_the_visible_model_get_their_table(train_shipped) -> None:
    tta = {
        "covid19-radiography-vp": {
            "n_images": 157,
            "without": {"dice_mean": 0.97529, "dice_worst": 0.9091},
            "with": {"dice_mean": 0.97621, "dice_worst": 0.9072},
        }
    }
    sources = {"unet-visible": {"convention": "visible", "review_threshold": 0.1, "tta": tta}}
    card = train_shipped.model_card(package_results(), sources)
    assert "### Test-time augmentation, visible convention" in card
    row = "| unet-visible | covid19-radiography-vp | 157 | 0.9753 (0.909) | 0.9762 (0.907) |"
    assert row in card
    without = train_shipped.model_card(package_results(), {"unet-visible": {"convention": "x"}})
    assert "Test-time augmentation, visible convention" not in without


def test_the_shipped_card_is_the_rendering_of_the_recorded_figures(train_shipped) -> None:
    """A template change reaches the card (``train_shipped.py card``): the shipped card had
    kept an old "Known limits" and no "Mask conventions" after the template gained them."""
    import json

    results = json.loads(train_shipped.RESULTS_JSON.read_text())
    sources = json.loads(train_shipped.SOURCES_JSON.read_text())
    shipped = (train_shipped.WEIGHTS / "MODEL_CARD.md").read_text()
    assert shipped == train_shipped.model_card(results, sources), (
        "MODEL_CARD.md is not what its templates render: python scripts/train_shipped.py card"
    )
    assert "## Mask conventions" in shipped and "unet-visible (visible)" in shipped


def test_a_kept_models_drift_stays_while_its_weights_are_the_same(train_shipped, tmp_path):
    weights = tmp_path / "unet.pt"
    weights.write_bytes(b"weights")
    from lungseg.models.identity import file_digest

    before = {"fp16_val_dice_drift": 2.2e-05, "weights_sha256": file_digest(weights)}
    kept = {"fp16_val_dice_drift": None}
    train_shipped._carry_drift(kept, before, weights)
    assert kept["fp16_val_dice_drift"] == 2.2e-05
    weights.write_bytes(b"other weights")
    changed = {"fp16_val_dice_drift": None}
    train_shipped._carry_drift(changed, before, weights)
    assert changed["fp16_val_dice_drift"] is None
    measured = {"fp16_val_dice_drift": 1e-06}
    train_shipped._carry_drift(measured, before, weights)
    assert measured["fp16_val_dice_drift"] == 1e-06
