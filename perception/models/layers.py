"""Building blocks shared by the neck and the heads.

Activations and norms are chosen by name from small local tables (ARCHITECTURE rule 6) so
configs stay plain strings; a typo is a ``PerceptionError`` that lists the valid names.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from perception.errors import PerceptionError

# In-place where it is safe (the input is always a fresh conv/norm output) to save memory.
_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "prelu": lambda: nn.PReLU(),
    "elu": lambda: nn.ELU(),
    "gelu": lambda: nn.GELU(),
    "silu": lambda: nn.SiLU(inplace=True),
}

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    # 32 groups where the width allows it (the GN paper's default), fewer otherwise.
    "group": lambda channels: nn.GroupNorm(math.gcd(channels, 32), channels),
    "none": lambda channels: nn.Identity(),
}

ACT_NAMES: tuple[str, ...] = tuple(_ACTS)
NORM_NAMES: tuple[str, ...] = tuple(_NORMS)


def _lookup(table: dict[str, Callable], name: str, kind: str) -> Callable:
    """``table[name]``, or a one-line ``PerceptionError`` naming the valid keys."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise PerceptionError(
            f"unknown {kind} {name!r}; expected one of: {', '.join(table)}"
        ) from None


def check_act(name: str) -> None:
    """Raise ``PerceptionError`` unless ``name`` is a known activation (cheap config check)."""
    _lookup(_ACTS, name, "activation")


def check_norm(name: str) -> None:
    """Raise ``PerceptionError`` unless ``name`` is a known norm (cheap config check)."""
    _lookup(_NORMS, name, "norm")


def check_refine_stride(value: object, name: str = "refine_stride") -> None:
    """Raise ``PerceptionError`` unless ``value`` is 1 or 2 (``DenseDecoder``)."""
    if isinstance(value, bool) or value not in (1, 2):
        raise PerceptionError(f"{name} must be 1 or 2, got {value!r}")


def make_act(name: str) -> nn.Module:
    """A fresh activation module: one of ``ACT_NAMES`` (PReLU has one learnable slope)."""
    return _lookup(_ACTS, name, "activation")()


def make_norm(name: str, channels: int) -> nn.Module:
    """A fresh 2D norm over ``channels``: ``batch``, ``group`` or ``none`` (identity)."""
    return _lookup(_NORMS, name, "norm")(channels)


class ConvNormAct(nn.Sequential):
    """``conv -> norm -> act`` with 'same' padding; the conv has a bias only without a norm.

    Children are named ``conv``, ``norm``, ``act`` so checkpoints read well.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        act: str = "silu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=norm == "none",
        )
        self.norm = make_norm(norm, out_channels)
        self.act = make_act(act)


def conv_block(channels: int, depth: int, *, act: str, norm: str) -> nn.Sequential:
    """``depth`` stacked 3x3 ``ConvNormAct`` at constant width (the neck's merge block)."""
    return nn.Sequential(
        *(ConvNormAct(channels, channels, 3, act=act, norm=norm) for _ in range(depth))
    )


class DenseDecoder(nn.Module):
    """Low-resolution features to full-resolution per-pixel outputs, cheaply.

    All the width stays at the input stride; only a narrow ``mid``-channel map is upsampled,
    so the part near full resolution is one light 3x3 conv and a 1x1 projection (a 384x640
    input pays ~0.6 GMAC there instead of several GMAC for a wide full-res conv).

    ``refine_stride`` is where that light part runs: 1 = at full resolution; 2 = at half
    resolution, after which only the ``out_channels`` raw outputs are upsampled the last
    2x (bilinear). At 2 the refine conv, its activation and the 16-channel upsample touch a
    quarter of the pixels, which on a CPU is a sizeable share of the whole network's time.

    ``[B, in_channels, H/scale, W/scale] -> [B, out_channels, H, W]`` raw values.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        scale: int,
        width: int,
        mid: int = 16,
        refine_stride: int = 1,
        act: str = "silu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        check_refine_stride(refine_stride)
        if scale % refine_stride:
            raise PerceptionError(f"refine_stride {refine_stride} must divide the stride {scale}")
        self.scale = int(scale)
        self.refine_stride = int(refine_stride)
        self.task = ConvNormAct(in_channels, width, 3, act=act, norm=norm)
        self.squeeze = ConvNormAct(width, mid, 1, act=act, norm=norm)
        self.refine = ConvNormAct(mid, mid, 3, act=act, norm=norm)
        self.out = nn.Conv2d(mid, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, h, w]`` features -> ``[B, out_channels, h*scale, w*scale]``."""
        x = self.squeeze(self.task(x))  # [B, mid, h, w]
        up = float(self.scale // self.refine_stride)
        x = F.interpolate(x, scale_factor=up, mode="bilinear", align_corners=False)
        x = self.out(self.refine(x))  # [B, out, H / refine_stride, W / refine_stride]
        if self.refine_stride > 1:
            x = F.interpolate(
                x, scale_factor=float(self.refine_stride), mode="bilinear", align_corners=False
            )
        return x
