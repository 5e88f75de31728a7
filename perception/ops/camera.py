"""Canonical-camera depth: how the camera enters metric depth.

From one image, a scene at distance ``z`` seen with focal length ``f`` looks (almost)
like the scene at ``z / k`` seen with ``k * f``: apparent size is ``f * S / z``. Metric
depth from a single image is therefore only defined *given the focal length*, and a
network that never sees it learns an average camera and is wrong in proportion to how
far each image's camera is from that average.

We remove the ambiguity with a **canonical camera** (Metric3D, Yin et al. 2023): the
depth head predicts the depth the scene would have if it had been imaged with a fixed
focal length ``f_c`` (``canonical_focal``, in network pixels)::

    z_canonical = z * f_c / f        (what the loss targets)
    z           = z_canonical * f / f_c   (what postprocess returns)

``f`` is ``sqrt(fx * fy)`` in *network* pixels, so it already includes the letterbox
resize. We chose this over conditioning the network on intrinsics (ray or focal
embeddings) because it changes no layer: any timm backbone, the ONNX graph and INT8
export stay as they are, the camera enters as one multiply after the head, and a camera
unseen in training (a longer lens) maps to canonical depths the network has seen,
so it generalises by construction rather than by interpolating an embedding.

Augmentation stays consistent for free: zooming an image by ``s`` is the same as a
focal length ``s * f`` — in canonical space ``z * f_c / (s f)`` either way — so dividing
the target depth by ``s`` at fixed ``f`` (``data.transforms``) and multiplying ``f`` by
``s`` at fixed depth give the identical canonical target. A horizontal flip leaves ``f``
unchanged. ``canonical_focal = 0`` turns the transform off: a camera-blind model whose
head predicts metric depth directly.
"""

from __future__ import annotations

import torch

DEFAULT_HFOV = 60.0  # degrees: assumed for images without intrinsics (~ the synthetic mean)


def focal_length(camera: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` ``(fx, fy, cx, cy)`` -> ``[...]`` ``sqrt(fx * fy)`` in the same pixels.

    The geometric mean keeps the scale right for slightly non-square pixels.
    """
    return (camera[..., 0] * camera[..., 1]).sqrt()


def depth_scale(camera: torch.Tensor, canonical_focal: float) -> torch.Tensor:
    """Per-image factor from canonical to metric depth: ``f / f_c``.

    Args:
        camera: ``[B, 4]`` ``(fx, fy, cx, cy)`` in network pixels (NaN = unknown).
        canonical_focal: ``f_c`` of the model in network pixels; 0 = camera-blind.

    Returns:
        ``[B]`` float32: metric = canonical * scale. All ones for a camera-blind model;
        NaN where the camera is NaN (callers mask those images).
    """
    if canonical_focal <= 0:
        return torch.ones(camera.shape[:-1], dtype=torch.float32, device=camera.device)
    return focal_length(camera.float()) / canonical_focal
