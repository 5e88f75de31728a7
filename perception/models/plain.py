"""A plain CNN backbone (no residuals): conv3x3-norm-act stacks named ``plain:<depth>x<width>``.

Exists for the depth-versus-width study (``perception compare --study deep_vs_wide``):
unlike a ResNet, nothing but the stacked layers carries the signal, so depth and width can
be traded against each other at a matched parameter count and nothing else changes.

Layout: a 4x4 stride-4 patchify stem (conv, norm, act: a space-to-depth projection, so
even the shallowest stack reaches stride 4 without a 3x3 layer), then four stages of
3x3 conv-norm-act at widths ``width * (1, 2, 4, 8)``, the first layer of stages 2-4 with
stride 2. ``depth`` counts the 3x3 layers (the stem aside); they are split as evenly as
possible over the stages, any remainder going to the later (cheaper, coarser) stages.
Each stage returns its last map: strides 4, 8, 16, 32, as the neck needs.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from perception.errors import PerceptionError
from perception.models.layers import ConvNormAct, make_act, make_norm

PLAIN_PREFIX = "plain:"
STAGE_MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8)
PLAIN_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
# ImageNet statistics, as the timm path reads from its pretrained_cfg: the same input
# normalisation for every backbone keeps the comparison about the stack alone.
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
_NAME = re.compile(r"plain:(\d+)x(\d+)")


def is_plain(name: str) -> bool:
    """Whether a ``ModelConfig.backbone`` names a plain stack rather than a timm model."""
    return isinstance(name, str) and name.startswith(PLAIN_PREFIX)


def parse_plain(name: str) -> tuple[int, int]:
    """``"plain:8x32"`` -> ``(depth, width)``; a ``PerceptionError`` for a malformed name."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise PerceptionError(f"plain backbone {name!r}: expected 'plain:<depth>x<width>'")
    depth, width = int(match[1]), int(match[2])
    if depth < len(STAGE_MULTIPLIERS) or width < 1:
        raise PerceptionError(
            f"plain backbone {name!r}: need depth >= {len(STAGE_MULTIPLIERS)} (one 3x3 layer "
            f"per stage) and width >= 1"
        )
    return depth, width


def stage_depths(depth: int) -> list[int]:
    """3x3 layers per stage, e.g. 10 -> ``[2, 2, 3, 3]``."""
    n = len(STAGE_MULTIPLIERS)
    base, extra = divmod(depth, n)
    return [base + (i >= n - extra) for i in range(n)]


def plain_params(depth: int, width: int, norm: str = "batch") -> int:
    """Parameter count of ``plain:<depth>x<width>`` (weights, norm affine; no module built)."""
    affine = 2 if norm != "none" else 1  # norm scale + shift, or the conv's own bias
    total = 3 * 16 * width + affine * width  # stem
    previous = width
    for layers, mult in zip(stage_depths(depth), STAGE_MULTIPLIERS, strict=True):
        channels = width * mult
        total += 9 * previous * channels + affine * channels
        total += (layers - 1) * (9 * channels * channels + affine * channels)
        previous = channels
    return total


def matched_width(depth: int, params: int, norm: str = "batch") -> int:
    """The width whose ``plain:<depth>x<width>`` has the parameter count closest to
    ``params``: how the deep-versus-wide arms are matched."""
    width = 1
    while plain_params(depth, width + 1, norm) <= params:
        width += 1
    above = plain_params(depth, width + 1, norm) - params
    return width + 1 if above < params - plain_params(depth, width, norm) else width


class _FeatureInfo:
    """The part of timm's ``FeatureInfo`` that callers read: per-map module names,
    channels and reductions (so stage-wise diagnostics work on plain stacks too)."""

    def __init__(self, names: list[str], channels: list[int], strides: list[int]) -> None:
        self._names, self._channels, self._strides = names, channels, strides

    def module_name(self) -> list[str]:
        return list(self._names)

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._strides)


class PlainStack(nn.Module):
    """The stem and four stages; ``[B, 3, H, W]`` -> four maps, strides 4..32."""

    def __init__(self, depth: int, width: int, *, act: str = "relu", norm: str = "batch") -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=4, bias=norm == "none"),
            make_norm(norm, width),
            make_act(act),
        )
        channels, previous = [], width
        for i, layers in enumerate(stage_depths(depth)):
            out = width * STAGE_MULTIPLIERS[i]
            blocks = [
                ConvNormAct(
                    previous if j == 0 else out,
                    out,
                    3,
                    stride=2 if i > 0 and j == 0 else 1,
                    act=act,
                    norm=norm,
                )
                for j in range(layers)
            ]
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            channels.append(out)
            previous = out
        names = [f"stage{i + 1}" for i in range(len(channels))]
        self.feature_info = _FeatureInfo(names, channels, list(PLAIN_STRIDES))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)  # [B, width, H/4, W/4]
        maps = []
        for name in self.feature_info.module_name():
            x = getattr(self, name)(x)  # stage i: [B, width * 2^i, H / 2^(i+2), W / 2^(i+2)]
            maps.append(x)
        return maps


class PlainBackbone(nn.Module):
    """``plain:<depth>x<width>`` with the interface of the timm ``Backbone``.

    Attributes:
        model_name: the name it was built from.
        out_channels: ``width * (1, 2, 4, 8)``, finest first.
        strides: ``[4, 8, 16, 32]``.
        mean, std: ImageNet RGB statistics for inputs in ``[0, 1]``.
        body: the ``PlainStack`` (with a timm-like ``feature_info``).
    """

    def __init__(
        self, name: str, *, pretrained: bool | str = False, act: str = "relu", norm: str = "batch"
    ) -> None:
        super().__init__()
        depth, width = parse_plain(name)
        if pretrained not in (False, ""):
            raise PerceptionError(f"backbone {name!r}: plain stacks have no pretrained weights")
        self.model_name = name
        self.body = PlainStack(depth, width, act=act, norm=norm)
        self.out_channels: list[int] = self.body.feature_info.channels()
        self.strides: list[int] = self.body.feature_info.reduction()
        self.mean: tuple[float, ...] = IMAGENET_MEAN
        self.std: tuple[float, ...] = IMAGENET_STD

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> maps ``[B, out_channels[i], H/strides[i], W/strides[i]]``."""
        return self.body(x)
