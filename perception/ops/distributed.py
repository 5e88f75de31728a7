"""The two collectives the package needs, as no-ops when only one process runs.

Plain ``torch.distributed``: whatever launched the processes (Lightning, torchrun,
SLURM), these see its default group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over processes (a new tensor; a copy when not distributed).

    Collective: every process must call it, in the same order.
    """
    value = value.detach().clone()
    if world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
