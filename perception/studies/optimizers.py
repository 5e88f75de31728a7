"""``optimizers``: how fast each optimizer trains the multi-task network in one budget.

Each arm has its own learning rate, chosen where that optimizer is usually run (an
optimizer at another's learning rate says nothing about the optimizer):

* SGD without momentum at 0.1 and SGD with Nesterov momentum 0.9 at 0.01: the same
  effective step ``lr / (1 - momentum)``; L2 weight decay 1e-4 (the ResNet recipe).
* Adam 2e-3 with L2 1e-4; AdamW 2e-3 with decoupled decay 0.05 (the package's default).
* RMSProp 1e-3 without momentum (Keras' default; with momentum 0.9 on top it is an
  un-bias-corrected Adam at a 10x larger step); Adagrad 0.01 (its usual default).

Every arm shares the warm-up + cosine schedule (``training.optim``), norms and biases
undecayed.

Time at budget 1.0: 12 runs of 240 steps, ~21 min on a 2-core CPU (0.43 CPU s per step,
measured as ``common`` describes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perception.studies.report import Result
from perception.studies.sweep import sweep

NAME = "optimizers"
ARMS: dict[str, dict[str, Any]] = {
    "sgd": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 1e-4},
    "sgd_momentum": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "adam": {"optimizer": "adam", "lr": 2e-3, "weight_decay": 1e-4},
    "adamw": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05},
    "rmsprop": {"optimizer": "rmsprop", "lr": 1e-3, "momentum": 0.0, "weight_decay": 1e-4},
    "adagrad": {"optimizer": "adagrad", "lr": 0.01, "weight_decay": 1e-4},
}


def run(out: Path, budget: float = 1.0, seeds: Sequence[int] = (0, 1)) -> Result:
    """Train one arm per optimizer over ``seeds``; table (with each arm's settings) and
    loss curves."""
    columns = {
        arm: {
            "optimizer": cfg["optimizer"],
            "lr": f"{cfg['lr']:g}",  # strings: the table's 3 decimals would print 1e-4 as 0
            "momentum": f"{cfg['momentum']:g}" if "momentum" in cfg else "-",
            "weight_decay": f"{cfg['weight_decay']:g}",
        }
        for arm, cfg in ARMS.items()
    }
    return sweep(
        NAME,
        ARMS,
        out,
        budget,
        seeds,
        columns=columns,
        notes={"varied": "optimizer, with its own lr / momentum / weight decay (see columns)"},
    )
