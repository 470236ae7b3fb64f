"""The Python API: ``lungseg.load_model(...).predict / predict_proba``, inputs of every kind,
exactly the checkpoint's preprocessing, ensembles, and a light ``import lungseg``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import lungseg
from lungseg.core.config import from_dict
from lungseg.core.errors import LungsegError
from lungseg.data.preprocessing import PreprocessConfig, preprocess
from lungseg.inference.segmenter import Segmenter, ensemble, load_model
from lungseg.training import load_checkpoint, model_from_checkpoint, save_checkpoint
from trained import dice, read_gray

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEM = "1d435a4b"


@pytest.fixture(scope="module")
def segmenter(tiny_run) -> Segmenter:
    return load_model(tiny_run.run, device="cpu")


@pytest.fixture(scope="module")
def xray_path(examples_dir: Path) -> Path:
    return examples_dir / "COVID" / "images" / f"{STEM}.png"


@pytest.fixture(scope="module")
def xray(xray_path: Path) -> np.ndarray:
    """A real example X-ray cropped to a non-square shape, ``uint8[281, 263]``."""
    return read_gray(xray_path)[5:286, 20:283].copy()


def _manual_proba(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    """The pipeline written out: recorded preprocessing -> network -> sigmoid -> resize."""
    ckpt = load_checkpoint(checkpoint)
    config = from_dict(PreprocessConfig, ckpt["preprocess"], "checkpoint")
    x = torch.from_numpy(preprocess(image, config).astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        prob = torch.sigmoid(model_from_checkpoint(ckpt)(x))[0, 0].numpy()
    h, w = image.shape
    return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)


def test_predict_proba_is_the_recorded_pipeline(tiny_run, segmenter, xray) -> None:
    recorded = load_checkpoint(tiny_run.checkpoint)["preprocess"]
    assert vars(segmenter.preprocess) == recorded
    prob = segmenter.predict_proba(xray)
    assert prob.dtype == np.float32 and prob.shape == xray.shape
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    np.testing.assert_allclose(prob, _manual_proba(tiny_run.checkpoint, xray), atol=1e-5)


def test_predict_at_original_resolution(segmenter, examples_dir: Path, xray_path) -> None:
    mask = segmenter.predict(xray_path)
    image = read_gray(xray_path)
    assert mask.dtype == bool and mask.shape == image.shape
    truth = read_gray(examples_dir / "COVID" / "masks" / f"{STEM}.png")
    truth = cv2.resize(truth, image.shape[::-1], interpolation=cv2.INTER_NEAREST) > 127
    assert dice(mask, truth) > 0.5


def test_every_kind_of_input(segmenter, xray_path: Path) -> None:
    gray = read_gray(xray_path)
    expected = segmenter.predict_proba(gray)
    # RGB in RGB order (as Pillow/imageio give it): distinct channels tell RGB from BGR.
    rgb = np.dstack([gray, (gray * 0.6).astype(np.uint8), (gray * 0.2).astype(np.uint8)])
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full_like(gray, 255)])
    inputs = {
        "path": xray_path,
        "str": str(xray_path),
        "bytes": xray_path.read_bytes(),
        "array": gray,
    }
    for name, image in inputs.items():
        np.testing.assert_array_equal(segmenter.predict_proba(image), expected, err_msg=name)
    from_rgb = segmenter.predict_proba(rgb)
    assert from_rgb.shape == gray.shape
    np.testing.assert_array_equal(from_rgb, segmenter.predict_proba(luma))
    np.testing.assert_array_equal(segmenter.predict_proba(rgba), from_rgb)
    for image in (xray_path, xray_path.read_bytes(), gray, rgb, rgba):
        mask = segmenter.predict(image)
        assert mask.dtype == bool and mask.shape == gray.shape


def test_rgba_is_composited_on_black(segmenter, xray) -> None:
    alpha = np.zeros_like(xray)
    alpha[:, : xray.shape[1] // 2] = 255
    rgba = np.dstack([xray, xray, xray, alpha])
    composited = np.where(alpha > 0, xray, 0).astype(np.uint8)
    expected = segmenter.predict_proba(composited)
    np.testing.assert_array_equal(segmenter.predict_proba(rgba), expected)


def _other_checkpoint(tiny_run, path: Path) -> Path:
    """The tiny model with shifted output bias and the ``none`` preprocessing."""
    ckpt = load_checkpoint(tiny_run.checkpoint)
    last = [k for k in ckpt["state_dict"] if k.endswith("bias")][-1]
    ckpt["state_dict"][last] = ckpt["state_dict"][last] + 1.5
    ckpt["preprocess"] = vars(PreprocessConfig.from_preset("none", ckpt["size"]))
    save_checkpoint(path, ckpt)
    return path


def test_ensemble_averages_probabilities(tiny_run, segmenter, xray, tmp_path: Path) -> None:
    other = load_model(_other_checkpoint(tiny_run, tmp_path / "other.pt"), device="cpu")
    both = ensemble([segmenter, other])
    assert both.name == "ensemble" and len(both.networks) == 2
    a, b = segmenter.predict_proba(xray), other.predict_proba(xray)
    assert np.abs(a - b).max() > 0.05, "the members must disagree for the test to mean anything"
    np.testing.assert_allclose(both.predict_proba(xray), (a + b) / 2, atol=1e-6)
    mask = both.predict(xray)
    assert mask.dtype == bool and mask.shape == xray.shape


def test_load_model_errors(segmenter, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(LungsegError, match="model not found"):
        load_model(tmp_path / "missing.pt")
    monkeypatch.setattr("lungseg.models.shipped.weights_dir", lambda: tmp_path / "no-weights")
    with pytest.raises(LungsegError, match="not in this installation"):
        load_model("fcn")
    with pytest.raises(LungsegError, match="image file not found"):
        segmenter.predict(tmp_path / "none.png")


def test_load_model_is_exported_lazily() -> None:
    code = (
        "import sys, lungseg; "
        "print(sorted(m for m in ('torch', 'cv2', 'numpy', 'lungseg.inference.segmenter') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert lungseg.load_model is load_model
    assert "load_model" in lungseg.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lungseg.nothing  # noqa: B018


@pytest.mark.slow
@pytest.mark.shared_data
def test_float16_inference_keeps_the_masks_of_float32(covid_cxr):
    """The default on CUDA is float16 autocast: on real X-rays its masks at the working size
    must be those of float32 (here run on the CPU, which emulates float16 slowly)."""
    images = sorted((covid_cxr / "COVID" / "images").glob("*.png"))[::40][:8]
    pixels = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in images]
    full = load_model("unet-fast", device="cpu", precision="float32")
    half = load_model("unet-fast", device="cpu", precision="float16")
    assert half.networks[0][0].precision == "float16"
    a = full.proba_preprocessed([full.preprocessed(p) for p in pixels]) > 0.5
    b = half.proba_preprocessed([half.preprocessed(p) for p in pixels]) > 0.5
    agree = [2 * (x & y).sum() / (x.sum() + y.sum()) for x, y in zip(a, b, strict=True)]
    assert np.mean(agree) > 0.999 and np.min(agree) > 0.995, agree
