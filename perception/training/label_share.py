"""Each task's gradient weighted by the share of the batch that is labeled for it.

Every task loss is a mean over the images labeled for that task, so in a partially
labeled mix a task labeled on 5 images of a batch of 16 pushes the shared backbone as
hard as a task labeled on all 16, with a gradient estimated from a third of the images,
and so noisier. Scaling the loss would not change that: the uncertainty combiner learns
each task's weight from its loss value and would absorb the factor. So this scales the
*gradient* that flows back from each head output by ``n_task / B`` (the loss values, and
what the combiner reads, stay as they are): each labeled image then contributes ``1 / B``
of its task's gradient, as it does in a fully labeled batch. On a fully labeled batch
every factor is 1 and nothing changes.

The lane and drivable-area channels are scaled separately (pseudo-labeled rows count as
labeled: they are trained like real labels).
"""

from __future__ import annotations

import torch

from perception.structures import TASKS, Batch, HeadOutputs


def scale_gradient(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged in the forward pass; its gradient times ``factor`` (broadcast)."""
    return x * factor + x.detach() * (1 - factor)


def label_shares(batch: Batch) -> dict[str, torch.Tensor]:
    """Per task of ``TASKS``, the ``[]`` float share of the batch's rows labeled for it."""
    return {task: getattr(batch, f"has_{task}").float().mean() for task in TASKS}


def scale_by_label_share(outputs: HeadOutputs, batch: Batch) -> HeadOutputs:
    """``outputs`` whose gradients are scaled by each task's labeled share of ``batch``."""
    share = label_shares(batch)
    seg = outputs.seg_logits  # [B, S, H, W]: channel 0 lane, 1 drivable
    seg_factor = torch.stack([share["lane"], share["drivable"]])[: seg.shape[1]]  # [S]
    return HeadOutputs(
        cls_logits=scale_gradient(outputs.cls_logits, share["det"]),
        box_dist=scale_gradient(outputs.box_dist, share["det"]),
        seg_logits=scale_gradient(seg, seg_factor[None, :, None, None].to(seg.dtype)),
        depth_log=scale_gradient(outputs.depth_log, share["depth"]),
    )
