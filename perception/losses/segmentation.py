"""Lane / drivable segmentation loss: weighted BCE + soft Tversky (Dice) per channel.

Lane markings are thin and rare (typically 1-3 % of the pixels of a road image): plain
BCE is then minimised by predicting "no lane" almost everywhere. Two defaults counter it:

* ``pos_weight`` on the lane BCE (4 by default) multiplies the loss of lane pixels, so a
  missed lane pixel costs as much as four false alarms;
* a region term, soft Tversky ``1 - TP / (TP + a FP + b FN)`` computed over all labeled
  pixels of the batch, which is insensitive to how many background pixels there are. With
  ``b = 0.5`` it is the soft Dice loss; the lane default ``b = 0.7`` leans towards recall,
  since an under-segmented (broken) lane line hurts downstream fitting more than a thick
  one. Drivable area is large and balanced: plain BCE + Dice.

Masking: a pixel counts only where its label is not 255, ``valid`` is True and its sample
has the channel labeled (``has_lane`` / ``has_drivable``). Masked pixels are excluded with
``torch.where``, so whatever the prediction there, the loss and its gradient ignore it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from perception.losses.terms import TaskLoss

CHANNELS: tuple[str, ...] = ("lane", "drivable")  # seg_logits channel order


class SegmentationLoss(nn.Module):
    """Per-channel ``bce_weight * BCE + dice_weight * Tversky``; terms ``<channel>_bce``,
    ``<channel>_dice``; the total sums the present channels."""

    def __init__(
        self,
        *,
        pos_weight: Sequence[float] = (4.0, 1.0),
        fn_weight: Sequence[float] = (0.7, 0.5),
        fp_weight: Sequence[float] | None = None,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
    ) -> None:
        """Per-channel sequences are in ``CHANNELS`` order (lane, drivable).

        Args:
            pos_weight: BCE weight of foreground pixels per channel.
            fn_weight: Tversky ``b`` (false-negative weight) per channel.
            fp_weight: Tversky ``a`` (false-positive weight) per channel; default
                ``1 - b``, which keeps ``a + b = 1`` (``a = b = 0.5`` is soft Dice).
            bce_weight, dice_weight: weights of the two terms in the total.
            smooth: additive smoothing of the Tversky ratio (in pixels); keeps it defined
                and its gradient bounded on images with no foreground.
        """
        super().__init__()
        if fp_weight is None:
            fp_weight = [1.0 - b for b in fn_weight]
        if len({len(pos_weight), len(fn_weight), len(fp_weight), len(CHANNELS)}) != 1:
            raise ValueError(
                f"pos_weight, fn_weight and fp_weight need one value per channel {CHANNELS}"
            )
        if not all(0.0 <= w <= 1.0 for w in (*fn_weight, *fp_weight)):
            raise ValueError(
                f"Tversky weights must lie in [0, 1], got fn {tuple(fn_weight)}, "
                f"fp {tuple(fp_weight)}"
            )
        self.pos_weight = tuple(float(w) for w in pos_weight)
        self.fn_weight = tuple(float(b) for b in fn_weight)
        self.fp_weight = tuple(float(a) for a in fp_weight)
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(
        self,
        seg_logits: torch.Tensor,
        lane: torch.Tensor,
        drivable: torch.Tensor,
        valid: torch.Tensor,
        has_lane: torch.Tensor,
        has_drivable: torch.Tensor,
    ) -> TaskLoss:
        """Loss of one batch.

        Args:
            seg_logits: ``[B, S, h, w]`` raw logits, channel 0 lane, channel 1 drivable if
                ``S == 2``; resized bilinearly to the label size if ``(h, w)`` differs.
            lane, drivable: ``[B, H, W]`` uint8 labels, 0 / 1, 255 = ignore.
            valid: ``[B, H, W]`` bool, False on padding.
            has_lane, has_drivable: ``[B]`` bool, per-sample task presence.

        Returns:
            ``TaskLoss``; channels beyond ``S`` (a lane-only model) give no terms.
        """
        logits = seg_logits.float()
        if logits.shape[-2:] != lane.shape[-2:]:
            logits = F.interpolate(
                logits, size=lane.shape[-2:], mode="bilinear", align_corners=False
            )
        labels = (lane, drivable)
        flags = (has_lane, has_drivable)
        terms: dict[str, torch.Tensor] = {}
        total = logits.new_zeros(())
        present = torch.zeros((), dtype=torch.bool, device=logits.device)
        for c in range(min(logits.shape[1], len(CHANNELS))):
            mask = (labels[c] != 255) & valid & flags[c][:, None, None]  # [B, H, W]
            target = (labels[c] == 1).float()
            bce, dice = self._channel(logits[:, c], target, mask, c)
            terms[f"{CHANNELS[c]}_bce"], terms[f"{CHANNELS[c]}_dice"] = bce, dice
            total = total + self.bce_weight * bce + self.dice_weight * dice
            present = present | mask.any()
        return TaskLoss(total, terms, present)

    def _channel(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, channel: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BCE (mean over labeled pixels) and Tversky loss of one ``[B, H, W]`` channel.

        Both are exactly 0 (still attached to ``logits``) when ``mask`` is all False.
        """
        count = mask.sum()
        pos_weight = logits.new_tensor(self.pos_weight[channel])
        bce = F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=pos_weight, reduction="none"
        )
        bce = torch.where(mask, bce, 0.0).sum() / count.clamp(min=1)
        prob = torch.where(mask, logits.sigmoid(), 0.0)
        target = torch.where(mask, target, 0.0)
        tp = (prob * target).sum()
        fp = (prob * (1 - target)).sum()
        fn = ((1 - prob) * target).sum()
        alpha, beta = self.fp_weight[channel], self.fn_weight[channel]
        tversky = (tp + self.smooth) / (tp + alpha * fp + beta * fn + self.smooth)
        return bce, 1.0 - tversky  # no labeled pixel: tp = fp = fn = 0, ratio exactly 1
