"""Exponential moving average of the model weights, used for validation and release.

EMA weights generalize better than the last step's and smooth out the noise of large
learning rates. The decay ramps up (``decay * (1 - exp(-step / ramp))``) so early, random
weights are forgotten quickly.

Why not Lightning's ``EMAWeightAveraging``: its decay is fixed from the first step, so on a
short run (a CPU fine-tune, a study's few hundred steps) the average is still mostly the
random initialisation (``tests/test_ema.py`` measures it); and this EMA is a submodule,
saved in every checkpoint as ``ema.module.*``, which ``load_model`` and ``init_weights``
read. It updates once per optimizer step (``PerceptionModule.optimizer_step``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA(nn.Module):
    """Holds a frozen copy of ``model`` whose weights track an EMA of the live ones."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp: float = 2000.0) -> None:
        super().__init__()
        # Left in the mode Lightning gives it: validation switches everything to eval, and
        # the copy is never trained (no grads), so forcing eval here only draws warnings.
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.ramp = decay, ramp
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the live ``model`` into the average (float tensors; others are copied)."""
        self.updates += 1
        d = self.decay * (1 - math.exp(-int(self.updates) / self.ramp))
        live = model.state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(live[name].detach(), alpha=1 - d)
            else:
                avg.copy_(live[name])
