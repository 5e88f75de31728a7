"""What a network costs to run: parameters, FLOPs of one forward pass, CPU latency.

Measured, never estimated from formulas: parameters are ``sum(p.numel())``, FLOPs are
counted by ``torch.utils.flop_counter.FlopCounterMode`` over an actual forward pass (one
multiply-add = 2 FLOPs), latency is the median of timed batch-1 fp32 channels-last passes
after warm-up (``benchmark.speed.timed``, as ``perception bench`` times). The networks
of one study are timed in interleaved rounds, so a load that comes and goes on the
machine (another job) slows them all alike instead of whichever ran at that moment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from perception.benchmark.cost import gflops, param_count
from perception.benchmark.speed import timed

# Which head serves which task of a single-task network.
TASK_HEADS: dict[str, str] = {"det": "detection", "seg": "lane", "depth": "depth"}
LATENCY_WARMUP, LATENCY_ITERS, LATENCY_ROUNDS = 5, 30, 5


class TaskNetwork(nn.Module):
    """One task's network cut from a ``MultiTaskModel``: normalise -> backbone -> neck ->
    that task's head (the other heads dropped, the whole neck kept).

    What a one-network-per-task deployment would run for ``task`` (``det``, ``seg`` for
    lane + drivable, ``depth``); it shares the modules of ``model``, nothing is copied.
    """

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        if task not in TASK_HEADS:
            raise ValueError(f"task {task!r} not in {list(TASK_HEADS)}")
        self.task = task
        self.backbone, self.neck = model.backbone, model.neck
        self.head = getattr(model, TASK_HEADS[task])
        self.register_buffer("mean", model.mean.clone())
        self.register_buffer("std", model.std.clone())

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``[B, 3, H, W]`` in ``[0, 1]`` -> the head's raw output(s)."""
        dense, det_maps = self.neck(self.backbone((images - self.mean) / self.std))
        return self.head(det_maps) if self.task == "det" else self.head(dense)


def latencies_ms(models: Mapping[str, nn.Module], image_size: Sequence[int]) -> dict[str, float]:
    """Median CPU milliseconds of a batch-1 fp32 forward pass of each model, timed in
    ``LATENCY_ROUNDS`` interleaved rounds (models moved to the CPU, eval, channels-last)."""
    images = torch.rand(1, 3, *image_size).contiguous(memory_format=torch.channels_last)
    nets = {k: m.cpu().eval().to(memory_format=torch.channels_last) for k, m in models.items()}
    seconds: dict[str, list[float]] = {k: [] for k in nets}
    per_round = max(1, LATENCY_ITERS // LATENCY_ROUNDS)
    for i in range(LATENCY_ROUNDS):
        for key, net in nets.items():

            def forward(net: nn.Module = net) -> object:
                with torch.inference_mode():
                    return net(images)

            seconds[key].extend(timed(forward, LATENCY_WARMUP if i == 0 else 1, per_round))
    return {k: 1e3 * float(np.median(v)) for k, v in seconds.items()}


def measure(models: Mapping[str, nn.Module], image_size: Sequence[int]) -> dict[str, dict]:
    """Per model: ``params`` (count), ``gflops`` and ``latency_ms`` (on the CPU)."""
    latency = latencies_ms(models, image_size)
    return {
        key: {
            "params": param_count(model),
            "gflops": gflops(model, image_size),
            "latency_ms": latency[key],
        }
        for key, model in models.items()
    }
