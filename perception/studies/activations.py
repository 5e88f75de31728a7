"""``activations``: which nonlinearity trains the network best in the same budget.

The arms differ only in ``ModelConfig.act`` (relu, leaky_relu, prelu, elu, gelu, silu).
The backbone is a plain 8-layer stack (``plain:8x56``, ``models.plain``) rather than
resnet18: timm builds resnet18 with its own ReLUs, so ``act`` would reach only the neck
and heads; in the plain stack it is in every layer, and without residuals the gradient
has to pass through each of them, which is where activations differ most.

Time at budget 1.0: 12 runs of 240 steps, ~12 min on a 2-core CPU (0.23 CPU s per step,
measured as ``common`` describes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from perception.models.layers import ACT_NAMES
from perception.studies.report import Result
from perception.studies.sweep import sweep

NAME = "activations"
ACTIVATIONS: tuple[str, ...] = ACT_NAMES  # relu, leaky_relu, prelu, elu, gelu, silu
BACKBONE = "plain:8x56"  # 3.6 M parameters, deep_vs_wide's depth-8 arm


def run(out: Path, budget: float = 1.0, seeds: Sequence[int] = (0, 1)) -> Result:
    """Train one arm per activation over ``seeds``; table and loss curves."""
    return sweep(
        NAME,
        {act: {"net": {"act": act}} for act in ACTIVATIONS},
        out,
        budget,
        seeds,
        base={"net": {"backbone": BACKBONE}},
        notes={
            "varied": "ModelConfig.act, in every layer (backbone, neck, heads)",
            "why_plain": "timm's resnet18 keeps its own ReLUs; the plain stack takes act",
        },
    )
