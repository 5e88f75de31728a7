"""Catch a non-finite loss or gradient before it reaches the weights.

One NaN in an update spreads to every weight it touches and the run trains on garbage
from then on, silently: the logged loss is NaN but nothing stops. So each step is
checked twice, once on the loss terms (naming the task) and once on the gradients
(naming the parameters), and the step is skipped and counted, or, with
``model.on_nonfinite: stop``, the run stops with a checkpoint to inspect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

ACTIONS = ("skip", "stop")


def _nonfinite(names: Sequence[str], values: Sequence[torch.Tensor]) -> list[str]:
    """The ``names`` whose scalar is NaN or infinite, read with one device sync per step
    (this runs every step; a check per tensor would stall a GPU once per parameter)."""
    finite = torch.isfinite(torch.stack([v.detach().float() for v in values]))  # [N]
    if bool(finite.all()):
        return []
    return [n for n, ok in zip(names, finite.tolist(), strict=True) if not ok]


def nonfinite_terms(total: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the loss terms that are NaN or infinite (``total`` when only it is)."""
    names = [*parts, "total"]
    bad = _nonfinite(names, [v.sum() for v in (*parts.values(), total)])
    return [n for n in bad if n != "total"] or bad


def nonfinite_grads(module: torch.nn.Module) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or an infinity (its norm is then
    NaN or infinite too)."""
    grads = [(n, p.grad) for n, p in module.named_parameters() if p.grad is not None]
    if not grads:
        return []
    names, values = zip(*grads, strict=True)
    return _nonfinite(names, [torch.linalg.vector_norm(g.float()) for g in values])


def describe(what: str, names: Sequence[str], step: int, ids: Sequence[str]) -> str:
    """One line: what was non-finite, where, at which step, in which samples."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    samples = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
    return f"non-finite {what} ({shown}) at step {step}, samples [{samples}]"
