"""Monocular metric depth loss: a regression term + multi-scale gradient matching, on log depth.

Both terms work on ``d = log(pred) - log(gt)`` in metres, over valid pixels only. The head
outputs natural-log depth for the model's canonical camera; each image's own camera turns
it into metric depth first (``log(pred) = depth_log + log(f / f_c)``, see
``perception.ops.camera``), which is the same as comparing with the canonical target
``gt * f_c / f``. Valid pixels: ``depth > 0`` (KITTI: 0 = no measurement) and ``valid``
(not padding) and ``has_depth`` of the sample. Sparse ground truth (LiDAR, ~5 % of the
pixels) is the normal case, so nothing assumes dense maps. Invalid pixels are removed with
``torch.where``: their prediction changes neither the loss nor its gradient.

The regression term is chosen by name (``DEPTH_LOSSES``; YAML ``model.loss.depth_loss``):

* **SILog** (Eigen et al., 2014): per image ``sqrt(mean(d^2) - lambda * mean(d)^2)``,
  averaged over the images that have valid pixels. ``mean(d^2) - lambda mean(d)^2 =
  Var(d) + (1 - lambda) mean(d)^2``: ``lambda = 1`` would be fully scale-invariant and
  leave the metric scale unlearnt; ``lambda = 0.85 < 1`` keeps a (1 - lambda) penalty on
  the global log-scale error, so the network still learns metres while the structure
  term dominates. The square root (as in BTS/AdaBins) gives an RMSE-of-log-like scale.
* **l1, l2, smooth_l1, huber**: plain per-pixel penalties of the same log error ``d``
  (not of metric depth): the head predicts log depth, and on log depth an error of 1 m at
  5 m counts as much as 10 m at 50 m, so the far pixels of a road scene (large metric
  errors) do not drown the near ones. ``l2`` is ``d^2`` without a square root;
  ``smooth_l1`` and ``huber`` are quadratic below ``beta`` (log units; 0.1 is a ~10 %
  relative error) and linear above it, ``smooth_l1`` with slope 1 (an L1 that is smooth at
  0), ``huber`` with slope ``beta`` (an L2 whose outliers are capped). None is
  scale-invariant. Each image's mean over its valid pixels is averaged over the images
  with valid pixels, as for SILog, so a sparse LiDAR frame weighs as much as a dense one.
* **Gradient matching** (Li & Snavely MegaDepth 2018; Ranftl et al. MiDaS): the mean
  ``|dx d| + |dy d|`` over horizontally / vertically adjacent pairs of valid pixels, at
  ``num_scales`` resolutions. It is blind to a global scale and sharpens depth edges,
  which SILog (a per-pixel term) blurs. Coarser scales use masked average pooling, so
  sparse ground truth still forms adjacent pairs there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perception.errors import PerceptionError
from perception.losses.terms import TaskLoss
from perception.ops.camera import depth_scale

DEPTH_LOSSES: tuple[str, ...] = ("silog", "l1", "l2", "smooth_l1", "huber")


def check_depth_loss(name: str) -> None:
    """Raise one ``PerceptionError`` naming the valid choices unless ``name`` is one."""
    if name not in DEPTH_LOSSES:
        raise PerceptionError(f"unknown depth loss {name!r}; valid: {', '.join(DEPTH_LOSSES)}")


class DepthLoss(nn.Module):
    """``silog_weight * <loss> + grad_weight * gradient matching``; terms ``<loss>``, ``grad``.

    ``<loss>`` is ``loss`` (default ``silog``); ``silog_weight`` weights it whichever it is.
    """

    def __init__(
        self,
        *,
        loss: str = "silog",
        silog_lambda: float = 0.85,
        silog_weight: float = 1.0,
        grad_weight: float = 0.5,
        num_scales: int = 4,
        canonical_focal: float = 0.0,
        beta: float = 0.1,
        eps: float = 1e-6,
    ) -> None:
        """``grad_weight`` 0.5 as MiDaS; ``eps`` keeps the square root differentiable;
        ``canonical_focal`` is the model's (network pixels; 0 = camera-blind); ``beta`` is
        the quadratic-to-linear switch of ``smooth_l1`` / ``huber`` in log units."""
        super().__init__()
        check_depth_loss(loss)
        if not 0.0 <= silog_lambda <= 1.0:
            raise ValueError(f"silog_lambda must lie in [0, 1], got {silog_lambda}")
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.loss = loss
        self.beta = float(beta)
        self.silog_lambda = silog_lambda
        self.silog_weight = silog_weight
        self.grad_weight = grad_weight
        self.num_scales = num_scales
        self.canonical_focal = float(canonical_focal)
        self.eps = eps

    def forward(
        self,
        depth_log: torch.Tensor,
        depth: torch.Tensor,
        valid: torch.Tensor,
        has_depth: torch.Tensor,
        camera: torch.Tensor | None = None,
    ) -> TaskLoss:
        """Loss of one batch.

        Args:
            depth_log: ``[B, 1, h, w]`` predicted natural log of canonical depth (metres);
                resized bilinearly to the label size if ``(h, w)`` differs.
            depth: ``[B, H, W]`` ground-truth metres, 0 = no measurement.
            valid: ``[B, H, W]`` bool, False on padding.
            has_depth: ``[B]`` bool, per-sample task presence.
            camera: ``[B, 4]`` ``(fx, fy, cx, cy)`` network pixels; needed unless the
                model is camera-blind. An image whose camera is NaN is left out.

        Returns:
            ``TaskLoss`` with terms ``<loss>`` (``silog`` by default) and ``grad``; exactly 0
            with no valid pixel.
        """
        pred = depth_log.float()
        if pred.shape[-2:] != depth.shape[-2:]:
            pred = F.interpolate(pred, size=depth.shape[-2:], mode="bilinear", align_corners=False)
        pred = pred[:, 0]  # [B, 1, H, W] -> [B, H, W]
        has_depth = has_depth.bool()
        if self.canonical_focal > 0:
            if camera is None:
                raise ValueError("a camera-aware depth loss needs each image's camera")
            scale = depth_scale(camera, self.canonical_focal)  # [B]
            has_depth = has_depth & scale.isfinite() & (scale > 0)
            pred = pred + torch.where(has_depth, scale, 1.0).log()[:, None, None]
        mask = (depth > 0) & valid & has_depth[:, None, None]  # [B, H, W]
        gt_log = torch.where(mask, depth, 1.0).float().log()
        diff = torch.where(mask, pred - gt_log, 0.0)  # [B, H, W], 0 where invalid
        silog = self.loss == "silog"
        regression = self._silog(diff, mask) if silog else self._pointwise(diff, mask)
        grad = self._gradient(diff[:, None], mask[:, None].float())  # [B, 1, H, W]
        total = self.silog_weight * regression + self.grad_weight * grad
        return TaskLoss(total, {self.loss: regression, "grad": grad}, mask.any())

    def _pointwise(self, diff: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over images with valid pixels of the per-image mean penalty of ``diff``.

        ``[B, H, W]`` inputs; ``diff`` is 0 where invalid, so every penalty is 0 there too.
        """
        zero = torch.zeros_like(diff)
        if self.loss == "l1":
            penalty = diff.abs()
        elif self.loss == "l2":
            penalty = diff.pow(2)
        elif self.loss == "smooth_l1":
            penalty = F.smooth_l1_loss(diff, zero, reduction="none", beta=self.beta)
        else:  # huber
            penalty = F.huber_loss(diff, zero, reduction="none", delta=self.beta)  # [B, H, W]
        count = mask.sum(dim=(1, 2))  # [B]
        per_image = penalty.sum(dim=(1, 2)) / count.clamp(min=1)  # [B]
        has = count > 0
        return torch.where(has, per_image, 0.0).sum() / has.sum().clamp(min=1)

    def _silog(self, diff: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over images with valid pixels of the per-image SILog; ``[B, H, W]`` inputs."""
        count = mask.sum(dim=(1, 2))  # [B]
        n = count.clamp(min=1)
        mean_sq = diff.pow(2).sum(dim=(1, 2)) / n
        mean = diff.sum(dim=(1, 2)) / n
        variance = (mean_sq - self.silog_lambda * mean.pow(2)).clamp(min=0)
        per_image = torch.sqrt(variance + self.eps) - self.eps**0.5  # 0 at a perfect fit
        has = count > 0
        return torch.where(has, per_image, 0.0).sum() / has.sum().clamp(min=1)

    def _gradient(self, diff: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Mean over scales (with any valid pair) of the mean absolute log-depth-error gradient.

        Args:
            diff: ``[B, 1, H, W]`` log error, 0 where invalid.
            weight: ``[B, 1, H, W]`` 1.0 where valid, else 0.
        """
        losses = []
        for scale in range(self.num_scales):
            if scale > 0:  # masked average pooling: a cell is valid if any pixel in it is
                if min(diff.shape[-2:]) < 2:
                    break
                pooled = F.avg_pool2d(weight, 2, ceil_mode=True)
                diff = F.avg_pool2d(diff, 2, ceil_mode=True) / pooled.clamp(min=1e-6)
                weight = (pooled > 0).float()
            dx_pair = weight[..., :, 1:] * weight[..., :, :-1]  # [B, 1, h, w-1]
            dy_pair = weight[..., 1:, :] * weight[..., :-1, :]  # [B, 1, h-1, w]
            dx = (diff[..., :, 1:] - diff[..., :, :-1]).abs() * dx_pair
            dy = (diff[..., 1:, :] - diff[..., :-1, :]).abs() * dy_pair
            pairs = dx_pair.sum() + dy_pair.sum()
            losses.append(((dx.sum() + dy.sum()) / pairs.clamp(min=1), pairs > 0))
        value = torch.stack([v for v, _ in losses])
        used = torch.stack([u for _, u in losses])
        return torch.where(used, value, 0.0).sum() / used.sum().clamp(min=1)
