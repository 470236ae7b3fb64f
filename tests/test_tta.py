"""Test-time augmentation: each view is warped back onto the image, pixels a view does not show
are averaged over the views that do, and ``--tta`` reaches evaluate, segment and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.core.errors import LungsegError
from lungseg.inference.segmenter import load_model
from lungseg.inference.tta import DEFAULT_VIEWS, TTANetwork, View, tta_probabilities, view_matrix
from trained import lungseg, read_gray

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def batch(examples_dir: Path) -> np.ndarray:
    """Two real example X-rays, ``float32[2, 1, 256, 256]`` in [0, 1]."""
    paths = sorted((examples_dir / "COVID" / "images").glob("*.png"))[:2]
    images = [cv2.resize(read_gray(p), (256, 256), interpolation=cv2.INTER_AREA) for p in paths]
    return (np.stack(images)[:, None] / np.float32(255.0)).astype(np.float32)


def _intensity(batch: np.ndarray) -> np.ndarray:
    """A "network" whose probability is the pixel itself: it moves with the image."""
    return batch[:, 0].copy()


@pytest.mark.parametrize("view", [View(scale=0.9), View(scale=1.1), View(rotation=5.0)])
def test_each_view_is_warped_back_onto_the_image(batch: np.ndarray, view: View) -> None:
    out = tta_probabilities(_intensity, batch, [view])
    shown = _intensity(batch)
    inner = np.s_[:, 40:-40, 40:-40]  # every view covers the centre
    # The view itself is far from the image, its prediction warped back is close to it
    # (two bilinear resamplings blur it slightly).
    moved = cv2.warpAffine(shown[0], view_matrix(view, 256, 256), (256, 256))
    assert np.abs(moved - shown[0])[40:-40, 40:-40].mean() > 0.02
    assert np.abs(out - shown)[inner].mean() < 0.01


def test_uncovered_pixels_are_averaged_over_the_views_that_show_them(batch: np.ndarray) -> None:
    constant = lambda b: np.full((len(b), *b.shape[2:]), 0.7, np.float32)  # noqa: E731
    # A zoomed-in view does not show the image border; without weighting by coverage the border
    # would be averaged with zeros.
    out = tta_probabilities(constant, batch, DEFAULT_VIEWS)
    np.testing.assert_allclose(out, 0.7, atol=1e-5)
    only_zoomed = tta_probabilities(constant, batch, [View(scale=1.1)])
    assert only_zoomed[:, 0, 0].max() == 0.0  # nothing showed the corner
    np.testing.assert_allclose(only_zoomed[:, 128, 128], 0.7, atol=1e-6)


def test_identity_view_alone_is_the_network(batch: np.ndarray) -> None:
    np.testing.assert_array_equal(tta_probabilities(_intensity, batch, [View()]), batch[:, 0])


def test_bad_views_and_shapes() -> None:
    with pytest.raises(LungsegError, match="scale"):
        View(scale=3.0)
    with pytest.raises(LungsegError, match="rotation"):
        View(rotation=90.0)
    with pytest.raises(LungsegError, match=r"\(B, 1, H, W\)"):
        tta_probabilities(_intensity, np.zeros((2, 64, 64), np.float32))
    with pytest.raises(LungsegError, match="at least one view"):
        tta_probabilities(_intensity, np.zeros((1, 1, 64, 64), np.float32), [])


def test_segmenter_with_tta(tiny_run, examples_dir: Path) -> None:
    plain = load_model(tiny_run.run, device="cpu")
    augmented = load_model(tiny_run.run, device="cpu", tta=True)
    assert augmented.name == f"{plain.name}+tta"
    assert augmented.info["tta"] == [v.describe() for v in DEFAULT_VIEWS]
    assert augmented.with_tta() is augmented  # never wrapped twice
    assert isinstance(augmented.networks[0][0], TTANetwork)
    image = examples_dir / "COVID" / "images" / "1d435a4b.png"
    p, q = plain.predict_proba(image), augmented.predict_proba(image)
    assert p.shape == q.shape and 0.0 <= q.min() and q.max() <= 1.0
    # Same model, so closely related maps, but averaged over five views, so not the same map.
    assert np.corrcoef(p.ravel(), q.ravel())[0, 1] > 0.9
    assert np.abs(p - q).max() > 0.01
    both = load_model("ensemble", device="cpu", tta=True)
    assert both.name == "ensemble+tta" and len(both.networks) == 3
    assert all(isinstance(net, TTANetwork) for net, _ in both.networks)


def test_evaluate_and_segment_with_tta(examples_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, err = lungseg(
        ["evaluate", "--model", "unet-fast", "--tta", "--data", examples_dir, "--split", "all",
         "--out", tmp_path / "eval"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "unet-fast+tta" and metrics["n_images"] == 12
    assert metrics["tta"] == [v.describe() for v in DEFAULT_VIEWS]
    assert metrics["dice_mean"] > 0.93
    image = examples_dir / "COVID" / "images" / "1d435a4b.png"
    code, out, err = lungseg(
        ["segment", image, "--model", "unet-fast", "--tta", "--out", tmp_path / "seg"], capsys
    )
    assert code == 0, err
    assert "unet-fast+tta" in out
    mask = read_gray(tmp_path / "seg" / "masks" / "1d435a4b.png.png")
    assert mask.shape == read_gray(image).shape and 0 < (mask > 0).mean() < 0.8


def test_device_tta_warps_like_opencv():
    """The GPU path (grid_sample) gives the host path's probabilities (cv2.warpAffine), here
    run on the CPU: same views, same kernel, same border, same pixel centres."""
    import torch

    from lungseg.inference.tta import DEFAULT_VIEWS, tta_probabilities, tta_probabilities_torch

    batch = np.random.default_rng(0).random((2, 1, 64, 48)).astype(np.float32)

    class Squash:
        """A 'network' that is a fixed pixel-wise function, so any misplaced warp shows."""

        def __call__(self, x):
            return (x[:, 0] ** 2).astype(np.float32)

        def probabilities(self, x):
            return x[:, 0] ** 2

    host = tta_probabilities(Squash(), batch, DEFAULT_VIEWS)
    device = tta_probabilities_torch(Squash(), torch.from_numpy(batch), DEFAULT_VIEWS).numpy()
    np.testing.assert_allclose(device, host, atol=2e-5)
