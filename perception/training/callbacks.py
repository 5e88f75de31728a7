"""Prediction overlays logged during validation, so a run can be *looked at*.

The first validation batch is decoded with the deployment settings and drawn with the
same ``visualize.prediction_overlay`` that ``Prediction.plot`` uses; the grid goes to
TensorBoard and, as a JPEG, to ``<log_dir>/overlays/`` (readable without TensorBoard).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from perception import visualize
from perception.ops.camera import depth_scale
from perception.postprocess.dense import depth_metres, seg_probabilities
from perception.postprocess.detection import postprocess_detections
from perception.structures import Batch, HeadOutputs


@torch.no_grad()
def overlay_grid(
    batch: Batch,
    outputs: HeadOutputs,
    points: torch.Tensor,
    strides: torch.Tensor,
    class_names: list[str],
    count: int,
    conf: float = 0.3,
    canonical_focal: float = 0.0,
) -> np.ndarray:
    """``[count * H, W, 3]`` uint8: one prediction overlay per image, stacked.

    ``canonical_focal`` is the model's (``ops.camera``): depth is drawn in metres for
    each image's own camera.
    """
    n = min(count, len(batch))
    dets = postprocess_detections(
        outputs.cls_logits[:n].float(), outputs.box_dist[:n].float(), points, strides, conf=conf
    )
    seg = seg_probabilities(outputs.seg_logits[:n].float()).cpu().numpy()  # [n, S, H, W]
    scale = depth_scale(batch.camera[:n], canonical_focal)  # [n]
    depth = depth_metres(outputs.depth_log[:n], scale)[:, 0].cpu().numpy()  # [n, H, W]
    rows = []
    for i in range(n):
        image = batch.images[i].permute(1, 2, 0).cpu().numpy()  # [3, H, W] -> [H, W, 3]
        rows.append(
            visualize.prediction_overlay(
                image,
                dets[i].boxes.cpu().numpy(),
                dets[i].scores.cpu().numpy(),
                dets[i].labels.cpu().numpy(),
                class_names,
                seg[i, 0],
                seg[i, 1] if seg.shape[1] > 1 else None,
                depth[i],
            )
        )
    return np.concatenate(rows, axis=0)


def log_overlays(
    module: L.LightningModule,
    batch: Batch,
    outputs: HeadOutputs,
    points: torch.Tensor,
    strides: torch.Tensor,
    log_dir: str | None = None,
) -> None:
    """Draw the batch's predictions and send them to every place a person can look
    (TensorBoard, and ``log_dir/overlays/`` as JPEG files)."""
    grid = overlay_grid(
        batch,
        outputs,
        points,
        strides,
        list(module.hparams.class_names),
        module.hparams.overlay_images,
        canonical_focal=module.canonical_focal,
    )
    step = module.global_step
    for logger in module.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("val/overlays", grid, step, dataformats="HWC")
    if log_dir:
        folder = Path(log_dir) / "overlays"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"step_{step:07d}.jpg"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
