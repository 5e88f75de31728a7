"""Dense detection points: where each anchor-free prediction sits in the image.

The detection head predicts at every cell of the stride-8, -16 and -32 feature maps.
Point ``a`` of the flattened ``[A]`` axis belongs to one cell; its centre in network
pixels and its stride are given here, in the same order as ``HeadOutputs`` (levels in
stride order, row-major within a level). Used by the assigner, the loss and decoding,
so all three agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def level_sizes(image_hw: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """Feature-map ``(h, w)`` per stride for a ``H x W`` input (ceil, as strided convs give)."""
    h, w = image_hw
    return [(-(-h // s), -(-w // s)) for s in strides]


def dense_points(
    sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres ``[A, 2]`` (x, y) in network pixels and their strides ``[A]``.

    ``sizes[l]`` is the ``(h, w)`` of level ``l`` with stride ``strides[l]``; the centre of
    cell ``(i, j)`` is ``((j + 0.5) * s, (i + 0.5) * s)``.
    """
    points, point_strides = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [h, w] each
        points.append(torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2))  # [h*w, 2]
        point_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(point_strides)
