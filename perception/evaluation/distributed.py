"""Metrics over a split that several processes (DDP ranks) each scored a shard of.

Every evaluator accumulates sum states (confusion counts, error sums) or per-image
records (detection), never per-batch means, so the split's metrics are exact when the
shards' states are merged before ``compute``: counts and sums add, detection records are
put back in split order by their keys. One ``all_gather_object`` per validation carries
them; plain ``torch.distributed``, so any launcher (Lightning, torchrun) works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist

from perception.evaluation.metrics import MetricsSuite
from perception.ops.distributed import world_size


def gather_suites(suites: Sequence[MetricsSuite]) -> None:
    """Make every process's ``suites`` hold the whole split (in place, on every rank).

    Collective: every rank must call it with the same number of suites, in the same order.
    """
    if world_size() == 1:
        return
    mine = [suite.state() for suite in suites]
    gathered: list[list[dict] | None] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    for i, suite in enumerate(suites):
        suite.reset()
        for states in gathered:
            suite.merge(states[i])
