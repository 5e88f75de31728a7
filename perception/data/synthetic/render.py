"""Render a ``Scene`` into an image and its labels with one z-buffer.

Layers (sky, ground, facades, far tree line, solids) are ray cast and composited by
depth, so every label comes from the same buffers as the pixels: depth is the z-buffer,
drivable is "road won the z-test", lane is "painted marking won", and each box is the
extent of the pixels its object won — occlusion and truncation come for free.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from perception.data.synthetic import raycast, shading
from perception.data.synthetic.scene import Scene, Solid

SKY, ROAD, CURB, SIDEWALK, FACADE, FAR, CLUTTER, OBJECT = range(8)
GROUND = (ROAD, CURB, SIDEWALK)
SHADOW_RANGE = 70.0  # metres; farther shadows cover a pixel or two and cost the same
MIN_VISIBLE_PIXELS = 10  # objects with fewer visible pixels are not labeled
LANE_MIN_WIDTH_PX = 2.0  # lane labels are drawn at least this wide (see lane_label_rule)


@dataclass
class Rendered:
    """A rendered sample: the image and labels, all ``[H, W]`` in image pixels."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    depth: np.ndarray  # [H, W] float32 metres along the optical axis, 0 = sky
    lane: np.ndarray  # [H, W] uint8 0/1
    drivable: np.ndarray  # [H, W] uint8 0/1
    object_ids: np.ndarray  # [H, W] int16 index into scene.solids, -1 = no object
    boxes: np.ndarray  # [N, 4] float32 xyxy, pixel-edge convention
    labels: list[str]
    solid_index: list[int]  # which scene.solids each box belongs to


class Frame:
    """The z-buffer and everything that travels with it."""

    def __init__(self, height: int, width: int) -> None:
        self.depth = np.full((height, width), np.inf, np.float32)
        self.color = np.zeros((3, height, width), np.float32)  # planar: fast numpy loops
        self.material = np.zeros((height, width), np.uint8)
        self.ids = np.full((height, width), -1, np.int16)

    def paint(
        self,
        where: tuple[slice, slice] | np.ndarray,
        t: np.ndarray,
        color,
        material: int,
        solid: int = -1,
    ) -> None:
        """Keep ``t`` where it is nearer than the buffer.

        ``where`` is a ``(rows, cols)`` slice pair (``t`` is ``[h, w]``) or a 1-D array of
        flat pixel indices (``t`` is ``[P]``). ``color`` is a callable ``mask -> [3, M]``
        so colours are computed only for pixels that win the depth test.
        """
        if isinstance(where, np.ndarray):
            buffers = (
                self.depth.reshape(-1),
                self.color.reshape(3, -1),
                self.material.reshape(-1),
                self.ids.reshape(-1),
            )
            win = t < buffers[0][where]
            target = where[win]
        else:
            buffers = (
                self.depth[where],
                self.color[(slice(None), *where)],
                self.material[where],
                self.ids[where],
            )
            win = t < buffers[0]
            target = win
        if not win.any():
            return
        depth, rgb, material_buf, ids = buffers
        depth[target] = t[win]
        rgb[:, target] = color(win)
        material_buf[target] = material
        ids[target] = solid


def _rgb(color) -> np.ndarray:
    """A colour as a ``[3, 1]`` float32 column, broadcastable against planar ``[3, M]``."""
    return np.asarray(color, np.float32).reshape(3, 1)


def lane_label_rule() -> str:
    return (
        f"lane pixel = visible road pixel within max(paint_width / 2, depth / fx) metres "
        f"laterally of a painted line, so lines are labelled at least "
        f"{LANE_MIN_WIDTH_PX:g} px wide at any distance (edge-line bands are shifted to "
        f"stay on the road); dashed lines only on the dashes"
    )


def _ground(frame: Frame, rays: np.ndarray, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Draw road, curbs and sidewalks.

    Returns the flat ``[H*W]`` bool lane-label mask and the flat indices of pixels that
    facades or the far tree line could still occlude (see ``_open_pixels``).
    """
    cam, road, light = scene.camera, scene.road, scene.lighting
    hit = raycast.ground(rays, cam.mount_height, road)
    s, x, z = hit.lateral, hit.x, hit.z
    grain = shading.texture(x, z, 9.0)  # multi-octave: fine grain and metre-size patches
    albedo = _rgb(road.asphalt) * (1 + 0.4 * grain)  # [3, P]
    side = np.flatnonzero(hit.surface == 2)
    ss, zs, gs = s[side], z[side], grain[side]
    tiles = (shading.frac(zs / 1.5) < 0.033) | (shading.frac(np.abs(ss) / 1.5) < 0.033)
    albedo[:, side] = _rgb(road.sidewalk) * (1 + 0.15 * gs - 0.3 * tiles.astype(np.float32))
    verge = side[(ss < -road.sidewalk_width) | (ss > road.width + road.sidewalk_width)]
    albedo[:, verge] = _rgb((0.08, 0.12, 0.04)) * (1 + 0.8 * grain[verge])
    albedo[:, hit.surface == 1] = 0.45 * _rgb(road.sidewalk) / max(road.sidewalk) + 0.05
    label = np.zeros(len(s), bool)
    on_road = np.flatnonzero(hit.surface == 0)
    sr, zr = s[on_road], z[on_road]
    half_label = np.maximum(road.mark_width / 2, hit.t[on_road] / cam.fx)
    dash_on = shading.frac((zr - road.dash_phase) / road.dash_period) < (
        road.dash_length / road.dash_period
    )
    worn = grain[on_road] < -0.55
    for offset, dashed, paint in road.markings():
        # far edge lines: keep the widened label band on the road, not on the curb
        centre = np.minimum(np.maximum(offset, half_label), road.width - half_label)
        close = np.abs(sr - centre) < half_label
        if dashed:
            close &= dash_on
        label[on_road[close]] = True
        painted = close & (np.abs(sr - offset) < road.mark_width / 2) & ~worn
        albedo[:, on_road[painted]] = _rgb(paint)
    lam = np.where(hit.surface == 1, 0.4, -light.sun[1]).astype(np.float32)
    color = shading.lit(albedo, lam, light)
    surface = np.array([ROAD, CURB, SIDEWALK], np.uint8)[hit.surface]
    h, w = frame.depth.shape
    frame.depth.reshape(-1)[hit.pixels] = hit.t
    frame.color.reshape(3, -1)[:, hit.pixels] = color
    frame.material.reshape(-1)[hit.pixels] = surface
    flat = np.zeros(h * w, bool)
    flat[hit.pixels] = label
    return flat, _open_pixels(hit, scene, h * w)


def _open_pixels(hit: raycast.GroundHit, scene: Scene, size: int) -> np.ndarray:
    """Flat indices of pixels whose ray may meet a facade or the far line before the ground.

    A ray that lands on the ground between the two facade lines stays between them on
    the way (a straight chord; on curves it can bulge by at most curvature * Z^2 / 8,
    added as a margin), and Z only grows along a ray, so a ground hit nearer than the far
    line cannot be hidden by it. Skipping the other pixels halves the cost of both layers.
    """
    left, right = scene.facades[0].lateral, scene.facades[1].lateral
    margin = abs(scene.road.curvature) * hit.z * hit.z / 8 + 0.01
    closed = (
        (hit.lateral > left + margin)
        & (hit.lateral < right - margin)
        & (hit.z < scene.far_distance)
    )
    is_open = np.ones(size, bool)
    is_open[hit.pixels[closed]] = False
    return np.flatnonzero(is_open)


def _facades(frame: Frame, rays: np.ndarray, pixels: np.ndarray, scene: Scene) -> None:
    """Building facades on both sides, cast for the flat ``pixels`` whose ``rays`` are
    ``[3, P]``.

    On a straight road the lateral coordinate changes linearly along a ray, so a ray can
    only reach the facade on the side it is heading to: each side tests only those rays.
    """
    cam, road, light = scene.camera, scene.road, scene.lighting
    yaw = road.yaw_at(20.0)
    rate = rays[0] - road.heading * rays[2]  # d(lateral)/dt on a straight road
    for sign, side in zip((1, -1), scene.facades, strict=True):
        if road.curvature == 0.0:
            keep = np.flatnonzero(rate * (side.lateral + road.offset) > 0)
            side_rays, side_pixels = rays[:, keep], pixels[keep]
        else:
            side_rays, side_pixels = rays, pixels
        t = raycast.facade(side_rays, cam.mount_height, road, side)
        normal = sign * np.array([np.cos(yaw), 0.0, -np.sin(yaw)])

        def color(win, t=t, side=side, normal=normal, side_rays=side_rays):
            z = t[win] * side_rays[2][win]
            up = cam.mount_height - road.curb_height - t[win] * side_rays[1][win]
            lam = float(normal @ np.asarray(light.sun))
            return shading.lit(_facade_albedo(z, up, side, light), lam, light)

        frame.paint(side_pixels, t, color, FACADE)


def _facade_albedo(z: np.ndarray, up: np.ndarray, side, light) -> np.ndarray:
    """``[3, M]`` facade colour at depth ``z`` and height ``up`` above the sidewalk: the
    block's paint with grain, and a grid of dark glass windows above the ground floor."""
    block = side.block_at(z)
    window = (shading.frac(z / 3.0) > 0.23) & (shading.frac(up / 3.2) > 0.31) & (up > 3.0)
    albedo = side.colors[:, block] * (1 + 0.2 * shading.texture(z, up, 4.0))
    albedo[:, window] = _rgb((0.05, 0.06, 0.08)) + 0.3 * _rgb(light.sky_horizon)
    return albedo


def _far(frame: Frame, rays: np.ndarray, pixels: np.ndarray, scene: Scene) -> None:
    """A tree line / hills at ``far_distance`` that closes the view (bounded depth)."""
    dx, dy, dz = rays
    with np.errstate(divide="ignore"):
        t = np.where(dz > 0.05, scene.far_distance / dz, np.inf)
    x, y = t * dx, t * dy
    phase = scene.far_distance  # varies per scene; deterministic
    top = scene.camera.mount_height - (
        12 + 6 * np.sin(x / 23 + phase) + 3 * np.sin(x / 7 + 2 * phase)
    )
    t = np.where(y >= top, t, np.inf).astype(np.float32)
    tint = _rgb((0.06, 0.1, 0.06)) + 0.05 * _rgb(scene.lighting.sky_horizon)

    def color(win):
        grain = shading.texture(x[win], y[win], 1.5)
        return shading.lit(tint * (1 + 0.4 * grain), 0.3, scene.lighting)

    frame.paint(pixels, t, color, FAR)


def ground_height(scene: Scene, solid: Solid) -> float:
    """World Y under a solid: the road plane, or the raised sidewalk beyond the curbs."""
    s = scene.road.lateral(np.float64(solid.x), np.float64(solid.z))
    off_road = s < 0 or s > scene.road.width
    return scene.camera.mount_height - (scene.road.curb_height if off_road else 0.0)


def _solid(frame: Frame, rays: np.ndarray, scene: Scene, index: int) -> tuple[int, ...] | None:
    """Draw one solid; returns its screen rectangle ``(r0, r1, c0, c1)`` or None."""
    cam, light, solid = scene.camera, scene.lighting, scene.solids[index]
    rotation = raycast.yaw_matrix(solid.yaw)
    origin = np.array([solid.x, ground_height(scene, solid), solid.z])
    faces = (
        rotation @ np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]).T
    )
    face_light = (faces.T @ np.asarray(light.sun)).astype(np.float32)  # [6] per face index
    face_up = (-faces[1]).astype(np.float32)  # [6] upward component of each face normal
    corners = np.stack([raycast.part_corners(p, rotation, origin) for p in solid.parts])
    uv, zc = cam.project(corners.reshape(-1, 3))  # [P*8, 2], [P*8]
    uv, zc = uv.reshape(-1, 8, 2), zc.reshape(-1, 8)
    lo = np.floor(uv.min(axis=1)).astype(int)  # [P, 2] (col, row)
    hi = np.ceil(uv.max(axis=1)).astype(int) + 1
    tiny = (hi - lo < 3).any(axis=1)  # [P] under ~1 px across: level of detail
    lo, hi = np.maximum(lo, 0), np.minimum(hi, (cam.width, cam.height))
    rect = None
    for k, part in enumerate(solid.parts):
        (c0, r0), (c1, r1) = lo[k], hi[k]
        if zc[k].min() < 0.3 or tiny[k] or c1 <= c0 or r1 <= r0:
            continue  # behind the camera, sub-pixel, or off screen
        region = (slice(r0, r1), slice(c0, c1))
        t, face = raycast.box(rays[:, r0:r1, c0:c1], part, rotation, origin)

        def color(win, face=face, part=part):
            faces = face[win]
            out = shading.lit(_rgb(part.color), face_light[faces], light)  # [3, M]
            if part.gloss:
                out += (
                    (part.gloss * 0.5)
                    * _rgb(light.sky_horizon)
                    * np.clip(face_up[faces] + 0.3, 0, 1)
                )
            return out

        frame.paint(
            region, t, color, OBJECT if solid.label else CLUTTER, index if solid.label else -1
        )
        rect = (
            (r0, r1, c0, c1)
            if rect is None
            else (min(rect[0], r0), max(rect[1], r1), min(rect[2], c0), max(rect[3], c1))
        )
    return rect


def _shadows(frame: Frame, scene: Scene) -> None:
    """Darken ground pixels inside the cast shadow and contact shadow of every solid.

    The shadow of a box on a plane is the convex hull of its corners pushed along the sun
    direction onto that plane; projected into the image it is again a polygon.
    """
    cam, light = scene.camera, scene.lighting
    sun = np.asarray(light.sun)
    h, w = frame.depth.shape
    cast = np.zeros((h, w), np.uint8)
    contact = np.zeros((h, w), np.uint8)
    for solid in scene.solids:
        if solid.z > SHADOW_RANGE:
            continue
        rotation = raycast.yaw_matrix(solid.yaw)
        ground_y = ground_height(scene, solid)
        origin = np.array([solid.x, ground_y, solid.z])
        corners = np.concatenate([raycast.part_corners(p, rotation, origin) for p in solid.parts])
        lift = (ground_y - corners[:, 1]) / -sun[1]  # distance along -sun to the ground
        shadow = corners - lift[:, None] * sun  # [8P, 3] on the ground plane
        footprint = corners.copy()
        footprint[:, 1] = ground_y
        for points, mask in ((shadow, cast), (footprint, contact)):
            uv, zc = cam.project(points)
            if zc.min() < 0.5 or not np.isfinite(uv).all() or np.abs(uv).max() > 1e5:
                continue
            hull = cv2.convexHull(np.round(uv).astype(np.int32))
            cv2.fillConvexPoly(mask, hull, 1)
    ground = (frame.material >= ROAD) & (frame.material <= SIDEWALK)
    ambient = np.asarray(light.ambient, np.float32)
    direct = ambient + np.asarray(light.sun_color, np.float32) * max(-sun[1], 0.0)
    for mask, gain in ((ground & (cast > 0), ambient / direct), (ground & (contact > 0), 0.5)):
        for c in range(3):
            frame.color[c][mask] *= np.float32(np.broadcast_to(gain, 3)[c])


def _boxes(
    frame: Frame, scene: Scene, rects: dict[int, tuple[int, ...]]
) -> tuple[list, list, list]:
    """Box = extent of the pixels each object won in the z-buffer (visible pixels only)."""
    boxes, labels, index = [], [], []
    for i, (r0, r1, c0, c1) in rects.items():
        mine = frame.ids[r0:r1, c0:c1] == i
        if mine.sum() < MIN_VISIBLE_PIXELS:
            continue  # fully occluded, or too few pixels to label
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        boxes.append([c0 + cols[0], r0 + rows[0], c0 + cols[-1] + 1, r0 + rows[-1] + 1])
        labels.append(scene.solids[i].label)
        index.append(i)
    return boxes, labels, index


def render(scene: Scene, rng: np.random.Generator) -> Rendered:
    """Ray cast ``scene``; ``rng`` only drives sensor noise (the scene holds the rest)."""
    cam, light = scene.camera, scene.lighting
    rays = cam.rays()
    frame = Frame(cam.height, cam.width)
    lane_flat, open_pixels = _ground(frame, rays, scene)
    open_rays = rays.reshape(3, -1)[:, open_pixels]  # [3, P]
    _facades(frame, open_rays, open_pixels, scene)
    _far(frame, open_rays, open_pixels, scene)
    order = sorted(range(len(scene.solids)), key=lambda i: scene.solids[i].z)
    rects = {}
    for i in order:
        rect = _solid(frame, rays, scene, i)
        if rect is not None and scene.solids[i].label:
            rects[i] = rect
    _shadows(frame, scene)
    sky = frame.material == SKY
    frame.color[:, sky] = shading.sky(rays, light)[:, sky]
    color = shading.fog(frame.color, frame.depth, light)
    image = shading.develop(color, light, scene.lens, rng)
    boxes, labels, index = _boxes(frame, scene, rects)
    road = frame.material == ROAD
    return Rendered(
        image=image,
        depth=np.where(sky, 0.0, frame.depth).astype(np.float32),
        lane=(lane_flat.reshape(road.shape) & road).astype(np.uint8),
        drivable=road.astype(np.uint8),
        object_ids=frame.ids,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=labels,
        solid_index=index,
    )
