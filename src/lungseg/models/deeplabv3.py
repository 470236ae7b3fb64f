"""A small DeepLabV3 (Chen et al., 2017): conv feature extractor, ASPP, transposed-conv decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lungseg.core.errors import LungsegError
from lungseg.models._registry import register_model
from lungseg.models.blocks import (
    ASPP,
    ConvStack,
    SegmentationHead,
    SegmentationModel,
    UpConv,
    dropout_layer,
    init_weights,
)

# The feature map is H/8: 32x32 for the 256x256 inputs we train on. That is the size of the 33x33
# map (513 crop, output stride 16) for which DeepLabV3 tuned rates (6, 12, 18), so the same rates
# cover the same fraction of the image here; the 1x1 branch stands in for rate 1. Larger rates
# would mostly sample zero padding at 256 (a 3x3 kernel at rate >= 32 degenerates to a 1x1).
DEFAULT_ASPP_RATES = (6, 12, 18)


@register_model("deeplabv3")
class DeepLabV3(SegmentationModel):
    """DeepLabV3: 3-block conv extractor (H/8), ASPP, 3 transposed-conv blocks back to H.

    Extractor blocks have 2, 2 and 3 convolutions of width ``n, 2n, 4n``, each followed by max
    pooling. ASPP (1x1, one 3x3 per rate, image pooling) outputs ``8n`` channels; the decoder
    halves that three times (``4n, 2n, n``) while doubling ``H, W``, then the 1x1 output conv.

    Args:
        n_filters: width of the first extractor block.
        dropout: dropout after each pooling and after the ASPP fusion.
        batch_norm: batch norm after every convolution (not in the image-pooling branch).
        in_channels: image channels.
        aspp_rates: dilation rates of the ASPP 3x3 branches, for the H/8 feature map.
        skips: add the pooled ``H/4`` and ``H/2`` extractor features, each projected by a 1x1
            conv, to the decoder maps of the same size, as DeepLabV3+ (Chen et al., 2018) feeds
            low-level features to its decoder to recover the boundary detail that an ``H/8``
            map loses. Addition keeps the decoder's widths, so the other weights are unchanged.
            Off by default: on the validation split (16 filters, 256 px, 80 epochs, clean
            postprocessing) it scored as the plain network did, mean Dice 0.9525 both.

    Shape:
        ``(B, in_channels, H, W) -> (B, 1, H, W)`` logits; ``H, W`` divisible by 8.
    """

    input_divisor = 8

    def __init__(
        self,
        n_filters: int = 16,
        dropout: float = 0.1,
        batch_norm: bool = True,
        in_channels: int = 1,
        aspp_rates: Sequence[int] = DEFAULT_ASPP_RATES,
        skips: bool = False,
    ) -> None:
        super().__init__(in_channels, n_filters, dropout, batch_norm)
        rates = tuple(aspp_rates)
        if not all(isinstance(r, int) and r >= 1 for r in rates):
            raise LungsegError(f"deeplabv3: aspp_rates must be integers >= 1, got {rates}")
        n = n_filters
        self.encoder = nn.Sequential(
            ConvStack(in_channels, n, 2, batch_norm),
            nn.MaxPool2d(2),
            dropout_layer(dropout),
            ConvStack(n, 2 * n, 2, batch_norm),
            nn.MaxPool2d(2),
            dropout_layer(dropout),
            ConvStack(2 * n, 4 * n, 3, batch_norm),
            nn.MaxPool2d(2),
            dropout_layer(dropout),
        )
        self.aspp = ASPP(4 * n, 8 * n, rates, dropout, batch_norm)
        self.decoder = nn.Sequential(
            UpConv(8 * n, 4 * n, batch_norm),
            UpConv(4 * n, 2 * n, batch_norm),
            UpConv(2 * n, n, batch_norm),
        )
        self.head = SegmentationHead(n)
        # Pooled extractor outputs: n channels at H/2 and 2n at H/4, to the decoder's 2n and 4n.
        self.skip2 = nn.Conv2d(n, 2 * n, 1) if skips else None
        self.skip4 = nn.Conv2d(2 * n, 4 * n, 1) if skips else None
        init_weights(self)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: images ``(B, in_channels, H, W)``, ``H, W`` divisible by 8.

        Returns:
            Logits ``(B, 1, H, W)``.
        """
        if self.skip2 is None or self.skip4 is None:
            return self.head(self.decoder(self.aspp(self.encoder(x))))
        # encoder: [block, pool, dropout] x 3; decoder: three UpConvs, H/8 -> H/4 -> H/2 -> H.
        half = self.encoder[:3](x)
        quarter = self.encoder[3:6](half)
        y = self.decoder[0](self.aspp(self.encoder[6:](quarter))) + self.skip4(quarter)
        y = self.decoder[1](y) + self.skip2(half)
        return self.head(self.decoder[2](y))
