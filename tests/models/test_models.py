"""Every registered model: shapes, gradients, size checks; and the registry's error messages."""

from __future__ import annotations

import pytest
import torch

from lungseg.core.errors import LungsegError
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


@pytest.mark.parametrize("depth", [3, 4])
def test_fcn_depth_adds_pooling_stages_and_their_skips(depth: int) -> None:
    n = SMALL["n_filters"]
    deep = create_model("fcn", **SMALL, depth=depth, skips=True)
    plain = create_model("fcn", **SMALL, depth=depth, skips=False)
    widths = [n * 2**i for i in range(depth)]
    # One 1x1 projection (weights + bias) per pooling stage but the deepest.
    expected = sum(widths[i - 1] * widths[i] + widths[i] for i in range(1, depth))
    assert count_parameters(deep) - count_parameters(plain) == expected
    assert deep.input_divisor == 2**depth
    x = torch.randn(2, 1, 64, 64)
    deep(x).mean().backward()
    for name in ["skip", *(f"skip{i}" for i in range(2, depth))]:
        grad = getattr(deep, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    with pytest.raises(LungsegError, match=f"not divisible by {2**depth}"):
        deep(torch.randn(1, 1, 2**depth * 3 + 4, 2**depth * 3 + 4))


def test_fcn_depth_widens_the_receptive_field() -> None:
    """A pixel 80 px away reaches the output through four poolings, not through the study's two
    (whose receptive field is about 45 px wide)."""

    def reach(depth: int) -> float:
        model = create_model("fcn", **SMALL, depth=depth).eval()
        x = torch.rand(1, 1, 128, 128, requires_grad=True)
        model(x)[0, 0, 80, 80].backward()
        return float(x.grad[0, 0, 0, 0].abs())

    assert reach(2) == 0.0
    assert reach(4) > 0.0


def test_fcn_depth_two_is_the_study_network() -> None:
    study = create_model("fcn", **SMALL)
    assert study.init_kwargs["depth"] == 2 and study.input_divisor == 4
    names = {name.split(".")[0] for name in study.state_dict()}
    assert names == {"block1", "block2", "block3", "block4", "block5", "head"}
    with pytest.raises(LungsegError, match="depth must be between 2 and 6"):
        create_model("fcn", depth=1)


def test_deeplabv3_skips_add_low_level_features_to_the_same_decoder() -> None:
    plus = create_model("deeplabv3", **SMALL, skips=True).eval()
    plain = create_model("deeplabv3", **SMALL).eval()
    extra = {k for k in plus.state_dict() if k.startswith(("skip2.", "skip4."))}
    assert extra == {"skip2.weight", "skip2.bias", "skip4.weight", "skip4.bias"}
    plain.load_state_dict({k: v for k, v in plus.state_dict().items() if k not in extra})
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(plus(x), plain(x))
        for name in ("skip2", "skip4"):  # with the projections at zero it is the plain network
            getattr(plus, name).weight.zero_()
            getattr(plus, name).bias.zero_()
        torch.testing.assert_close(plus(x), plain(x))


def test_changed_lists_only_arguments_that_differ_from_the_defaults() -> None:
    info = model_info("deeplabv3")
    # A checkpoint stores the tuple default as a list: still the default.
    assert info.changed({"aspp_rates": [6, 12, 18], "n_filters": 16, "skips": True}) == {
        "skips": True
    }
    assert info.changed({"aspp_rates": [4, 8]}) == {"aspp_rates": [4, 8]}


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
