"""Each preprocessing step and every preset against direct OpenCV calls on a real chest X-ray."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from lungseg.core.config import from_dict, to_dict
from lungseg.core.errors import LungsegError
from lungseg.data.preprocessing import (
    PRESETS,
    PreprocessConfig,
    clahe,
    gaussian_blur,
    morphological_gradient,
    normalize,
    preprocess,
    resize_image,
    resize_mask,
)
from lungseg.data.settings import PrepareConfig

STEM = "1d435a4b"


@pytest.fixture(scope="module")
def xray(examples_dir: Path) -> np.ndarray:
    """A real 299x299 8-bit chest X-ray of the bundled examples."""
    image = cv2.imread(str(examples_dir / "COVID" / "images" / f"{STEM}.png"), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape == (299, 299)
    return image


@pytest.fixture(scope="module")
def lung_mask(examples_dir: Path) -> np.ndarray:
    """Its real 256x256 lung mask as bool."""
    mask = cv2.imread(str(examples_dir / "COVID" / "masks" / f"{STEM}.png"), cv2.IMREAD_GRAYSCALE)
    return mask >= 128


def _direct(image: np.ndarray, preset: str, size: int) -> np.ndarray:
    """The preset written out as plain OpenCV calls, with the documented parameters."""
    limit = int(size * 1.25)
    if max(image.shape) > limit:
        image = cv2.resize(image, (limit, limit), interpolation=cv2.INTER_AREA)
    if preset in ("seed", "clahe"):
        image = cv2.GaussianBlur(image, (5, 5), 0)
    if preset == "seed":
        kernel = np.ones((3, 3), np.uint8)
        image = cv2.morphologyEx(image, cv2.MORPH_GRADIENT, kernel)
        image = cv2.morphologyEx(image, cv2.MORPH_GRADIENT, kernel)
    if preset in ("seed", "clahe"):
        image = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image)
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)
    interp = cv2.INTER_AREA if image.shape[0] * image.shape[1] > size * size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def test_gaussian_blur_is_opencv(xray: np.ndarray) -> None:
    out = gaussian_blur(xray, 5, 0.0)
    np.testing.assert_array_equal(out, cv2.GaussianBlur(xray, (5, 5), 0))
    assert not np.array_equal(out, xray)
    np.testing.assert_array_equal(gaussian_blur(xray, 7, 1.5), cv2.GaussianBlur(xray, (7, 7), 1.5))


def test_morphological_gradient_is_opencv_twice(xray: np.ndarray) -> None:
    kernel = np.ones((3, 3), np.uint8)
    once = cv2.morphologyEx(xray, cv2.MORPH_GRADIENT, kernel)
    twice = cv2.morphologyEx(once, cv2.MORPH_GRADIENT, kernel)
    np.testing.assert_array_equal(morphological_gradient(xray), twice)
    np.testing.assert_array_equal(morphological_gradient(xray, 3, 1), once)
    assert not np.array_equal(once, twice)


def test_clahe_is_opencv(xray: np.ndarray) -> None:
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(xray)
    np.testing.assert_array_equal(clahe(xray), expected)
    other = cv2.createCLAHE(clipLimit=4.0, tileGridSize=(4, 4)).apply(xray)
    np.testing.assert_array_equal(clahe(xray, 4.0, 4), other)
    assert not np.array_equal(expected, other)


def test_normalize_is_min_max(xray: np.ndarray) -> None:
    narrow = (xray // 4 + 40).astype(np.uint8)  # 40..103: a low-contrast version of the X-ray
    lo, hi = float(narrow.min()), float(narrow.max())
    expected = np.rint((narrow.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    out = normalize(narrow)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_array_equal(normalize(np.full((8, 8), 7, np.uint8)), 0)


def test_resize_image_area_when_shrinking_linear_when_growing(xray: np.ndarray) -> None:
    small = resize_image(xray, 64)
    np.testing.assert_array_equal(small, cv2.resize(xray, (64, 64), interpolation=cv2.INTER_AREA))
    assert not np.array_equal(small, cv2.resize(xray, (64, 64), interpolation=cv2.INTER_LINEAR))
    large = resize_image(xray, 512)
    linear = cv2.resize(xray, (512, 512), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(large, linear)
    assert not np.array_equal(large, cv2.resize(xray, (512, 512), interpolation=cv2.INTER_AREA))
    assert resize_image(xray, 299) is xray


def test_resize_mask_stays_binary(lung_mask: np.ndarray) -> None:
    for shape in [(64, 64), (299, 299), (100, 37)]:
        out = resize_mask(lung_mask, shape)
        assert out.dtype == bool and out.shape == shape
        expected = cv2.resize(
            lung_mask.view(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST
        )
        np.testing.assert_array_equal(out, expected.astype(bool))
    as255 = lung_mask.astype(np.uint8) * 255
    out = resize_mask(as255, (64, 64))
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}
    # The lung share survives nearest-neighbour resizing within a couple of points.
    assert abs(resize_mask(lung_mask, (64, 64)).mean() - lung_mask.mean()) < 0.02


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_equals_direct_opencv(xray: np.ndarray, preset: str, size: int) -> None:
    # 256 keeps the 299x299 original (filters at full resolution, as the study did); 64 first
    # shrinks it to 80x80 so the kernels cover the same share of the chest.
    config = PreprocessConfig.from_preset(preset, size)
    out = preprocess(xray, config)
    np.testing.assert_array_equal(out, _direct(xray, preset, size))


def test_presets_differ(xray: np.ndarray) -> None:
    outs = [preprocess(xray, PreprocessConfig.from_preset(p, 64)) for p in PRESETS]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not np.array_equal(outs[i], outs[j])


def test_preset_steps() -> None:
    steps = {p: PreprocessConfig.from_preset(p).steps() for p in PRESETS}
    assert steps["seed"] == [
        "gaussian_blur",
        "morphological_gradient",
        "clahe",
        "normalize",
        "resize",
    ]
    assert steps["clahe"] == ["gaussian_blur", "clahe", "normalize", "resize"]
    assert steps["none"] == ["normalize", "resize"]
    assert PreprocessConfig() == PreprocessConfig.from_preset("seed")


@pytest.mark.parametrize("preset", PRESETS)
def test_config_round_trips(preset: str) -> None:
    config = PreprocessConfig.from_preset(preset, 96)
    as_dict = to_dict(config)
    assert from_dict(PreprocessConfig, as_dict) == config
    # Through YAML text too, as the cache manifest and checkpoints store it.
    assert from_dict(PreprocessConfig, yaml.safe_load(yaml.safe_dump(as_dict))) == config
    prep = PrepareConfig(config, val_fraction=0.25, test_fraction=0.15, seed=3)
    assert from_dict(PrepareConfig, yaml.safe_load(yaml.safe_dump(to_dict(prep)))) == prep


def test_unknown_preset_lists_valid_ones() -> None:
    with pytest.raises(LungsegError) as info:
        PreprocessConfig.from_preset("sharpen")
    message = str(info.value)
    assert "sharpen" in message
    for name in PRESETS:
        assert name in message


def test_unknown_setting_is_an_error() -> None:
    with pytest.raises(LungsegError, match="blur_size"):
        from_dict(PreprocessConfig, {"blur_size": 5})


@pytest.mark.parametrize("kwargs", [{"size": 8}, {"blur_ksize": 4}, {"blur_ksize": 0}])
def test_invalid_config_rejected(kwargs: dict) -> None:
    with pytest.raises(LungsegError):
        PreprocessConfig(**kwargs)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("shape", [(299, 299), (200, 350), (40, 30)])
def test_dtype_and_shape_contract(xray: np.ndarray, preset: str, shape: tuple[int, int]) -> None:
    image = cv2.resize(xray, shape[::-1], interpolation=cv2.INTER_AREA)
    out = preprocess(image, PreprocessConfig.from_preset(preset, 64))
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert out.max() > out.min()


@pytest.mark.parametrize("step", [gaussian_blur, morphological_gradient, clahe, normalize])
def test_steps_keep_uint8_and_shape(xray: np.ndarray, step) -> None:
    crop = xray[10:210, 5:290]
    out = step(crop)
    assert out.dtype == np.uint8 and out.shape == crop.shape


@pytest.mark.parametrize(
    "bad", [np.zeros((32, 32), np.float32), np.zeros((32, 32, 3), np.uint8), np.zeros(32, np.uint8)]
)
def test_preprocess_rejects_other_dtypes_and_shapes(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess(bad, PreprocessConfig(size=32))
