"""Building blocks shared by every architecture, and the base class they all derive from.

Architecture files only wire these pieces together, so a change to a conv block (or to the size
check, or to weight init) lands in every model at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lungseg.core.errors import LungsegError


def valid_size(size: int, divisor: int) -> int:
    """Return the smallest multiple of ``divisor`` that is ``>= size``.

    Args:
        size: an image side in pixels.
        divisor: the factor a model needs the side to divide by.

    Returns:
        The side to pad or resize to, e.g. ``valid_size(250, 16) == 256``.
    """
    if size < 1 or divisor < 1:
        raise LungsegError(f"size and divisor must be positive, got size={size}, divisor={divisor}")
    return -(-size // divisor) * divisor


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters in ``model`` (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def dropout_layer(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or an identity when ``p == 0`` so it costs nothing in training."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class ConvBNReLU(nn.Sequential):
    """Convolution, optional batch norm, ReLU; spatial size is kept ("same" padding).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        dilation: atrous rate; padding grows with it so ``H, W`` are unchanged.
        batch_norm: add a ``BatchNorm2d`` after the convolution.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        batch_norm: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                # BN's shift makes a conv bias redundant; dropping it saves memory traffic.
                bias=not batch_norm,
            )
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ConvStack(nn.Sequential):
    """``n_convs`` 3x3 :class:`ConvBNReLU` layers; the first maps ``in -> out`` channels.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``
    """

    def __init__(
        self, in_channels: int, out_channels: int, n_convs: int = 2, batch_norm: bool = True
    ) -> None:
        super().__init__(
            *(
                ConvBNReLU(in_channels if i == 0 else out_channels, out_channels, 3, 1, batch_norm)
                for i in range(n_convs)
            )
        )


class UpConv(nn.Sequential):
    """2x2 transposed convolution with stride 2 (doubles ``H, W``), then optional BN and ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        batch_norm: batch norm after the transposed conv (ignored when ``linear``).
        linear: transposed conv only, as in U-Net and FCN, where a conv with BN and ReLU follows
            anyway; a decoder made only of ``UpConv`` blocks needs the nonlinearity.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, 2H, 2W)``
    """

    def __init__(
        self, in_channels: int, out_channels: int, batch_norm: bool = True, linear: bool = False
    ) -> None:
        norm = batch_norm and not linear
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=not norm)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if not linear:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv, ReLU, broadcast back to ``H, W``.

    No batch norm: on a 1x1 map with batch size 1 (a last short batch) BatchNorm has one value
    per channel and fails in training mode; the conv's bias does its job here.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(self.pool(x)))
        # size= (not scale_factor) keeps the ONNX graph valid for any input size.
        return F.interpolate(y, size=x.shape[-2:], mode="nearest")


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3).

    Parallel branches: a 1x1 conv, one 3x3 conv per atrous rate, and :class:`ImagePooling`;
    their outputs are concatenated and fused by a 1x1 conv, then dropout.

    Args:
        in_channels: channels of the feature map.
        out_channels: channels of every branch and of the fused output.
        rates: dilation rates of the 3x3 branches.
        dropout_p: dropout after the fusion conv.
        batch_norm: batch norm in the conv branches and the fusion conv.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int],
        dropout_p: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1, 1, batch_norm)]
        branches += [ConvBNReLU(in_channels, out_channels, 3, r, batch_norm) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBNReLU(len(branches) * out_channels, out_channels, 1, 1, batch_norm)
        self.dropout = dropout_layer(dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Iterating a fixed ModuleList is unrolled by torch.compile; no graph break.
        y = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.dropout(self.project(y))


class SegmentationHead(nn.Conv2d):
    """1x1 convolution to ``out_channels`` logits (no activation: losses take logits).

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``
    """

    def __init__(self, in_channels: int, out_channels: int = 1) -> None:
        super().__init__(in_channels, out_channels, 1)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal init (fan-in, ReLU gain) for every conv; BN to identity; biases to 0."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            if isinstance(m, nn.ConvTranspose2d):
                # PyTorch's fan-in for a transposed conv counts the wrong weight axis; with stride
                # s each output pixel sees in_channels * (k/s)^2 weights (in_channels for 2x2/2).
                taps = math.prod(k // s for k, s in zip(m.kernel_size, m.stride, strict=True))
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.in_channels * max(taps, 1))))
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SegmentationModel(nn.Module):
    """Base class of every registered model: input checks and the shared constructor arguments.

    Subclasses set :attr:`input_divisor` (the product of their down-sampling factors; an instance
    may raise it when a constructor argument adds down-sampling) and implement :meth:`logits`;
    ``forward`` checks the input, then calls it, so no architecture repeats the check.
    :attr:`name` is set by ``register_model``; ``create_model`` sets ``init_kwargs`` (all
    constructor arguments) on the instance, which with :attr:`name` is what a checkpoint needs
    to rebuild the model.

    Args:
        in_channels: image channels (1 for grayscale X-rays).
        n_filters: base width; deeper stages use multiples of it.
        dropout: dropout probability, in ``[0, 1)``.
        batch_norm: use batch norm after convolutions.
    """

    name: ClassVar[str] = ""
    input_divisor: int = 1
    init_kwargs: dict[str, Any]

    def __init__(self, in_channels: int, n_filters: int, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        if in_channels < 1 or n_filters < 1:
            raise LungsegError(
                f"{self.name}: in_channels and n_filters must be >= 1, "
                f"got in_channels={in_channels}, n_filters={n_filters}"
            )
        if not 0.0 <= dropout < 1.0:
            raise LungsegError(f"{self.name}: dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_channels, H, W)`` -> logits ``(B, 1, H, W)``, after
        :meth:`check_input`."""
        self.check_input(x)
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The architecture's own forward pass, on an input :meth:`check_input` accepted."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse an input the model cannot map to a same-size output, saying what would work.

        Args:
            x: the batch, expected ``(B, in_channels, H, W)`` with ``H, W`` divisible by
                :attr:`input_divisor`.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise LungsegError(
                f"{self.name} expects input of shape (B, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        self.check_input_size(x.shape[-2], x.shape[-1])

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`LungsegError` unless ``height`` and ``width`` divide by the divisor."""
        d = self.input_divisor
        if height % d or width % d:
            raise LungsegError(
                f"input size {height}x{width} is not divisible by {d} for {self.name}; "
                f"use {valid_size(height, d)}x{valid_size(width, d)} (pad or resize)"
            )
