"""Every registered model: shapes, gradients, size checks; and the registry's error messages."""

from __future__ import annotations

import pytest
import torch

from lungseg.errors import LungsegError
from lungseg.models import (
    count_parameters,
    create_model,
    list_models,
    model_info,
    valid_size,
)

# Narrow models keep the whole file to a few seconds on two shared cores.
SMALL = {"n_filters": 4}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [64, 96])
def test_forward_backward_shape_and_finite(name: str, size: int) -> None:
    model = create_model(name, **SMALL)
    x = torch.randn(2, 1, size, size)
    out = model(x)
    assert out.shape == (2, 1, size, size)
    assert torch.isfinite(out).all()
    out.float().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", list_models())
def test_without_batch_norm_and_with_dropout(name: str) -> None:
    model = create_model(name, **SMALL, batch_norm=False, dropout=0.3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    out = model(torch.randn(2, 1, 64, 64))
    out.mean().backward()
    assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_dropout_random_in_train_deterministic_in_eval(name: str) -> None:
    model = create_model(name, **SMALL, dropout=0.5)
    x = torch.randn(2, 1, 64, 64)
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", list_models())
def test_wrong_size_suggests_valid_size(name: str) -> None:
    divisor = model_info(name).input_divisor
    model = create_model(name, **SMALL)
    bad = 2 * divisor + 2
    good = valid_size(bad, divisor)
    with pytest.raises(LungsegError, match=f"{bad}x{bad}.*divisible by {divisor}.*{good}x{good}"):
        model(torch.zeros(1, 1, bad, bad))


def test_unet_message_names_model_and_fix() -> None:
    model = create_model("unet", **SMALL)
    with pytest.raises(LungsegError) as err:
        model(torch.zeros(1, 1, 250, 250))
    assert str(err.value) == (
        "input size 250x250 is not divisible by 16 for unet; use 256x256 (pad or resize)"
    )


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(LungsegError, match=r"\(B, 1, H, W\)"):
        create_model("unet", **SMALL)(torch.zeros(1, 3, 64, 64))


def test_in_channels() -> None:
    model = create_model("deeplabv3", **SMALL, in_channels=3)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_valid_size() -> None:
    assert valid_size(250, 16) == 256
    assert valid_size(256, 16) == 256
    assert valid_size(1, 8) == 8


def test_list_models_sorted_and_complete() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"unet", "fcn", "deeplabv3"} <= set(names)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(LungsegError, match="unknown model 'resnet'") as err:
        create_model("resnet")
    for name in list_models():
        assert name in str(err.value)


def test_unknown_kwarg_names_it_and_valid_ones() -> None:
    with pytest.raises(LungsegError, match="n_filter for model unet") as err:
        create_model("unet", n_filter=8)
    assert "n_filters" in str(err.value) and "batch_norm" in str(err.value)


def test_init_kwargs_rebuild_the_same_model() -> None:
    model = create_model("fcn", n_filters=4, skips=False)
    assert model.init_kwargs == {**model_info("fcn").defaults, "n_filters": 4, "skips": False}
    rebuilt = create_model(model.name, **model.init_kwargs)
    rebuilt.load_state_dict(model.state_dict())


def test_fcn_skip_adds_only_the_projection() -> None:
    with_skips = count_parameters(create_model("fcn", **SMALL, skips=True))
    without = count_parameters(create_model("fcn", **SMALL, skips=False))
    n = SMALL["n_filters"]
    assert with_skips - without == n * 2 * n + 2 * n


def test_default_unet_size() -> None:
    assert 1.5e6 < count_parameters(create_model("unet")) < 2.5e6


def test_bad_values_are_refused() -> None:
    with pytest.raises(LungsegError, match="dropout"):
        create_model("unet", dropout=1.0)
    with pytest.raises(LungsegError, match="aspp_rates"):
        create_model("deeplabv3", aspp_rates=(0, 6))


def test_unet_downsample_is_the_same_unet_run_at_half_resolution() -> None:
    fast = create_model("unet", **SMALL, downsample=2).eval()
    full = create_model("unet", **SMALL).eval()
    full.load_state_dict(fast.state_dict())  # same weights: downsample adds no parameters
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = torch.nn.functional.interpolate(
            full(torch.nn.functional.avg_pool2d(x, 2)), scale_factor=2.0, mode="bilinear"
        )
        got = fast(x)
    assert got.shape == (2, 1, 64, 64)
    torch.testing.assert_close(got, expected)
    assert fast.input_divisor == 32 and full.input_divisor == 16
    with pytest.raises(LungsegError, match="not divisible by 32"):
        fast(torch.rand(1, 1, 48, 48))
    with pytest.raises(LungsegError, match="downsample must be 1, 2 or 4"):
        create_model("unet", downsample=3)
