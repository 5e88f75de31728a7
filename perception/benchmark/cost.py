"""What a network costs regardless of the machine: parameters and GFLOPs per image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def param_count(model: nn.Module) -> int:
    """Parameters (shared modules counted once)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def gflops(model: nn.Module, image_size: Sequence[int]) -> float:
    """GFLOPs of one forward pass on one ``[1, 3, H, W]`` image, in eval mode (one
    multiply-accumulate = 2 FLOPs, as ``FlopCounterMode`` counts)."""
    model.eval()
    images = torch.rand(1, 3, *image_size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images)
    return counter.get_total_flops() / 1e9
