"""U-Net (Ronneberger et al., 2015) at a configurable width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lungseg.core.errors import LungsegError
from lungseg.models._registry import register_model
from lungseg.models.blocks import (
    ConvStack,
    SegmentationHead,
    SegmentationModel,
    UpConv,
    dropout_layer,
    init_weights,
)


@register_model("unet")
class UNet(SegmentationModel):
    """U-Net: 4 down blocks, a bottleneck, 4 up blocks with skip concatenation.

    Widths are ``n_filters * (1, 2, 4, 8)`` down, ``16 * n_filters`` at the bottleneck; with the
    default ``n_filters=16`` that is about 1.9 M parameters.

    Args:
        n_filters: width of the first block.
        dropout: dropout after each pooling and after each skip concatenation.
        batch_norm: batch norm after every convolution.
        in_channels: image channels.
        downsample: run the network at ``1 / downsample`` of the input resolution: the input is
            average-pooled by this factor and the logits are bilinearly upsampled back, so the
            output keeps the input's size. ``2`` costs a quarter of the compute; it is how the
            fast variant (``unet-fast``) meets the CPU latency goal.

    Shape:
        ``(B, in_channels, H, W) -> (B, 1, H, W)`` logits; ``H, W`` divisible by
        ``16 * downsample``.
    """

    input_divisor = 16

    def __init__(
        self,
        n_filters: int = 16,
        dropout: float = 0.1,
        batch_norm: bool = True,
        in_channels: int = 1,
        downsample: int = 1,
    ) -> None:
        super().__init__(in_channels, n_filters, dropout, batch_norm)
        if downsample not in (1, 2, 4):
            raise LungsegError(f"unet: downsample must be 1, 2 or 4, got {downsample}")
        self.downsample = downsample
        # The instance's divisor: the pooled input must still divide by 16.
        self.input_divisor = 16 * downsample
        widths = [n_filters * 2**i for i in range(5)]
        self.down = nn.ModuleList(
            ConvStack(c_in, c_out, 2, batch_norm)
            for c_in, c_out in zip([in_channels, *widths[:3]], widths[:4], strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvStack(widths[3], widths[4], 2, batch_norm)
        self.up = nn.ModuleList(UpConv(c * 2, c, linear=True) for c in reversed(widths[:4]))
        self.up_convs = nn.ModuleList(
            ConvStack(c * 2, c, 2, batch_norm) for c in reversed(widths[:4])
        )
        self.dropout = dropout_layer(dropout)
        self.head = SegmentationHead(n_filters)
        init_weights(self)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: images ``(B, in_channels, H, W)``, ``H, W`` divisible by ``16 * downsample``.

        Returns:
            Logits ``(B, 1, H, W)``.
        """
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.dropout(self.pool(x))
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.up, self.up_convs, reversed(skips), strict=True):
            x = conv(self.dropout(torch.cat([up(x), skip], dim=1)))
        logits = self.head(x)
        if self.downsample > 1:
            # Pooling and align_corners=False upsampling share pixel centres: no half-pixel shift.
            logits = F.interpolate(
                logits, scale_factor=float(self.downsample), mode="bilinear", align_corners=False
            )
        return logits
