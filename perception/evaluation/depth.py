"""Metric depth errors over a split (METRICS.md), accumulated as sums and reduced once."""

from __future__ import annotations

import math

import torch


class DepthEvaluator:
    """Metric depth errors (METRICS.md) over every valid ground-truth pixel of a split.

    Prediction and ground truth are clamped to ``[min_depth, max_depth]`` metres; no
    median scaling. Pixels count where ``target > 0``, ``valid`` and the sample is labeled.
    """

    _TERMS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")

    def __init__(self, max_depth: float = 80.0, min_depth: float = 1e-3) -> None:
        self.max_depth, self.min_depth = max_depth, min_depth
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(len(self._TERMS), dtype=torch.float64)
        self._count = 0

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        *,
        valid: torch.Tensor,
        labeled: torch.Tensor,
    ) -> None:
        """Add a batch: ``pred`` ``[B, 1, H, W]`` or ``[B, H, W]`` metres, ``target``
        ``[B, H, W]`` metres (0 = no measurement), ``valid`` ``[B, H, W]``, ``labeled`` ``[B]``."""
        pred = pred.reshape(target.shape)  # [B, 1, H, W] -> [B, H, W]
        mask = (target > 0) & valid.bool() & labeled.bool()[:, None, None]  # [B, H, W]
        dtype = torch.float32 if pred.device.type == "mps" else torch.float64
        d = pred[mask].to(dtype).clamp(self.min_depth, self.max_depth)  # [P]
        g = target[mask].to(dtype).clamp(self.min_depth, self.max_depth)  # [P]
        ratio = torch.maximum(d / g, g / d)
        sums = torch.stack(
            [
                ((d - g).abs() / g).sum(),
                ((d - g) ** 2 / g).sum(),
                ((d - g) ** 2).sum(),
                ((d.log() - g.log()) ** 2).sum(),
                *[(ratio < 1.25**k).sum().to(dtype) for k in (1, 2, 3)],
            ]
        )
        self._sums += sums.cpu().double()
        self._count += int(d.numel())

    def state(self) -> dict[str, torch.Tensor | int]:
        """The sum states (error sums, pixel count): merged across processes by adding."""
        return {"sums": self._sums.clone(), "count": self._count}

    def merge(self, state: dict[str, torch.Tensor | int]) -> None:
        self._sums += state["sums"]
        self._count += int(state["count"])

    def compute(self) -> dict[str, float]:
        if self._count == 0:
            return {f"depth/{name}": math.nan for name in self._TERMS}
        mean = dict(zip(self._TERMS, (self._sums / self._count).tolist(), strict=True))
        for name in ("rmse", "rmse_log"):
            mean[name] = math.sqrt(mean[name])
        return {f"depth/{name}": mean[name] for name in self._TERMS}
