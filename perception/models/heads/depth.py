"""Monocular metric depth head: natural-log metres per pixel at input size."""

from __future__ import annotations

import math

from torch import nn

from perception.models.layers import DenseDecoder

INIT_DEPTH_M = 15.0  # a typical driving-scene depth: the first predictions are sane everywhere


class DepthHead(DenseDecoder):
    """Stride-``scale`` neck map -> ``[B, 1, H, W]`` natural log of depth in metres.

    Log depth makes the output unbounded (any real is a valid depth) and the errors
    relative; ``exp`` happens in postprocess. The last layer starts near ``log(15 m)``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        scale: int,
        width: int = 96,
        refine_stride: int = 1,
        act: str = "silu",
        norm: str = "batch",
    ) -> None:
        super().__init__(
            in_channels,
            1,
            scale=scale,
            width=width,
            refine_stride=refine_stride,
            act=act,
            norm=norm,
        )
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.constant_(self.out.bias, math.log(INIT_DEPTH_M))
