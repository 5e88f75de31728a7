"""Anchor-free detection head (FCOS / YOLOX style, decoupled classification and box).

One point per cell of each detection level predicts K class logits and four raw box
distances. Decoding (``softplus(raw) * stride`` pixels of (l, t, r, b) from the cell
centre) lives in ``perception.postprocess``; the point order is ``ops.points.dense_points``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from perception.models.layers import make_act, make_norm

CLS_PRIOR = 0.01  # initial foreground probability: keeps the focal/BCE loss sane at step 0
BOX_PRIOR = 2.0  # initial softplus(raw): each side 2 strides, a 4-stride box (typical per level)


class SharedTower(nn.Module):
    """``depth`` 3x3 conv layers whose weights are shared by all levels, norms per level.

    Sharing convs keeps the head small and lets every level learn from every object. Batch
    statistics differ from level to level, though: one shared BatchNorm would average them
    into running stats that fit no level at eval time, so each level keeps its own norm
    (as EfficientDet does). With ``norm="none"`` the convs carry a bias instead.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        depth: int,
        num_levels: int,
        *,
        act: str = "silu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=norm == "none")
            for i in range(depth)
        )
        self.norms = nn.ModuleList(
            nn.ModuleList(make_norm(norm, width) for _ in range(depth)) for _ in range(num_levels)
        )
        self.acts = nn.ModuleList(make_act(act) for _ in range(depth))

    def forward(self, x: Tensor, level: int) -> Tensor:
        """``[B, in_channels, h, w]`` of level ``level`` -> ``[B, width, h, w]``."""
        for conv, norm, act in zip(self.convs, self.norms[level], self.acts, strict=True):
            x = act(norm(conv(x)))
        return x


class LevelTower(nn.Module):
    """A ``SharedTower`` for inference, each level with convs of its own into which that
    level's BatchNorms are folded (``models.fold``).

    The same outputs with one pass over each feature map less per layer. In an INT8 graph
    it matters more: a BatchNorm after a shared conv stays a float operator between a
    dequantize and a quantize, where a folded conv feeds its activation directly.
    """

    def __init__(self, levels: Sequence[Sequence[nn.Conv2d]], acts: nn.ModuleList) -> None:
        super().__init__()
        self.levels = nn.ModuleList(nn.ModuleList(convs) for convs in levels)
        self.acts = acts

    def forward(self, x: Tensor, level: int) -> Tensor:
        """``[B, in_channels, h, w]`` of level ``level`` -> ``[B, width, h, w]``."""
        for conv, act in zip(self.levels[level], self.acts, strict=True):
            x = act(conv(x))
        return x


class DetectionHead(nn.Module):
    """Decoupled anchor-free head shared across levels, with a learnable scale per level.

    Args:
        in_channels: channels of every input level (the neck width).
        num_classes: K, one sigmoid logit per class.
        num_levels: number of input levels (3 for strides 8/16/32).
        width, depth: tower channels and number of 3x3 layers per branch.
        act, norm: names for ``make_act`` / ``make_norm``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        *,
        width: int = 96,
        depth: int = 2,
        act: str = "silu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_levels = num_levels
        tower = {"width": width, "depth": depth, "num_levels": num_levels, "act": act, "norm": norm}
        self.cls_tower = SharedTower(in_channels, **tower)
        self.box_tower = SharedTower(in_channels, **tower)
        self.cls_pred = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(width, 4, 3, padding=1)
        # Levels see objects of different sizes in stride units; a scalar per level lets
        # the shared box branch adapt its output range to each (FCOS).
        self.scales = nn.Parameter(torch.ones(num_levels))
        self._init_predictions()

    def _init_predictions(self) -> None:
        """Small weights and prior biases, so initial scores are ~1% and boxes plausible."""
        for conv in (self.cls_pred, self.box_pred):
            nn.init.normal_(conv.weight, std=0.01)
        nn.init.constant_(self.cls_pred.bias, -math.log((1.0 - CLS_PRIOR) / CLS_PRIOR))
        nn.init.constant_(self.box_pred.bias, math.log(math.expm1(BOX_PRIOR)))  # softplus^-1

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Levels ``[B, C, h_l, w_l]`` (stride order) -> ``([B, A, K], [B, A, 4])`` raw.

        ``A = sum_l h_l * w_l``, levels concatenated in order, row-major within a level.
        """
        cls_levels, box_levels = [], []
        for level, x in enumerate(feats):
            cls = self.cls_pred(self.cls_tower(x, level))  # [B, K, h, w]
            box = self.box_pred(self.box_tower(x, level)) * self.scales[level]  # [B, 4, h, w]
            cls_levels.append(cls.flatten(2).transpose(1, 2))  # [B, K, h, w] -> [B, h*w, K]
            box_levels.append(box.flatten(2).transpose(1, 2))  # [B, 4, h, w] -> [B, h*w, 4]
        return torch.cat(cls_levels, dim=1), torch.cat(box_levels, dim=1)
