"""The pinhole camera of the synthetic world.

World frame: X right, Y down, Z forward (metres), camera at the origin, flat ground at
``Y = height``. The camera may pitch (look down, positive) and roll. Rays are scaled so
their component along the optical axis is 1: a point at ray parameter ``t`` then lies at
depth ``t`` — the z-buffer value *is* the metric depth label, with no conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics in pixels of a ``width`` x ``height`` image; extrinsics in metres/radians."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    mount_height: float  # camera height above the ground plane, metres
    pitch: float = 0.0  # radians, positive looks down
    roll: float = 0.0  # radians, positive turns the image clockwise

    @cached_property
    def rotation(self) -> np.ndarray:
        """``[3, 3]`` camera-to-world rotation: ``p_world = R @ p_camera``."""
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        cr, sr = np.cos(self.roll), np.sin(self.roll)
        pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
        roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        return pitch @ roll

    def rays(self) -> np.ndarray:
        """``[3, H, W]`` float32 world-frame ray directions through pixel centres.

        Pixel (row v, column u) has its centre at ``(u + 0.5, v + 0.5)``. Each ray has
        camera-frame z = 1, so ``t`` along it equals depth along the optical axis.
        """
        u = ((np.arange(self.width) + 0.5 - self.cx) / self.fx).astype(np.float32)[None, :]
        v = ((np.arange(self.height) + 0.5 - self.cy) / self.fy).astype(np.float32)[:, None]
        r = self.rotation.astype(np.float32)
        # world = R @ (u, v, 1), one [H, W] plane per world axis
        return np.stack([r[i, 0] * u + r[i, 1] * v + r[i, 2] for i in range(3)])

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points ``[N, 3]`` -> pixel coordinates ``[N, 2]`` (u, v) and depth ``[N]``."""
        cam = points @ self.rotation  # row-vector form of R.T @ p: [N, 3]
        z = cam[:, 2]
        safe = np.where(np.abs(z) < 1e-6, 1e-6, z)
        u = self.fx * cam[:, 0] / safe + self.cx
        v = self.fy * cam[:, 1] / safe + self.cy
        return np.stack([u, v], axis=1), z
