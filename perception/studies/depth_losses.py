"""``depth_losses``: which per-pixel depth loss gives the best metric depth.

The arms differ only in ``LossConfig.depth_loss`` (silog, l1, l2, smooth_l1, huber: the
regression term on log depth; the gradient-matching term stays in every arm) on the
released architecture (resnet18). The task losses are combined by the default
uncertainty weighting, which rescales each task by a learned weight, so a loss that is
numerically larger (l2) does not simply take over the shared backbone. The curves are
each arm's own depth loss as a fraction of its start: the losses have different units.

Time at budget 1.0: 10 runs of 240 steps, ~18 min on a 2-core CPU (0.43 CPU s per step,
measured as ``common`` describes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from perception.losses.depth import DEPTH_LOSSES as LOSS_NAMES
from perception.studies.report import Result
from perception.studies.sweep import sweep

NAME = "depth_losses"
DEPTH_LOSSES: tuple[str, ...] = LOSS_NAMES  # silog, l1, l2, smooth_l1, huber


def run(out: Path, budget: float = 1.0, seeds: Sequence[int] = (0, 1)) -> Result:
    """Train one arm per depth loss over ``seeds``; table and loss curves."""
    return sweep(
        NAME,
        {name: {"loss": {"depth_loss": name}} for name in DEPTH_LOSSES},
        out,
        budget,
        seeds,
        curve_keys=("depth",),
        relative=True,
        notes={"varied": "LossConfig.depth_loss; everything else as released"},
    )
