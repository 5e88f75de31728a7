"""3D solids of the synthetic world: road users to detect and street clutter.

Every solid is a handful of boxes in its own frame (x right, y down, z forward, origin on
the ground at its centre) — coarse, but real 3D: they occlude, cast shadows, shrink with
distance and are truncated by the image border exactly as a camera sees them.
Placement respects the road: vehicles in lanes (some oncoming or parked), pedestrians on
sidewalks or crossing, cyclists near the road edge, no two footprints overlapping.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from perception.data.synthetic.scene import (
    CLASS_PROBS,
    CLASSES,
    MAX_DISTANCE,
    MIN_DISTANCE,
    Part,
    Road,
    Solid,
)

Builder = Callable[[np.random.Generator], tuple[list[Part], float, float]]
BLACK = (0.02, 0.02, 0.02)
GLASS = (0.03, 0.04, 0.05)
PAINTS = np.array(
    [
        [0.8, 0.8, 0.8],
        [0.02, 0.02, 0.02],
        [0.25, 0.25, 0.27],
        [0.5, 0.5, 0.52],
        [0.5, 0.03, 0.02],
        [0.03, 0.1, 0.4],
        [0.6, 0.45, 0.2],
        [0.05, 0.25, 0.08],
    ]
)


def _paint(rng: np.random.Generator) -> tuple[float, float, float]:
    base = PAINTS[rng.integers(len(PAINTS))] * rng.uniform(0.8, 1.15, 3)
    return tuple(np.clip(base, 0, 1).tolist())


def _wheels(half_w: float, axle_z: tuple[float, ...], radius: float) -> list[Part]:
    return [
        Part((sx * (half_w - 0.08), -radius, z), (0.14, radius, radius), BLACK)
        for sx in (-1, 1)
        for z in axle_z
    ]


def build_car(rng: np.random.Generator) -> tuple[list[Part], float, float]:
    """Returns parts, half length, half width."""
    hl, hw = rng.uniform(1.9, 2.45), rng.uniform(0.85, 0.98)
    paint = _paint(rng)
    parts = [
        Part((0, -0.67, 0), (hw, 0.37, hl), paint, gloss=0.25),
        Part((0, -1.3, -hl * 0.08), (hw * 0.86, 0.26, hl * 0.52), GLASS, gloss=0.6),
        Part((0, -1.57, -hl * 0.1), (hw * 0.84, 0.02, hl * 0.4), paint, gloss=0.25),
        *(
            Part((sx * (hw - 0.25), -0.85, -hl - 0.01), (0.17, 0.06, 0.03), (0.7, 0.02, 0.01))
            for sx in (-1, 1)
        ),
        *_wheels(hw, (-hl + 0.75, hl - 0.8), 0.32),
    ]
    return parts, hl, hw


def build_truck(rng: np.random.Generator) -> tuple[list[Part], float, float]:
    cargo_hl, hw = rng.uniform(2.5, 4.0), 1.25
    hl = cargo_hl + 1.2
    cab_z = hl - 1.1
    box = tuple(np.clip(rng.uniform(0.4, 0.95) * rng.uniform(0.85, 1.0, 3), 0, 1).tolist())
    parts = [
        Part((0, -1.9, cab_z), (1.2, 1.4, 1.05), _paint(rng), gloss=0.2),
        Part((0, -2.7, cab_z + 0.2), (1.1, 0.5, 0.9), GLASS, gloss=0.6),
        Part((0, -2.4, -hl + cargo_hl), (hw, 1.6, cargo_hl), box),
        *_wheels(hw, (-hl + 1.0, -hl + 2.4, cab_z), 0.5),
    ]
    return parts, hl, hw


def build_bus(rng: np.random.Generator) -> tuple[list[Part], float, float]:
    hl, hw = rng.uniform(5.0, 6.2), 1.27
    paint = _paint(rng)
    parts = [
        Part((0, -1.75, 0), (hw, 1.45, hl), paint, gloss=0.2),
        Part((0, -2.2, 0.1), (hw + 0.01, 0.5, hl * 0.92), GLASS, gloss=0.6),
        *_wheels(hw, (-hl + 1.5, hl - 1.8), 0.5),
    ]
    return parts, hl, hw


def _person(rng: np.random.Generator, feet_y: float, height: float) -> list[Part]:
    """A standing figure whose feet are at ``feet_y`` (object frame)."""
    top = tuple(rng.uniform(0.05, 0.8, 3).tolist())
    legs = tuple((rng.uniform(0.02, 0.4) * np.ones(3) * rng.uniform(0.8, 1.2, 3)).tolist())
    skin = tuple((np.array([0.75, 0.5, 0.38]) * rng.uniform(0.35, 1.1)).tolist())
    leg_h, torso_h = height * 0.47, height * 0.33
    return [
        *(Part((sx * 0.1, feet_y - leg_h / 2, 0), (0.075, leg_h / 2, 0.1), legs) for sx in (-1, 1)),
        Part((0, feet_y - leg_h - torso_h / 2, 0), (0.2, torso_h / 2, 0.12), top),
        *(
            Part((sx * 0.26, feet_y - leg_h - torso_h * 0.55, 0), (0.05, torso_h * 0.45, 0.06), top)
            for sx in (-1, 1)
        ),
        Part((0, feet_y - height + 0.11, 0), (0.09, 0.11, 0.1), skin),
    ]


def build_pedestrian(rng: np.random.Generator) -> tuple[list[Part], float, float]:
    return _person(rng, 0.0, rng.uniform(1.5, 1.92)), 0.25, 0.35


def build_cyclist(rng: np.random.Generator) -> tuple[list[Part], float, float]:
    frame = _paint(rng)
    bike = [Part((0, -0.34, sz), (0.03, 0.34, 0.34), BLACK) for sz in (-0.55, 0.55)] + [
        Part((0, -0.62, 0), (0.03, 0.07, 0.45), frame),
        Part((0, -0.95, 0.4), (0.25, 0.02, 0.02), BLACK),
    ]
    rider = _person(rng, -0.35, rng.uniform(1.45, 1.6))
    return bike + rider, 0.9, 0.35


BUILDERS: dict[str, Builder] = {
    "car": build_car,
    "truck": build_truck,
    "bus": build_bus,
    "pedestrian": build_pedestrian,
    "cyclist": build_cyclist,
}


def _place(
    rng: np.random.Generator, label: str, road: Road, hw: float
) -> tuple[float, float, float]:
    """Lateral position (m from the left edge), distance and yaw offset from the road."""
    z = MIN_DISTANCE + (MAX_DISTANCE - MIN_DISTANCE) * rng.random() ** 1.3
    if label == "pedestrian":
        if rng.random() < 0.15:
            return (
                float(rng.uniform(0, road.width)),
                max(z, 6.0),
                float(rng.choice([-1, 1]) * np.pi / 2),
            )
        side = rng.choice([-1, 1])
        s = -rng.uniform(0.3, road.sidewalk_width - 0.3)
        return float(s if side < 0 else road.width - s), z, float(rng.uniform(-np.pi, np.pi))
    if label == "cyclist" and rng.random() < 0.6:
        s = road.width - rng.uniform(0.6, 1.4) if rng.random() < 0.7 else rng.uniform(0.6, 1.4)
        return float(s), z, 0.0 if s > road.width / 2 else float(np.pi)
    if rng.random() < 0.12:  # parked along the curb
        s = hw + 0.2 if rng.random() < 0.5 else road.width - hw - 0.2
        return float(s), z, 0.0
    lane = int(rng.integers(road.num_lanes))
    oncoming = road.yellow_center and lane < road.num_lanes // 2
    s = (lane + 0.5) * road.lane_width + rng.normal(0, 0.25)
    return float(s), z, float(np.pi if oncoming else 0.0) + float(rng.normal(0, 0.04))


def _free(s: float, z: float, hw: float, hl: float, taken: list[tuple[float, ...]]) -> bool:
    return all(
        abs(s - s2) > hw + hw2 + 0.3 or abs(z - z2) > hl + hl2 + 0.6 for s2, z2, hw2, hl2 in taken
    )


def sample_objects(rng: np.random.Generator, road: Road) -> list[Solid]:
    """0-15 road users at 3-80 m, none overlapping each other or the ego vehicle."""
    ego_s = -road.offset
    taken: list[tuple[float, ...]] = [(ego_s, -1.0, 1.0, 3.5)]  # the ego car itself
    solids = []
    for _ in range(int(rng.integers(0, 16))):
        label = str(rng.choice(CLASSES, p=CLASS_PROBS))
        parts, hl, hw = BUILDERS[label](rng)
        for _attempt in range(8):
            s, z, yaw = _place(rng, label, road, hw)
            if _free(s, z, hw, hl, taken):
                taken.append((s, z, hw, hl))
                x = float(road.edge_x(z)) + s
                solids.append(Solid(label, x, z, road.yaw_at(z) + yaw, parts))
                break
    return solids


def _pole(rng: np.random.Generator, toward_road: float) -> list[Part]:
    h = rng.uniform(5.0, 9.0)
    gray = tuple((rng.uniform(0.15, 0.45) * np.ones(3)).tolist())
    return [
        Part((0, -h / 2, 0), (0.08, h / 2, 0.08), gray),
        Part((toward_road * 0.9, -h, 0), (0.9, 0.05, 0.06), gray),
        Part((toward_road * 1.7, -h + 0.1, 0), (0.25, 0.08, 0.15), (0.9, 0.9, 0.8)),
    ]


def _tree(rng: np.random.Generator) -> list[Part]:
    trunk_h, crown = rng.uniform(1.5, 3.5), rng.uniform(1.0, 2.4)
    green = tuple((np.array([0.1, 0.3, 0.06]) * rng.uniform(0.4, 1.3, 3)).tolist())
    return [
        Part((0, -trunk_h / 2, 0), (0.15, trunk_h / 2, 0.15), (0.15, 0.1, 0.06)),
        Part((0, -trunk_h - crown, 0), (crown, crown * rng.uniform(0.8, 1.3), crown), green),
    ]


def _sign(rng: np.random.Generator) -> list[Part]:
    color = [(0.7, 0.05, 0.03), (0.05, 0.2, 0.6), (0.8, 0.7, 0.05)][int(rng.integers(3))]
    return [
        Part((0, -1.3, 0), (0.04, 1.3, 0.04), (0.4, 0.4, 0.4)),
        Part((0, -2.75, 0), (0.35, 0.35, 0.03), color),
    ]


def sample_clutter(rng: np.random.Generator, road: Road) -> list[Solid]:
    """Poles, trees and signs along both sidewalks, out to 120 m."""
    solids = []
    for side in (-1, 1):
        curb_s = 0.0 if side < 0 else road.width
        z = rng.uniform(2.0, 20.0)
        while z < 120.0:
            kind = rng.choice(["pole", "tree", "sign"], p=[0.4, 0.45, 0.15])
            if kind == "pole":
                parts, s = _pole(rng, -side), curb_s + side * 0.5
            elif kind == "tree":
                parts, s = _tree(rng), curb_s + side * rng.uniform(1.2, road.sidewalk_width + 0.5)
            else:
                parts, s = _sign(rng), curb_s + side * 0.4
            solids.append(Solid(None, float(road.edge_x(z)) + s, float(z), road.yaw_at(z), parts))
            z += rng.uniform(8.0, 30.0)
    return solids
