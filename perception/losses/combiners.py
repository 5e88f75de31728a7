"""How the per-task losses become one scalar: fixed, uncertainty or DWA weighting.

A combiner sees only the task totals (name -> ``[]`` tensor) and which tasks are present
in the batch. A task with no labels in the batch is *left out*: it adds nothing, its
learnable parameters get zero gradient, and its running statistics are not updated, so
its absence does not move the weights of the other tasks.

Every combiner also takes ``weights`` (task -> float, default 1): static multipliers
applied to each task's loss before the combiner's own weighting, so one config key means
the same under every combiner. ``build_combiner`` is the one factory.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from perception.errors import PerceptionError

COMBINED_TASKS: tuple[str, ...] = ("det", "seg", "depth")


class Combiner(nn.Module, ABC):
    """Base: validates the task list and the static ``weights``; subclasses weigh."""

    def __init__(
        self, weights: Mapping[str, float] | None = None, tasks: Sequence[str] = COMBINED_TASKS
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise PerceptionError(
                f"loss weights for unknown task(s) {unknown}; valid: {', '.join(self.tasks)}"
            )
        self.static = {t: float(weights.get(t, 1.0)) for t in self.tasks}

    @abstractmethod
    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``losses``/``present`` per task -> (total ``[]``, detached weight per task)."""

    def _stack(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Task-ordered ``[T]`` losses (times the static weights) and ``[T]`` bool presence."""
        missing = [t for t in self.tasks if t not in losses or t not in present]
        if missing:
            raise KeyError(f"combiner needs a loss and a presence flag for tasks {missing}")
        scale = torch.tensor(
            [self.static[t] for t in self.tasks], device=losses[self.tasks[0]].device
        )
        stacked = torch.stack([losses[t].float() for t in self.tasks]) * scale  # [T]
        return stacked, torch.stack([present[t].reshape(()) for t in self.tasks])  # [T]

    def _named(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[T]`` -> task -> detached ``[]`` weight (including the static multiplier)."""
        scale = torch.tensor([self.static[t] for t in self.tasks], device=weights.device)
        return dict(zip(self.tasks, (weights.detach() * scale).unbind(), strict=True))


class FixedWeights(Combiner):
    """``total = sum_i w_i L_i`` with the given constant weights."""

    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stacked, mask = self._stack(losses, present)
        total = torch.where(mask, stacked, 0.0).sum()
        return total, self._named(torch.ones_like(stacked))


class UncertaintyWeights(Combiner):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    ``total = sum_i exp(-s_i) L_i + s_i`` with a learnable log-variance ``s_i`` per task.
    Kendall's derivation gives ``exp(-s) L / 2 + s / 2`` for a Gaussian (regression) task
    and ``exp(-s) L + s / 2`` for a softmax (classification) task; we use the one form
    ``exp(-s) L + s`` for all tasks (as most re-implementations do). For regression that
    is the paper's form times 2 (same optimum); for classification it moves the
    equilibrium from ``exp(-s) = 1 / (2 L)`` to ``1 / L``, i.e. classification is not
    weighted half as much as regression. At equilibrium each task contributes ~1
    (``exp(-s_i) L_i = 1``). Our task losses mix terms anyway; they are not pure
    likelihoods. Static ``weights`` scale ``L_i`` and so are mostly absorbed by ``s_i``:
    they set the starting balance and matter when ``s_i`` sits at its bound.

    ``s_i`` is clamped to ``[-bound, bound]`` (weights within ``e^-4 .. e^4`` by default)
    so a task whose loss reaches ~0 cannot drive its weight to infinity. A plain clamp (or
    a tanh, which saturates) would trap the parameter: once past the edge its gradient is
    0 forever, even after the loss grows again. ``_InwardClamp`` zeroes only the gradient
    that pushes further out, so the raw value overshoots by at most a few optimizer steps
    and returns as soon as the loss asks for it.

    The total may be negative; only its gradient matters. Missing tasks: neither term.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        tasks: Sequence[str] = COMBINED_TASKS,
        *,
        bound: float = 4.0,
    ) -> None:
        super().__init__(weights, tasks)
        if bound <= 0:
            raise PerceptionError(f"uncertainty bound must be > 0, got {bound}")
        self.bound = bound
        self.raw = nn.Parameter(torch.zeros(len(self.tasks)))  # s = 0: weight 1 at start

    def log_variance(self) -> torch.Tensor:
        """``[T]`` bounded log-variances ``s``, in ``tasks`` order."""
        return _InwardClamp.apply(self.raw, self.bound)

    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stacked, mask = self._stack(losses, present)
        s = self.log_variance()
        terms = torch.exp(-s) * stacked + s  # [T]
        total = torch.where(mask, terms, 0.0 * s).sum()  # 0 * s keeps s in the graph (DDP)
        return total, self._named(torch.exp(-s))


class DynamicWeightAverage(Combiner):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019), per step.

    ``w_i = T * softmax_i(r_i / temperature)`` over the tasks present in the batch
    (``T`` = their number, so the weights sum to ``T``), where ``r_i`` is the ratio of a
    fast to a slow running mean of task ``i``'s loss: a task whose loss falls slowly has
    ``r_i`` near 1 and gains weight over a task that falls fast. The paper uses ratios of
    consecutive epoch means; per-step running means (``fast`` ~ last 10 steps, ``slow`` ~
    last 100) give the same signal without epoch bookkeeping. Weights come from the state
    *before* this step's update and from detached losses: no gradient flows through them.
    During the first ``warmup_steps`` updates of a task, ``r = 1``. Running means update
    only in training mode and only for present tasks; they are buffers (checkpointed).
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        tasks: Sequence[str] = COMBINED_TASKS,
        *,
        temperature: float = 2.0,
        fast: float = 0.9,
        slow: float = 0.99,
        warmup_steps: int = 20,
    ) -> None:
        super().__init__(weights, tasks)
        if temperature <= 0 or not 0 <= fast < slow < 1:
            raise PerceptionError("DWA needs temperature > 0 and 0 <= fast < slow < 1")
        self.temperature = temperature
        self.momentum = (fast, slow)
        self.warmup_steps = warmup_steps
        self.register_buffer("fast_mean", torch.zeros(len(self.tasks)))
        self.register_buffer("slow_mean", torch.zeros(len(self.tasks)))
        self.register_buffer("steps", torch.zeros(len(self.tasks), dtype=torch.long))

    def current_weights(self, present: torch.Tensor) -> torch.Tensor:
        """``[T]`` weights from the running means; 0 for absent tasks."""
        ready = self.steps >= max(self.warmup_steps, 1)
        ratio = self.fast_mean / self.slow_mean.clamp(min=1e-12)
        ratio = torch.where(ready, ratio, 1.0)
        logits = torch.where(present, ratio / self.temperature, -math.inf)
        soft = torch.softmax(logits, dim=0).nan_to_num(0.0)  # all absent: softmax of -inf
        return soft * present.sum()

    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stacked, mask = self._stack(losses, present)
        weights = self.current_weights(mask)
        total = torch.where(mask, weights * stacked, 0.0).sum()
        if self.training:
            self._update(stacked.detach(), mask)
        return total, self._named(weights)

    @torch.no_grad()
    def _update(self, loss: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold this step's ``[T]`` losses into the running means of present tasks."""
        first = self.steps == 0
        for buffer, m in zip((self.fast_mean, self.slow_mean), self.momentum, strict=True):
            blended = torch.where(first, loss, m * buffer + (1 - m) * loss)
            buffer.copy_(torch.where(mask, blended, buffer))
        self.steps.add_(mask.long())


class _InwardClamp(torch.autograd.Function):
    """``clamp(x, -bound, bound)`` whose gradient is kept except where it points outwards.

    Gradient descent moves ``x`` by ``-grad``: outside the range, a gradient that would
    move it further out is zeroed, one that moves it back passes unchanged.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp(-bound, bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        outward = ((x > ctx.bound) & (grad < 0)) | ((x < -ctx.bound) & (grad > 0))
        return torch.where(outward, 0.0, grad), None


COMBINERS: dict[str, type[Combiner]] = {
    "fixed": FixedWeights,
    "uncertainty": UncertaintyWeights,
    "dwa": DynamicWeightAverage,
}


def build_combiner(name: str, **kwargs) -> Combiner:
    """The one factory: ``name`` in ``COMBINERS``; ``kwargs`` go to its constructor."""
    key = name.lower()
    if key not in COMBINERS:
        raise PerceptionError(f"unknown loss combiner {name!r}; valid: {', '.join(COMBINERS)}")
    return COMBINERS[key](**kwargs)
