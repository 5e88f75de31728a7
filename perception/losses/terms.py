"""What every task loss returns, so the multi-task combiner can treat them alike."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TaskLoss(NamedTuple):
    """One task's loss on one batch.

    ``total`` is the task's weighted sum of ``terms`` (the within-task weights are the task
    loss's own constructor arguments); ``terms`` are the unweighted parts, for logging.
    ``present`` is a 0-dim bool tensor: False when nothing in the batch supervises the task
    (no labeled sample or no labeled pixel); then ``total`` and every term are exactly 0 but
    still attached to the prediction graph, and the combiner leaves that task out.
    """

    total: torch.Tensor  # [] float32
    terms: dict[str, torch.Tensor]  # name -> [] float32, unweighted
    present: torch.Tensor  # [] bool
