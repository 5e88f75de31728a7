"""Ray/surface intersections. Every function returns the ray parameter ``t`` = depth.

Rays come from ``PinholeCamera.rays`` (origin at the camera, camera-frame z = 1), so a hit
at ``t`` is ``t`` metres away along the optical axis. ``inf`` marks a miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.data.synthetic.scene import Facades, Part, Road

EPS = 1e-6
CORNER_SIGNS = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)


@dataclass
class GroundHit:
    """Where rays (flattened to 1-D pixel lists) meet the ground, curbs and sidewalks."""

    pixels: np.ndarray  # [P] flat pixel indices of rays that go down
    t: np.ndarray  # [P] depth
    x: np.ndarray  # [P] world X of the hit
    z: np.ndarray  # [P] world Z of the hit
    lateral: np.ndarray  # [P] metres right of the left road edge
    surface: np.ndarray  # [P] uint8: 0 road, 1 curb face, 2 sidewalk / verge


def ground(rays: np.ndarray, mount_height: float, road: Road) -> GroundHit:
    """Intersect rays ``[3, H, W]`` with the road plane and the raised sidewalks.

    The road is the plane ``Y = h``; beyond its edges the sidewalk is ``curb_height``
    higher. A ray that passes over the road edge at sidewalk height but lands off the
    road hits the vertical curb face, found by interpolating along the ray (the lateral
    coordinate is linear over such a short stretch).
    """
    dx, dy, dz = (r.ravel() for r in rays)  # [H*W] each
    pixels = np.flatnonzero(dy > EPS)
    dx, dy, dz = dx[pixels], dy[pixels], dz[pixels]
    h, width = mount_height, road.width
    t = h / dy  # the road plane first; off-road pixels are refined below
    s_road = road.lateral(t * dx, t * dz)
    surface = np.zeros(len(t), np.uint8)
    off = np.flatnonzero((s_road < 0) | (s_road > width))
    t_side = (h - road.curb_height) / dy[off]
    s_side = road.lateral(t_side * dx[off], t_side * dz[off])
    on_side = (s_side < 0) | (s_side > width)
    edge = np.where(s_road[off] < 0, np.float32(0.0), np.float32(width))
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.minimum(np.maximum((edge - s_side) / (s_road[off] - s_side), 0.0), 1.0)
    t_curb = t_side + (t[off] - t_side) * frac
    t[off] = np.where(on_side, t_side, t_curb)
    surface[off] = np.where(on_side, 2, 1)
    x, z = t * dx, t * dz
    return GroundHit(pixels, t, x, z, road.lateral(x, z), surface)


def lateral_surface(dx: np.ndarray, dz: np.ndarray, road: Road, lateral: float) -> np.ndarray:
    """Depth where rays cross the vertical surface ``lateral(X, Z) == lateral``.

    Solves ``t*dx - edge_x(t*dz) = lateral``, a quadratic in t on curved roads.
    """
    a = -0.5 * road.curvature * dz * dz
    b = dx - road.heading * dz
    c = -(road.offset + lateral)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if road.curvature == 0.0:
            t = -c / b
        else:
            root = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
            r1, r2 = (-b - root) / (2 * a), (-b + root) / (2 * a)
            r1 = np.where(r1 > EPS, r1, np.inf)
            r2 = np.where(r2 > EPS, r2, np.inf)
            t = np.where(b * b - 4 * a * c >= 0, np.minimum(r1, r2), np.inf)
    return np.where(np.isfinite(t) & (t > EPS), t, np.inf)


def facade(rays: np.ndarray, mount_height: float, road: Road, side: Facades) -> np.ndarray:
    """``[H, W]`` depth of building facades on one side of the road (inf = miss)."""
    dx, dy, dz = rays
    t = lateral_surface(dx, dz, road, side.lateral)
    z = np.where(np.isfinite(t), t * dz, -1e9)
    block = side.block_at(z)
    inside = block >= 0
    height = side.heights[block]
    with np.errstate(invalid="ignore"):  # inf * 0 on rays parallel to the facade
        y = t * dy  # world Y of the hit; facades stand on the sidewalk, Y <= h - curb
    top = mount_height - road.curb_height - height
    hit = inside & (height > 0) & (y >= top) & (y <= mount_height - road.curb_height)
    return np.where(hit, t, np.inf).astype(np.float32)


def yaw_matrix(yaw: float) -> np.ndarray:
    """``[3, 3]`` object-to-world rotation about the vertical (Y) axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def part_corners(part: Part, rotation: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``[8, 3]`` world corners of a part placed with ``rotation`` at ``origin``."""
    local = np.asarray(part.center) + CORNER_SIGNS * np.asarray(part.half)  # [8, 3]
    return local @ rotation.T + origin


def box(
    rays: np.ndarray, part: Part, rotation: np.ndarray, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays ``[3, h, w]`` against one oriented part.

    Returns depth ``[h, w]`` (inf = miss) and the hit face ``[h, w]`` as an index
    ``2 * axis + (direction component > 0)`` (the face whose outward normal is
    ``-sign(d_axis) * e_axis``).
    """
    shape = rays.shape[1:]
    dx, dy, dz = rays.reshape(3, -1)
    r = rotation  # a yaw: only the X/Z block is non-trivial
    d = np.stack([r[0, 0] * dx + r[2, 0] * dz, dy, r[0, 2] * dx + r[2, 2] * dz])  # part frame
    o = rotation.T @ (-origin) - np.asarray(part.center)  # [3] camera in the part frame
    half = np.asarray(part.half)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-half - o[:, None]) * inv
        t2 = (half - o[:, None]) * inv
    near = np.minimum(t1, t2)  # [3, h*w] entry per slab
    far = np.maximum(t1, t2)
    t_near = near.max(axis=0)
    hit = (t_near < far.min(axis=0)) & (t_near > EPS)
    axis = near.argmax(axis=0)
    along = np.where(axis == 0, d[0], np.where(axis == 1, d[1], d[2]))  # d on the hit axis
    face = 2 * axis + (along > 0)
    depth = np.where(hit, t_near, np.inf).astype(np.float32)
    return depth.reshape(shape), face.reshape(shape)
