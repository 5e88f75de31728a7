"""Neck: fuse the backbone's four levels into maps the heads can share.

A top-down FPN pass carries semantics from coarse levels to fine ones, then a bottom-up
PAN pass carries precise localisation back up (PANet / YOLOv4 style). The stride-4 output
feeds the dense heads (lane, drivable, depth); the stride-8/16/32 outputs feed detection.
Merges are sums (cheaper than concatenation and width-stable), each followed by a block.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from perception.models.layers import ConvNormAct, conv_block


class PAFPN(nn.Module):
    """Path-aggregation FPN over ``L`` levels whose strides double from one to the next.

    Args:
        in_channels: backbone channels per level, finest first (``Backbone.out_channels``).
        strides: backbone strides per level, finest first (``Backbone.strides``).
        width: channels of every output map.
        depth: 3x3 convs in each merge block.
        act, norm: names for ``make_act`` / ``make_norm``.

    Attributes:
        out_channels: ``width`` (all outputs share it).
        dense_stride: stride of the dense output (the finest level, 4).
        det_strides: strides of the detection outputs (the other levels, 8/16/32).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        *,
        width: int = 96,
        depth: int = 1,
        act: str = "silu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(in_channels) != len(strides) or len(strides) < 2:
            raise ValueError(f"need >= 2 levels with one stride each, got {in_channels}, {strides}")
        if any(b != 2 * a for a, b in itertools.pairwise(strides)):
            raise ValueError(f"level strides must double from level to level, got {strides}")
        n = len(in_channels)
        self.out_channels = width
        self.dense_stride = int(strides[0])
        self.det_strides = [int(s) for s in strides[1:]]
        self.lateral = nn.ModuleList(
            ConvNormAct(c, width, 1, act=act, norm=norm) for c in in_channels
        )
        # top_down[i] merges level i with the upsampled level i+1 (i = 0 .. n-2).
        self.top_down = nn.ModuleList(
            conv_block(width, depth, act=act, norm=norm) for _ in range(n - 1)
        )
        # down[i] / bottom_up[i] bring level i into level i+1 (i = 0 .. n-2).
        self.down = nn.ModuleList(
            ConvNormAct(width, width, 3, stride=2, act=act, norm=norm) for _ in range(n - 1)
        )
        self.bottom_up = nn.ModuleList(
            conv_block(width, depth, act=act, norm=norm) for _ in range(n - 1)
        )

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Backbone maps (finest first) -> (dense map, detection maps finest first).

        ``feats[i]: [B, in_channels[i], H/s_i, W/s_i]`` -> dense ``[B, width, H/s_0, W/s_0]``
        and ``[B, width, H/s_i, W/s_i]`` for ``i = 1 .. L-1``.
        """
        laterals = [lat(f) for lat, f in zip(self.lateral, feats, strict=True)]
        top_down = [laterals[-1]]
        for i in range(len(laterals) - 2, -1, -1):
            # size from the finer map (not a x2 factor) so odd map sizes still line up
            up = F.interpolate(top_down[0], size=laterals[i].shape[-2:], mode="nearest")
            top_down.insert(0, self.top_down[i](laterals[i] + up))
        outs = [top_down[0]]
        for i in range(len(top_down) - 1):
            outs.append(self.bottom_up[i](top_down[i + 1] + self.down[i](outs[-1])))
        return outs[0], outs[1:]
