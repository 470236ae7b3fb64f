"""The models shipped inside the package: they load by name, apply their recorded settings and
segment the bundled examples (patients held out of their training) accurately."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.inference.segmenter import load_model
from lungseg.models.checkpoint import load_checkpoint
from lungseg.models.shipped import (
    ENSEMBLE_MODELS,
    SHIPPED_CONVENTIONS,
    SHIPPED_MODELS,
    shipped_weights,
)
from trained import dice, lungseg

REPO = Path(__file__).resolve().parents[1]

#: Shipped variants of a registered architecture.
ARCHITECTURE = {"unet-fast": "unet", "unet-visible": "unet"}
#: Mean and worst Dice on the bundled examples, whose masks (covid-cxr) are anatomical: a
#: visible-lung-field model leaves out the lung behind the heart, 15-30 % of the area.
EXAMPLE_DICE = {"anatomical": (0.93, 0.85), "visible": (0.80, 0.70)}


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_checkpoint_is_self_describing_and_small(name: str) -> None:
    path = shipped_weights(name)
    assert path.stat().st_size < 8 * 2**20
    ckpt = load_checkpoint(path)
    assert ckpt["model"]["name"] == ARCHITECTURE.get(name, name)
    assert ckpt["postprocess_preset"] in ("clean", "none", "seed")
    assert load_model(name, device="cpu").convention == SHIPPED_CONVENTIONS[name]
    assert {"optimizer", "rng"}.isdisjoint(ckpt)  # no training state shipped
    assert all(v.dtype != np.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_model_segments_the_examples(name: str, examples_dir: Path, one_torch_thread):
    model = load_model(name, device="cpu")
    scores = []
    for image_path in sorted((examples_dir / "COVID" / "images").glob("*.png")):
        truth = cv2.imread(str(examples_dir / "COVID" / "masks" / image_path.name), 0) > 127
        mask = model.predict(image_path)
        image = cv2.imread(str(image_path), 0)
        assert mask.shape == image.shape and mask.dtype == bool
        # The example masks are 256x256 and the images 299x299: compare at the mask's size.
        resized = cv2.resize(mask.astype(np.uint8), truth.shape[::-1], cv2.INTER_NEAREST) > 0
        scores.append(dice(resized, truth))
    mean, worst = EXAMPLE_DICE[model.convention]
    assert np.mean(scores) > mean, scores
    assert min(scores) > worst, scores


def test_evaluate_shipped_model_by_name(examples_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, err = lungseg(
        ["evaluate", "--model", "deeplabv3", "--data", examples_dir, "--split", "all",
         "--out", tmp_path / "eval"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "deeplabv3" and metrics["n_images"] == 12
    assert metrics["dice_mean"] > 0.93
    assert metrics["dice_ci95"][0] <= metrics["dice_mean"] <= metrics["dice_ci95"][1]


def test_fast_variant_is_the_unet_at_half_resolution_and_keeps_its_name() -> None:
    fast = load_model("unet-fast", device="cpu")
    assert fast.name == "unet-fast" and fast.size == 256
    assert fast.info["model"]["kwargs"]["downsample"] == 2
    network = fast.networks[0][0].model
    assert network.downsample == 2 and network.input_divisor == 32
    both = load_model("ensemble", device="cpu")
    assert len(both.networks) == len(ENSEMBLE_MODELS) == 3
    assert [load_checkpoint(m)["model"]["name"] for m in both.info["members"]] == list(
        ENSEMBLE_MODELS
    )


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_each_recipe_is_what_its_model_was_trained_with(name):
    """configs/<model>.yaml, resolved as ``lungseg train --config`` resolves it, gives the
    settings the shipped checkpoint recorded (all but those that only change speed) and the
    same preprocessing."""
    from lungseg.core.config import from_dict, to_dict
    from lungseg.data.preprocessing import PreprocessConfig
    from lungseg.data.settings import prepare_settings
    from lungseg.training.config import RESUMABLE_CHANGES, resolve_run, stored_settings

    recipe = REPO / "configs" / f"{name}.yaml"
    ckpt = load_checkpoint(shipped_weights(name))
    resolved = to_dict(resolve_run(REPO / "no-run", {}, {}, recipe, "data").config)
    stored = stored_settings(ckpt)
    differ = {k: (stored.get(k), v) for k, v in resolved.items() if stored.get(k) != v}
    assert set(differ) <= set(RESUMABLE_CHANGES), differ
    preprocess = from_dict(PreprocessConfig, ckpt["preprocess"])
    assert prepare_settings(recipe).preprocess == preprocess


def test_a_copy_of_shipped_weights_keeps_its_identity(tmp_path: Path) -> None:
    """The same weights, the same identity: a copy of unet.pt elsewhere (package's work
    folder, a user's models folder) was "unknown" convention with no review threshold."""
    import shutil

    from lungseg.models.checkpoint import load_checkpoint, save_checkpoint

    copy = tmp_path / "my-model.pt"
    shutil.copy(shipped_weights("unet"), copy)
    by_name, by_copy = load_model("unet", device="cpu"), load_model(copy, device="cpu")
    assert by_copy.identity == by_name.identity
    assert by_copy.identity.convention == "anatomical"
    assert by_copy.info["review_threshold"] == by_name.info["review_threshold"]

    own = load_checkpoint(copy)
    own["state_dict"] = {k: v * 1 for k, v in own["state_dict"].items()}
    own["epoch"] = 1  # other bytes: a checkpoint of one's own
    save_checkpoint(tmp_path / "own.pt", own)
    assert load_model(tmp_path / "own.pt", device="cpu").identity.convention == "unknown"
