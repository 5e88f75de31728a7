"""Lane (and optional drivable-area) segmentation head: per-pixel logits at input size."""

from __future__ import annotations

import math

from torch import nn

from perception.models.layers import DenseDecoder

LANE_PRIOR = 0.02  # lane markings cover ~1-3% of pixels; start there, not at 50%


class LaneHead(DenseDecoder):
    """Stride-``scale`` neck map -> ``[B, S, H, W]`` logits, one sigmoid per channel.

    Channel 0 is lane, channel 1 (only when ``drivable``) is drivable area; they may
    overlap, hence independent sigmoids rather than a softmax.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        scale: int,
        width: int = 96,
        drivable: bool = True,
        refine_stride: int = 1,
        act: str = "silu",
        norm: str = "batch",
    ) -> None:
        num_outputs = 2 if drivable else 1
        super().__init__(
            in_channels,
            num_outputs,
            scale=scale,
            width=width,
            refine_stride=refine_stride,
            act=act,
            norm=norm,
        )
        self.num_outputs = num_outputs
        nn.init.constant_(self.out.bias, 0.0)  # drivable starts at p = 0.5
        nn.init.constant_(self.out.bias[:1], -math.log((1.0 - LANE_PRIOR) / LANE_PRIOR))
