"""What a synthetic scene contains: a road on the ground plane, 3D solids, light, weather.

Pure description, no pixels: ``sample_scene`` draws every random choice from one numpy
``Generator`` so a (seed, index) pair always yields the same scene. Rendering lives in
``render.py``.

The road is defined by its left edge ``X_edge(Z) = offset + heading*Z + curvature*Z^2/2``;
``lateral(X, Z) = X - X_edge(Z)`` is the signed distance (metres) across the road. Lanes,
markings, curbs, sidewalks and facades are constant-lateral curves, so straight and curved
roads share every formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perception.data.synthetic.camera import PinholeCamera

CLASSES: tuple[str, ...] = ("car", "truck", "bus", "pedestrian", "cyclist")
CLASS_PROBS = (0.5, 0.1, 0.07, 0.2, 0.13)
MIN_DISTANCE, MAX_DISTANCE = 3.0, 80.0  # object centres, metres along Z


@dataclass(frozen=True)
class Part:
    """An axis-aligned box in its object's frame (x right, y down, z forward; y=0 ground)."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    color: tuple[float, float, float]  # linear RGB in [0, 1]
    gloss: float = 0.0  # share of sky reflection, for glass and paint


@dataclass
class Solid:
    """A rigid object made of parts, standing on the ground at (x, z) with heading ``yaw``.

    ``label`` is a class name for objects to detect, or None for clutter (poles, trees).
    ``yaw`` = 0 faces +Z (away from the camera).
    """

    label: str | None
    x: float
    z: float
    yaw: float
    parts: list[Part]


@dataclass(frozen=True)
class Road:
    num_lanes: int
    lane_width: float
    offset: float
    heading: float
    curvature: float
    mark_width: float
    dash_length: float
    dash_period: float
    dash_phase: float
    curb_height: float
    sidewalk_width: float
    facade_gap: tuple[float, float]  # metres from each sidewalk's outer edge to the facade
    yellow_center: bool
    asphalt: tuple[float, float, float]
    sidewalk: tuple[float, float, float]

    @property
    def width(self) -> float:
        return self.num_lanes * self.lane_width

    def edge_x(self, z: np.ndarray | float) -> np.ndarray | float:
        """X of the left road edge at depth ``z``."""
        return self.offset + self.heading * z + 0.5 * self.curvature * z * z

    def lateral(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Metres right of the left road edge for ground points ``(x, z)``."""
        return x - self.edge_x(z)

    def yaw_at(self, z: float) -> float:
        """Heading of the road direction at depth ``z`` (radians, 0 = +Z)."""
        return float(np.arctan(self.heading + self.curvature * z))

    def markings(self) -> list[tuple[float, bool, tuple[float, float, float]]]:
        """``(lateral position, dashed, colour)`` of every painted line."""
        white, yellow = (0.85, 0.85, 0.82), (0.85, 0.62, 0.08)
        inset = self.mark_width / 2 + 0.05  # edge lines are painted just inside the road
        lines = []
        for j in range(self.num_lanes + 1):
            edge = j in (0, self.num_lanes)
            center = self.yellow_center and j == self.num_lanes // 2 and not edge
            offset = j * self.lane_width + (inset if j == 0 else -inset if edge else 0.0)
            lines.append((offset, not (edge or center), yellow if center else white))
        return lines


@dataclass(frozen=True)
class Facades:
    """Building blocks along one side: block ``i`` spans ``edges[i]..edges[i+1]`` in Z."""

    lateral: float
    edges: np.ndarray  # [K+1] metres
    heights: np.ndarray  # [K] metres; 0 = a gap between buildings
    colors: np.ndarray  # [3, K] float32, planar like the renderer's buffers

    def block_at(self, z: np.ndarray) -> np.ndarray:
        """Index of the block at depth ``z`` (metres), -1 outside all blocks.

        A per-metre lookup table (edges are whole-metre rounded once) instead of a
        binary search per pixel: this runs on most pixels of every image.
        """
        start = int(np.floor(self.edges[0]))
        lut = np.searchsorted(self.edges, np.arange(start, int(self.edges[-1]) + 1) + 0.5) - 1
        lut = np.append(np.where(lut < len(self.heights), lut, -1), -1)  # last slot: outside
        index = np.clip((z - start).astype(np.int64), -1, len(lut) - 1)
        return np.where(index < 0, -1, lut[index])


@dataclass(frozen=True)
class Lighting:
    sun: tuple[float, float, float]  # unit vector towards the sun (world frame)
    sun_color: tuple[float, float, float]
    ambient: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    sky_zenith: tuple[float, float, float]
    fog_density: float  # 1/m; transmittance is exp(-density * depth)
    fog_color: tuple[float, float, float]
    exposure: float


@dataclass(frozen=True)
class Lens:
    """Sensor and optics effects applied to the finished image."""

    blur_sigma: float
    noise_std: float
    vignette: float
    jpeg_quality: int


@dataclass
class Scene:
    camera: PinholeCamera
    road: Road
    facades: tuple[Facades, Facades]
    far_distance: float  # a tree line/hills closing the view, metres along Z
    solids: list[Solid] = field(default_factory=list)
    lighting: Lighting | None = None
    lens: Lens | None = None


FOCAL_RANGE = (0.6, 1.1)  # focal length / image width: ~50-80 degrees horizontal FOV


def sample_camera(
    rng: np.random.Generator,
    height: int,
    width: int,
    focal_range: tuple[float, float] = FOCAL_RANGE,
) -> PinholeCamera:
    """Focal length varies across samples (``focal_range`` x image width), as across
    datasets; a range outside the default tests how depth generalises to unseen lenses."""
    fx = float(width * rng.uniform(*focal_range))
    return PinholeCamera(
        fx=fx,
        fy=fx * float(rng.uniform(0.98, 1.02)),
        cx=width / 2 + float(rng.normal(0, width * 0.01)),
        cy=height / 2 + float(rng.normal(0, height * 0.015)),
        width=width,
        height=height,
        mount_height=float(rng.uniform(1.2, 1.8)),
        pitch=float(np.radians(rng.uniform(-1.5, 3.0))),
        roll=float(np.radians(rng.uniform(-1.5, 1.5))),
    )


def sample_road(rng: np.random.Generator) -> Road:
    lanes = int(rng.integers(2, 6))
    lane_w = float(rng.uniform(3.2, 3.8))
    ego = int(rng.integers(0, lanes))
    gray = float(rng.uniform(0.06, 0.2))
    tint = rng.uniform(0.95, 1.05, 3) * gray
    period = float(rng.uniform(9.0, 13.0))
    return Road(
        num_lanes=lanes,
        lane_width=lane_w,
        offset=-(ego + 0.5) * lane_w + float(rng.normal(0, 0.3)),
        heading=float(rng.normal(0, 0.02)),
        curvature=0.0 if rng.random() < 0.45 else float(rng.uniform(-1, 1) / 220),
        mark_width=float(rng.uniform(0.1, 0.2)),
        dash_length=float(rng.uniform(2.5, 4.0)),
        dash_period=period,
        dash_phase=float(rng.uniform(0, period)),
        curb_height=float(rng.uniform(0.1, 0.2)),
        sidewalk_width=float(rng.uniform(2.0, 4.5)),
        facade_gap=(float(rng.uniform(0.5, 8.0)), float(rng.uniform(0.5, 8.0))),
        yellow_center=bool(lanes >= 2 and rng.random() < 0.35),
        asphalt=tuple(tint.tolist()),
        sidewalk=tuple((rng.uniform(0.25, 0.45) * np.ones(3)).tolist()),
    )


def sample_facades(
    rng: np.random.Generator, road: Road, far_distance: float
) -> tuple[Facades, Facades]:
    """Blocks of buildings along both sides, ending before the far tree line (so no
    depth in the image exceeds what a uint16 depth PNG holds)."""
    sides = []
    for side, gap in zip((-1, 1), road.facade_gap, strict=True):
        edge = 0.0 if side < 0 else road.width
        lateral = edge + side * (road.sidewalk_width + gap)
        lengths = rng.uniform(8, 35, 24)
        edges = np.concatenate([[-10.0], -10.0 + np.cumsum(lengths)])
        heights = np.where(rng.random(24) < 0.15, 0.0, rng.uniform(4, 30, 24))
        heights[edges[1:] > far_distance] = 0.0
        colors = (rng.uniform(0.1, 0.6, (24, 3)) * rng.uniform(0.8, 1.0, (24, 1))).T.astype(
            np.float32
        )
        sides.append(Facades(lateral, edges, heights, colors))
    return sides[0], sides[1]


def sample_lighting(rng: np.random.Generator) -> Lighting:
    """Day, overcast, dusk or night: sun elevation, colours, fog and exposure together."""
    kind = rng.choice(["day", "overcast", "dusk", "night"], p=[0.5, 0.2, 0.18, 0.12])
    elevation = np.radians(
        {"day": rng.uniform(20, 70), "dusk": rng.uniform(3, 15)}.get(kind, rng.uniform(20, 60))
    )
    azimuth = rng.uniform(-np.pi, np.pi)
    sun = (
        np.cos(elevation) * np.sin(azimuth),
        -np.sin(elevation),
        np.cos(elevation) * np.cos(azimuth),
    )
    table = {
        "day": ((1.0, 0.96, 0.9), 0.35, (0.75, 0.82, 0.9), (0.3, 0.5, 0.85), 1.0),
        "overcast": ((0.2, 0.2, 0.2), 0.7, (0.75, 0.77, 0.8), (0.55, 0.58, 0.62), 1.0),
        "dusk": ((1.0, 0.6, 0.35), 0.3, (0.95, 0.6, 0.4), (0.25, 0.3, 0.5), 0.9),
        "night": ((0.05, 0.05, 0.07), 0.12, (0.08, 0.09, 0.13), (0.01, 0.015, 0.03), 1.6),
    }
    sun_color, ambient, horizon, zenith, exposure = table[str(kind)]
    jitter = rng.uniform(0.85, 1.15, 3)
    fog = float(rng.choice([0.0, rng.uniform(0.002, 0.03)], p=[0.75, 0.25]))
    return Lighting(
        sun=tuple(float(v) for v in sun),
        sun_color=tuple((np.array(sun_color) * jitter).tolist()),
        ambient=tuple((ambient * jitter * np.array(horizon) / max(horizon)).tolist()),
        sky_horizon=horizon,
        sky_zenith=zenith,
        fog_density=fog,
        fog_color=tuple((np.array(horizon) * 0.9).tolist()),
        exposure=float(exposure * rng.uniform(0.8, 1.25)),
    )


def sample_lens(rng: np.random.Generator) -> Lens:
    return Lens(
        blur_sigma=float(rng.choice([0.0, rng.uniform(0.4, 1.2)], p=[0.5, 0.5])),
        noise_std=float(rng.uniform(0.5, 6.0)),
        vignette=float(rng.uniform(0.0, 0.35)),
        jpeg_quality=int(rng.integers(75, 96)),
    )


def sample_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    focal_range: tuple[float, float] = FOCAL_RANGE,
) -> Scene:
    """Draw a complete scene for an image of ``height`` x ``width`` pixels."""
    from perception.data.synthetic.solids import sample_clutter, sample_objects

    camera = sample_camera(rng, height, width, focal_range)
    road = sample_road(rng)
    far = float(rng.uniform(120, 230))
    scene = Scene(
        camera=camera,
        road=road,
        facades=sample_facades(rng, road, far),
        far_distance=far,
        lighting=sample_lighting(rng),
        lens=sample_lens(rng),
    )
    scene.solids = sample_objects(rng, road) + sample_clutter(rng, road)
    return scene
