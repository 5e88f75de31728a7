"""The pictures users look at: the depth inset hides no detection it can avoid, and depth
comes with its colour scale."""

from __future__ import annotations

import numpy as np

from perception.visualize import colorize_depth, depth_scale, prediction_overlay, titled


def _overlay(boxes: np.ndarray, inset: float = 0.3) -> np.ndarray:
    image = np.full((100, 200, 3), 128, np.uint8)
    depth = np.full((100, 200), 10.0, np.float32)
    n = len(boxes)
    return prediction_overlay(
        image, boxes, np.ones(n, np.float32), np.zeros(n, np.int64), ["car"], None, None, depth,
        inset=inset,
    )  # fmt: skip


def _inset_at(out: np.ndarray, depth_rgb: np.ndarray) -> list[str]:
    """Which corners hold the inset colour."""
    corners = {"tr": out[5, 195], "tl": out[5, 5], "br": out[95, 195], "bl": out[95, 5]}
    return [name for name, px in corners.items() if np.array_equal(px, depth_rgb)]


def test_depth_inset_moves_to_the_corner_without_boxes() -> None:
    colour = colorize_depth(np.full((1, 1), 10.0, np.float32))[0, 0]
    assert _inset_at(_overlay(np.zeros((0, 4), np.float32)), colour) == ["tr"]  # default
    top_right_car = np.array([[150, 2, 198, 28]], np.float32)
    assert _inset_at(_overlay(top_right_car), colour) == ["tl"]
    both_top = np.array([[150, 2, 198, 28], [2, 2, 50, 28]], np.float32)
    assert _inset_at(_overlay(both_top), colour) in (["br"], ["bl"])
    assert _inset_at(_overlay(top_right_car, inset=0), colour) == []  # inset off


def test_depth_scale_runs_near_to_far_in_the_colours_of_the_map() -> None:
    bar = depth_scale(200)
    assert bar.shape == (200, 70, 3)
    near, far = colorize_depth(np.array([[2.0, 80.0]], np.float32))[0]
    assert np.abs(bar[0, 5].astype(int) - near).max() <= 8
    assert np.abs(bar[-1, 5].astype(int) - far).max() <= 8
    assert (bar[:, 25:] < 100).any()  # tick labels drawn


def test_titled_puts_a_strip_above_the_panels() -> None:
    panels = [np.zeros((30, 40, 3), np.uint8), np.zeros((30, 50, 3), np.uint8)]
    out = titled(panels, ["a", "b"], height=20)
    assert out.shape == (50, 90, 3)
    assert (out[:20] < 255).any() and (out[:20] == 255).mean() > 0.5
