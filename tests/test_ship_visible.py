"""scripts/ship_visible.py: the linked dataset of both visible-convention sources prepares with
one patient-disjoint validation split per source, and each image's source is known."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def ship_visible():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("ship_visible", SCRIPTS / "ship_visible.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPTS))
    sys.modules.pop("train_shipped", None)


def test_linked_sources_prepare_with_a_split_per_source(ship_visible, tmp_path: Path) -> None:
    from lungseg.data.cache import prepare
    from lungseg.data.settings import PrepareConfig

    shared = tmp_path / "shared"
    image = np.full((32, 32), 90, np.uint8)
    image[8:24, 4:14] = image[8:24, 18:28] = 30
    # RGB masks, as the COVID-19 Radiography Database stores them.
    mask = cv2.cvtColor(np.where(image < 60, 255, 0).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    for source, classes in ship_visible.VISIBLE_SOURCES.items():
        for cls in classes:
            for i in range(5):
                for kind, pixels in (("images", image), ("masks", mask)):
                    (shared / source / cls / kind).mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(shared / source / cls / kind / f"{cls[:3]}-{i}.png"), pixels)
    out = tmp_path / "visible-data"
    ship_visible.cmd_data(argparse.Namespace(shared=shared, out=out))
    ship_visible.cmd_data(argparse.Namespace(shared=shared, out=out))  # again: nothing to do
    data = prepare(out, tmp_path / "cache", PrepareConfig(val_fraction=0.2, test_fraction=0.0,
                   convention="visible"), workers=1, progress=False)  # fmt: skip
    assert data.config.convention == "visible" and len(data.rows) == 15
    assert data.masks.max() == 1 and data.masks.mean() > 0.2  # the RGB masks decoded
    sources = {ship_visible.source_of(r["image_key"]) for r in data.rows}
    assert sources == set(ship_visible.VISIBLE_SOURCES)
    for cls in ("Normal", "Tuberculosis", "Viral Pneumonia"):
        assert [r["split"] for r in data.rows if r["class"] == cls].count("val") == 1


@pytest.mark.shared_data
def test_the_recipe_leaves_out_shenzhen_training_masks_only(ship_visible, shenzhen, tmp_path):
    """Every name in configs/unet-visible.yaml's train.exclude is a Shenzhen training image of
    the recipe's own split, and the validation masks of the other rule are validation images:
    the recipe runs (an unknown name stops training) and no validation image leaves training
    it never was in."""
    import yaml

    from lungseg.data.cache import prepare
    from lungseg.data.settings import prepare_settings

    data = tmp_path / "visible-data"
    ship_visible.cmd_data(argparse.Namespace(shared=shenzhen.parent, out=data))
    prepared = prepare(data, tmp_path / "cache", prepare_settings(ship_visible.RECIPE),
                       workers=1, progress=False)  # fmt: skip
    split = {r["stem"]: (ship_visible.source_of(r["image_key"]), r["split"]) for r in prepared.rows}
    exclude = yaml.safe_load(ship_visible.RECIPE.read_text())["train"]["exclude"]
    assert len(exclude) == len(set(exclude)) > 0
    assert {split[stem] for stem in exclude} == {("shenzhen", "train")}
    assert {split[stem] for stem in ship_visible.OTHER_RULE_VAL} == {("shenzhen", "val")}


def test_simulated_equipment_moves_image_and_mask_alike(ship_visible) -> None:
    """The shifts of `ship_visible.py shifts`: a padded film's mask, padded at its own size,
    still lies on the image's lungs once both are squashed to the working size; the intensity
    shifts leave the mask as it is and change the image the way they say."""
    image = np.full((299, 299), 200, np.uint8)
    image[60:240, 40:130] = image[60:240, 170:260] = 40  # two dark "lungs"
    mask = cv2.resize(np.where(image < 100, 255, 0).astype(np.uint8), (256, 256),
                      interpolation=cv2.INTER_NEAREST)  # fmt: skip
    squashed = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA) < 120
    resampling = (squashed != (mask > 127)).mean()  # the outlines' pixel from resizing alone
    for name in ("portrait", "landscape"):
        shifted, shifted_mask = ship_visible.SHIFTS[name](image, mask)
        assert shifted.shape != image.shape and shifted_mask.shape != mask.shape, name
        lungs = cv2.resize(shifted, (256, 256), interpolation=cv2.INTER_AREA) < 120
        drawn = cv2.resize(shifted_mask, (256, 256), interpolation=cv2.INTER_NEAREST) > 127
        assert (lungs != drawn).mean() < resampling + 0.005, name
        tall, wide = drawn.any(axis=1).sum(), drawn.any(axis=0).sum()
        assert (tall < 150) if name == "portrait" else (wide < 170), (name, tall, wide)

    def edge_energy(a: np.ndarray) -> float:
        return float((np.diff(a.astype(np.float32), axis=1) ** 2).sum())

    for name in ("soft", "sharp", "flat", "noise"):
        shifted, same_mask = ship_visible.SHIFTS[name](image, mask)
        assert same_mask is mask and shifted.shape == image.shape and shifted.dtype == np.uint8
    assert edge_energy(ship_visible.SHIFTS["soft"](image, mask)[0]) < 0.9 * edge_energy(image)
    assert edge_energy(ship_visible.SHIFTS["sharp"](image, mask)[0]) > 1.1 * edge_energy(image)
    flat = ship_visible.SHIFTS["flat"](image, mask)[0]
    assert flat.max() - flat.min() < 0.7 * (int(image.max()) - int(image.min()))
