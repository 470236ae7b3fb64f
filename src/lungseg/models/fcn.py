"""A small fully convolutional network (Long et al., 2015) with optional FCN-8s-style skips."""

from __future__ import annotations

import torch
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


def _skip_name(stage: int) -> str:
    """The skip from pooling stage ``stage``: ``skip`` (the depth-2 name), ``skip2``, ..."""
    return "skip" if stage == 1 else f"skip{stage}"


@register_model("fcn")
class FCN(SegmentationModel):
    """FCN: conv blocks with pooling (2 by default), as many with 2x upsampling, then 3 convs.

    With the default ``depth=2``, the study's network: ``2 conv (n) + pool``, ``2 conv (2n) +
    pool``, ``2 conv (4n) + up``, ``2 conv (2n) + up``, then ``2 conv (n)`` and the 1x1 output
    conv as the block's third convolution. A larger ``depth`` adds a pooling stage (width
    doubling) and its upsampling stage per level, as Long et al.'s FCN pools five times: more
    context per pixel (at 256 px, two poolings see too little of the chest to tell lung from
    bright background).

    With ``skips``, the pooled output of each encoder stage but the deepest (``H/2``,
    ``H/4``, ...) is projected by a 1x1 conv and added to the upsampled map of the same size, as
    FCN-8s adds scored pooling features to its upsampled predictions. Addition rather than
    concatenation keeps every later conv the same width. At ``depth=2`` it did not help
    (validation split, 16 filters, 128 px, 15 epochs, two seeds: mean Dice 0.8985 with the skip
    against 0.9031 without, within the spread between seeds); deeper networks need it to recover
    the detail the extra poolings lose.

    Args:
        n_filters: width of the first block.
        dropout: dropout after each pooling and each upsampling.
        batch_norm: batch norm after every convolution.
        in_channels: image channels.
        skips: add the skip connections from the pooling stages.
        depth: pooling stages (2 to 6).

    Shape:
        ``(B, in_channels, H, W) -> (B, 1, H, W)`` logits; ``H, W`` divisible by ``2**depth``.
    """

    input_divisor = 4

    def __init__(
        self,
        n_filters: int = 16,
        dropout: float = 0.1,
        batch_norm: bool = True,
        in_channels: int = 1,
        skips: bool = False,
        depth: int = 2,
    ) -> None:
        super().__init__(in_channels, n_filters, dropout, batch_norm)
        if not 2 <= depth <= 6:
            raise LungsegError(f"fcn: depth must be between 2 and 6, got {depth}")
        self.depth = depth
        self.input_divisor = 2**depth
        n = n_filters
        # Blocks are numbered as in the depth-2 network (block1 .. block5), so its weights load.
        widths = [n * 2**i for i in range(depth + 1)]  # n, 2n, ..., 2**depth n
        encoder = [ConvStack(in_channels, n, 2, batch_norm)]
        encoder += [ConvStack(widths[i - 1], widths[i], 2, batch_norm) for i in range(1, depth)]
        decoder = [
            nn.Sequential(
                ConvStack(widths[depth - 1], widths[depth], 2, batch_norm),
                UpConv(widths[depth], widths[depth - 1], linear=True),
            )
        ]
        decoder += [
            nn.Sequential(
                ConvStack(widths[i], widths[i], 2, batch_norm),
                UpConv(widths[i], widths[i - 1], linear=True),
            )
            for i in range(depth - 1, 0, -1)
        ]
        for index, block in enumerate([*encoder, *decoder], start=1):
            self.add_module(f"block{index}", block)
        self.add_module(f"block{2 * depth + 1}", ConvStack(n, n, 2, batch_norm))
        self.head = SegmentationHead(n)
        self.pool = nn.MaxPool2d(2)
        self.dropout = dropout_layer(dropout)
        # skip (from the first pooling stage, the depth-2 name), skip2, skip3, ...: the pooled
        # output of stage i (widths[i - 1] channels) to the upsampled map of the same size.
        for i in range(1, depth) if skips else ():
            self.add_module(_skip_name(i), nn.Conv2d(widths[i - 1], widths[i], 1))
        self.skips = skips
        init_weights(self)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: images ``(B, in_channels, H, W)``, ``H, W`` divisible by ``2**depth``.

        Returns:
            Logits ``(B, 1, H, W)``.
        """
        blocks = [getattr(self, f"block{i}") for i in range(1, 2 * self.depth + 2)]
        pooled = []
        for block in blocks[: self.depth]:
            x = self.dropout(self.pool(block(x)))
            pooled.append(x)
        # pooled[i - 1] is stage i's output (H / 2**i); decoder step k ends at H / 2**(depth-k-1).
        for k, block in enumerate(blocks[self.depth : 2 * self.depth]):
            x = block(x)
            stage = self.depth - k - 1
            if self.skips and stage >= 1:
                x = x + getattr(self, _skip_name(stage))(pooled[stage - 1])
            x = self.dropout(x)
        return self.head(blocks[-1](x))
