"""Transforms: letterbox and augmentation keep image, boxes, masks, depth and intrinsics
consistent with each other.

The synthetic scene makes every label checkable from every other one: the object is a
red rectangle whose pixels are exactly ``drivable == 1`` and ``depth == 10``; the lane
is a blue rectangle with ``lane == 1`` and ``depth == 5``; the rest has depth 20.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from perception.data.transforms import (
    IGNORE,
    IMAGE_FILL,
    AugmentConfig,
    SampleTransform,
    letterbox_image,
    letterbox_params,
    letterbox_sample,
)
from perception.errors import PerceptionError
from perception.ops.boxes import box_area, clip_boxes, letterbox_to_source
from perception.structures import Camera, Letterbox, Sample

H, W = 64, 96
OBJ = (slice(20, 36), slice(30, 50))  # rows, cols of the object: box [30, 20, 50, 36]
LANE = (slice(40, 60), slice(70, 80))
RED, BLUE = (250, 0, 0), (0, 0, 250)
GEOMETRY_ONLY = dict(photometric=0.0, weather_p=0.0)


def scene() -> Sample:
    image = np.full((H, W, 3), 30, np.uint8)
    image[OBJ], image[LANE] = RED, BLUE
    drivable = np.zeros((H, W), np.uint8)
    drivable[OBJ] = 1
    lane = np.zeros((H, W), np.uint8)
    lane[LANE] = 1
    depth = np.full((H, W), 20.0, np.float32)
    depth[OBJ], depth[LANE] = 10.0, 5.0
    return Sample(
        id="s", image=image, boxes=np.array([[30, 20, 50, 36]], np.float32),
        labels=np.array([1]), lane=lane, drivable=drivable, depth=depth,
        camera=Camera(80.0, 80.0, 20.0, 30.0),
    )  # fmt: skip


def region_box(mask: np.ndarray) -> np.ndarray:
    """xyxy (pixel edges) around the True pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def interior(mask: np.ndarray) -> np.ndarray:
    """``mask`` minus its one-pixel border (4-neighbourhood erosion)."""
    m = np.pad(mask, 1, constant_values=True)
    return mask & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def augment(size=(H, W), seed=0, **cfg) -> Sample:
    return SampleTransform(size, AugmentConfig(**cfg))(scene(), np.random.default_rng(seed))


# ------------------------------------------------------------------------- letterbox


def test_letterbox_params_center_and_scale():
    lb = letterbox_params(64, 96, 96, 96)
    assert (lb.scale, lb.pad_x, lb.pad_y, lb.src_h, lb.src_w) == (1.0, 0.0, 16.0, 64, 96)
    lb = letterbox_params(64, 96, 32, 64)  # width-limited: 48 px wide, 8 px each side
    assert (lb.scale, lb.pad_x, lb.pad_y) == (0.5, 8.0, 0.0)


def test_letterbox_moves_labels_and_scales_intrinsics_not_depth():
    out = letterbox_sample(scene(), 32, 64)  # scale 0.5, pad_x 8
    assert out.image.shape == (32, 64, 3) and out.letterbox == Letterbox(0.5, 8, 0, H, W)
    np.testing.assert_allclose(out.boxes, [[23, 10, 33, 18]])
    assert out.camera == Camera(40.0, 40.0, 18.0, 15.0)  # fx*s; cx*s + pad
    assert set(np.unique(out.depth[out.valid])) == {5.0, 10.0, 20.0}  # depth untouched
    np.testing.assert_array_equal(region_box(out.drivable == 1), out.boxes[0])
    np.testing.assert_array_equal(out.depth == 10.0, out.drivable == 1)
    pad = ~out.valid
    assert pad[:, :8].all() and pad[:, 56:].all() and not pad[:, 8:56].any()
    assert (out.lane[pad] == IGNORE).all() and (out.drivable[pad] == IGNORE).all()
    assert (out.depth[pad] == 0).all() and (out.image[pad] == IMAGE_FILL).all()


def test_letterbox_image_matches_sample_path_and_boxes_map_back():
    image, lb = letterbox_image(scene().image, 48, 96)
    np.testing.assert_array_equal(image, letterbox_sample(scene(), 48, 96).image)
    net_boxes = letterbox_sample(scene(), 48, 96).boxes
    np.testing.assert_allclose(letterbox_to_source(net_boxes, lb), scene().boxes, atol=1e-4)
    back = letterbox_to_source(torch.from_numpy(net_boxes), lb)
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), scene().boxes, atol=1e-4)


def test_box_ops_clip_and_area():
    boxes = np.array([[-3, 2, 99, 30], [100, 0, 110, 5]], np.float32)
    clipped = clip_boxes(boxes, 96, 64)
    np.testing.assert_array_equal(clipped, [[0, 2, 96, 30], [96, 0, 96, 5]])
    np.testing.assert_array_equal(box_area(clipped), [96 * 28, 0])
    t = clip_boxes(torch.from_numpy(boxes), 96, 64)
    np.testing.assert_array_equal(t.numpy(), clipped)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        box_area(np.zeros((3,)))


# ------------------------------------------------------------------------- augmentation


def test_flip_mirrors_boxes_masks_depth_and_principal_point():
    out = augment(flip_p=1.0, zoom_p=0.0, **GEOMETRY_ONLY)
    np.testing.assert_allclose(out.boxes, [[W - 50, 20, W - 30, 36]])
    np.testing.assert_array_equal(out.image, scene().image[:, ::-1])
    np.testing.assert_array_equal(out.depth, scene().depth[:, ::-1])
    np.testing.assert_array_equal(out.lane, scene().lane[:, ::-1])
    assert out.camera == Camera(80.0, 80.0, W - 20.0, 30.0)  # cx -> W - cx, fx unchanged


def test_zoom_divides_depth_and_moves_principal_point():
    s = 1.5
    out = augment(flip_p=0.0, zoom_p=1.0, zoom_range=(s, s), translate=0.0, **GEOMETRY_ONLY)
    np.testing.assert_allclose(np.unique(out.depth), [5 / s, 10 / s, 20 / s], rtol=1e-5)
    center_x, center_y = W / 2, H / 2  # the zoom is about the image centre
    np.testing.assert_allclose(
        out.boxes, [[center_x + s * (30 - center_x), center_y + s * (20 - center_y),
                     center_x + s * (50 - center_x), center_y + s * (36 - center_y)]],
        atol=1e-3,
    )  # fmt: skip
    cam = out.camera
    assert (cam.fx, cam.fy) == (80.0, 80.0)  # intrinsics' focal length stays fixed
    assert cam.cx == pytest.approx(center_x + s * (20 - center_x), abs=1e-3)
    assert cam.cy == pytest.approx(center_y + s * (30 - center_y), abs=1e-3)


@pytest.mark.parametrize("seed", range(6))
def test_random_geometry_keeps_every_label_consistent(seed):
    """Letterbox (scale 0.75) + random flip/zoom/translate: all labels still coincide."""
    out = augment(
        size=(48, 96), seed=seed, flip_p=0.5, zoom_p=1.0, zoom_range=(0.7, 1.5),
        translate=0.15, **GEOMETRY_ONLY,
    )  # fmt: skip
    obj, lane, valid = out.drivable == 1, out.lane == 1, out.valid
    (box,) = out.boxes
    # depth moved with the masks, and was divided by the zoom the box shows
    (d_obj,) = np.unique(out.depth[obj])
    np.testing.assert_array_equal(out.depth == d_obj, obj)
    zoom = (box[2] - box[0]) / (20 * 0.75)
    assert 10.0 / d_obj == pytest.approx(zoom, rel=1e-3)
    # the box encloses its pixels, up to half a pixel of rounding per resampling (the
    # letterbox's magnified by the zoom)
    tol = 0.5 * (zoom + 1) + 0.05
    np.testing.assert_allclose(region_box(obj), box, atol=tol)
    red = (out.image[..., 0] > 200) & (out.image[..., 2] < 60)
    np.testing.assert_allclose(region_box(red), box, atol=tol)
    np.testing.assert_array_equal(np.isclose(out.depth, 5.0 * d_obj / 10.0), lane)
    rest = valid & ~obj & ~lane
    np.testing.assert_allclose(out.depth[rest], 20.0 * d_obj / 10.0, rtol=1e-5)
    # padding is ignore / invalid everywhere
    assert (out.lane[~valid] == IGNORE).all() and (out.drivable[~valid] == IGNORE).all()
    assert (out.depth[~valid] == 0).all()
    # bilinear blends the image across the border over about ``zoom`` pixels
    assert (out.image[interior(interior(~valid))] == IMAGE_FILL).all()
    # principal point: its offset to the box centre scales by the zoom (mirrored in x)
    src_cx, src_cy = 20 * 0.75 + 12, 30 * 0.75  # after letterbox
    src_bx, src_by = 40 * 0.75 + 12, 28 * 0.75  # box centre after letterbox
    assert out.camera.fx == pytest.approx(80 * 0.75)
    assert abs(out.camera.cx - (box[0] + box[2]) / 2) == pytest.approx(
        zoom * abs(src_cx - src_bx), abs=1e-2
    )
    assert out.camera.cy - (box[1] + box[3]) / 2 == pytest.approx(
        zoom * (src_cy - src_by), abs=1e-2
    )


def test_photometric_and_weather_touch_the_image_only():
    ref = letterbox_sample(scene(), H, W)
    out = augment(flip_p=0.0, zoom_p=0.0, photometric=2.0, weather_p=1.0, seed=3)
    assert not np.array_equal(out.image, ref.image)
    for name in ("boxes", "labels", "lane", "drivable", "depth", "valid"):
        np.testing.assert_array_equal(getattr(out, name), getattr(ref, name))
    assert out.camera == ref.camera


def test_boxes_mostly_out_of_view_are_dropped_labels_stay_aligned():
    sample = scene().replace(
        boxes=np.array([[40, 20, 56, 36], [88, 30, 96, 40]], np.float32),
        labels=np.array([1, 0]),
    )
    cfg = AugmentConfig(flip_p=0, zoom_p=1, zoom_range=(2, 2), translate=0, **GEOMETRY_ONLY)
    out = SampleTransform((H, W), cfg)(sample, np.random.default_rng(0))
    np.testing.assert_allclose(out.boxes, [[32, 8, 64, 40]], atol=1e-3)
    np.testing.assert_array_equal(out.labels, [1])
    assert out.boxes.dtype == np.float32 and out.labels.dtype == np.int64


def test_unlabeled_tasks_stay_none_and_empty_boxes_stay_empty():
    bare = Sample(id="bare", image=scene().image)
    augment = AugmentConfig(weather_p=1.0)
    out = SampleTransform((48, 96), augment, default_hfov=None)(bare, np.random.default_rng(0))
    for name in ("boxes", "labels", "lane", "drivable", "depth", "camera"):
        assert getattr(out, name) is None, name
    assert out.valid.shape == (48, 96) and out.letterbox is not None
    empty = scene().replace(boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))
    out = SampleTransform((48, 96), AugmentConfig())(empty, np.random.default_rng(0))
    assert out.boxes.shape == (0, 4) and out.labels.shape == (0,)


def test_val_transform_is_letterbox_only_and_seeds_reproduce():
    val = SampleTransform((48, 96))
    np.testing.assert_array_equal(val(scene()).image, letterbox_sample(scene(), 48, 96).image)
    train = SampleTransform((48, 96), AugmentConfig())
    a, b = (train(scene(), np.random.default_rng(7)) for _ in range(2))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.depth, b.depth)


def test_pipelines_build_and_run_without_albumentations_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cfg in (AugmentConfig(), AugmentConfig(photometric=2.0, weather_p=1.0)):
            transform = SampleTransform((48, 96), cfg)
            for seed in range(8):
                transform(scene(), np.random.default_rng(seed))


@pytest.mark.parametrize(
    "kwargs", [dict(flip_p=1.5), dict(zoom_range=(1.2, 0.8)), dict(translate=-0.1)]
)
def test_bad_augment_config_is_a_clear_error(kwargs):
    with pytest.raises(PerceptionError, match="augment: "):
        AugmentConfig(**kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fog_draws_the_same_pixels_as_albumentations_randomfog(seed: int) -> None:
    """``Fog`` blends each fog disc over its bounding box only; the pixels must be the
    very ones ``A.RandomFog`` draws from the same seed (which blends the whole image)."""
    import random

    import albumentations as A

    from perception.data.fog import Fog

    image = np.random.default_rng(seed).integers(0, 256, (72, 120, 3), dtype=np.uint8)
    image[:, :40] = 250  # bright: discs near saturation must round the same way
    outputs = []
    for cls in (A.RandomFog, Fog):
        fog = cls(fog_coef_range=(0.1, 0.3), alpha_coef=0.08, p=1.0)
        fog.set_random_state(np.random.default_rng(seed), random.Random(seed))
        outputs.append(fog(image=image)["image"])
    assert not np.array_equal(outputs[0], image)
    np.testing.assert_array_equal(outputs[1], outputs[0])
