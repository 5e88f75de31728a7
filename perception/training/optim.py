"""Optimizers and the learning-rate schedule.

One factory, a small name -> class dict (ARCHITECTURE rule 6). Norm weights and biases get
no weight decay: decaying them only fights the normalization and slows convergence.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from perception.errors import PerceptionError

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: conv/linear weights with ``weight_decay``, norms and biases without."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    name: str, model: nn.Module, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``name`` in ``OPTIMIZERS``; SGD uses Nesterov momentum, RMSProp plain momentum."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise PerceptionError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, weight_decay)
    extra: dict = {}
    if key == "sgd":
        extra = {"momentum": momentum, "nesterov": momentum > 0}
    elif key == "rmsprop":
        extra = {"momentum": momentum}
    return OPTIMIZERS[key](groups, lr=lr, **extra)


def warmup_cosine(total_steps: int, warmup_steps: int, final_ratio: float = 0.05):
    """LambdaLR factor: linear warm-up from ~0 to 1, then cosine down to ``final_ratio``."""
    total_steps = max(total_steps, 1)
    warmup_steps = min(max(warmup_steps, 0), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
