"""Camera-aware metric depth: the canonical transform from dataset to loss to Predictor.

The contract (``perception.ops.camera``): the head predicts depth for a camera of focal
``f_c``; metric depth is ``canonical * f / f_c`` with ``f`` in network pixels. Letterbox,
zoom and flip must keep the canonical target consistent, and the Predictor's depth must
scale with the focal length it is given, exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_release

from perception.data.transforms import AugmentConfig, SampleTransform, letterbox_sample
from perception.inference import Predictor
from perception.inference.inputs import InputError
from perception.losses import DepthLoss
from perception.ops.camera import depth_scale, focal_length
from perception.postprocess import depth_metres
from perception.structures import Camera, Sample

F_C = 500.0  # the canonical focal of these tests (network pixels)


CAMERA = Camera(80.0, 82.0, 40.0, 30.0)


def _sample(camera: Camera | None = CAMERA) -> Sample:
    """64x96 scene: constant 20 m depth and one 16x20 px box, so zoom is measurable."""
    image = np.full((64, 96, 3), 40, np.uint8)
    image[20:36, 30:50] = (250, 0, 0)
    return Sample(
        id="s",
        image=image,
        boxes=np.array([[30, 20, 50, 36]], np.float32),
        labels=np.array([0]),
        depth=np.full((64, 96), 20.0, np.float32),
        camera=camera,
    )


def _canonical(depth: np.ndarray, camera: Camera) -> np.ndarray:
    """The loss target: metric depth seen through the canonical camera."""
    return depth * F_C / math.sqrt(camera.fx * camera.fy)


def test_letterbox_scales_the_canonical_target_with_the_resize() -> None:
    src = _sample()
    out = letterbox_sample(src, 32, 64)  # scale 0.5: the same rays on half the pixels
    assert out.camera == Camera(40.0, 41.0, 20.0 + 8.0, 15.0)  # pad_x 8
    valid = out.valid & (out.depth > 0)
    np.testing.assert_allclose(out.depth[valid], 20.0)  # metric depth does not change...
    np.testing.assert_allclose(  # ...so the canonical target doubles (objects look smaller)
        _canonical(out.depth[valid], out.camera), 2 * _canonical(np.float32(20.0), src.camera)
    )


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_zoom_by_s_is_the_same_canonical_target_as_focal_times_s(flip: float) -> None:
    cfg = AugmentConfig(
        flip_p=flip, zoom_p=1.0, zoom_range=(1.25, 1.25), translate=0.0, photometric=0.0,
        weather_p=0.0,
    )  # fmt: skip
    src = _sample()
    base = SampleTransform((64, 96))(src)
    out = SampleTransform((64, 96), cfg)(src, np.random.default_rng(0))
    s = (out.boxes[0, 2] - out.boxes[0, 0]) / (base.boxes[0, 2] - base.boxes[0, 0])
    assert s == pytest.approx(1.25, rel=0.02)  # measured from the box, not the transform
    valid = out.valid & (out.depth > 0)
    assert (out.camera.fx, out.camera.fy) == (base.camera.fx, base.camera.fy)  # flip keeps f
    zoomed_lens = Camera(base.camera.fx * s, base.camera.fy * s, 0.0, 0.0)
    np.testing.assert_allclose(
        _canonical(out.depth[valid], out.camera),
        _canonical(np.full(valid.sum(), 20.0, np.float32), zoomed_lens),
        rtol=0.02,
    )
    if flip:  # the principal point is mirrored about the centre, then zoomed about it
        expected_cx = 48.0 + (48.0 - base.camera.cx) * s
        assert out.camera.cx == pytest.approx(expected_cx, abs=0.6)


def test_samples_without_intrinsics_get_the_default_field_of_view() -> None:
    out = SampleTransform((32, 64), default_hfov=90.0)(_sample(camera=None))
    # hfov 90 deg: f = W / 2 = 48 source px, then the 0.5 letterbox
    assert out.camera.as_tuple() == pytest.approx((24.0, 24.0, 24.0 + 8.0, 16.0))
    assert SampleTransform((32, 64), default_hfov=None)(_sample(camera=None)).camera is None


def test_canonical_round_trip_and_depth_scale() -> None:
    camera = torch.tensor([[250.0, 250.0, 0.0, 0.0], [1000.0, 1000.0, 0.0, 0.0]])  # [B, 4]
    metric = torch.tensor([10.0, 30.0]).reshape(2, 1, 1, 1).expand(2, 1, 4, 6)
    scale = depth_scale(camera, F_C)
    torch.testing.assert_close(scale, torch.tensor([0.5, 2.0]))
    canonical_log = (metric / scale.reshape(2, 1, 1, 1)).log()  # what the head should output
    torch.testing.assert_close(depth_metres(canonical_log, scale), metric)
    torch.testing.assert_close(depth_scale(camera, 0.0), torch.ones(2))  # camera-blind
    assert focal_length(torch.tensor([4.0, 9.0, 0.0, 0.0])) == 6.0


def test_depth_loss_is_zero_for_the_canonical_prediction_of_each_camera() -> None:
    depth = torch.full((2, 8, 8), 20.0)
    camera = torch.tensor([[250.0, 250.0, 4.0, 4.0], [800.0, 800.0, 4.0, 4.0]])
    valid, has = torch.ones(2, 8, 8, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    target = (depth * F_C / camera[:, :1, None]).log()[:, None]  # [B, 1, H, W] canonical
    aware = DepthLoss(canonical_focal=F_C)(target, depth, valid, has, camera)
    assert float(aware.total) == pytest.approx(0.0, abs=1e-5)
    blind = DepthLoss(canonical_focal=0.0)(target, depth, valid, has, camera)
    assert float(blind.total) > 0.1  # the same output read as metric depth is wrong
    with pytest.raises(ValueError, match="camera"):
        DepthLoss(canonical_focal=F_C)(target, depth, valid, has)
    nan_camera = camera.clone()
    nan_camera[1] = float("nan")  # an image without a camera is left out, not NaN
    partial = DepthLoss(canonical_focal=F_C)(target, depth, valid, has, nan_camera)
    assert math.isfinite(float(partial.total))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(write_tiny_release(tmp_path_factory.mktemp("w") / "w.safetensors"))


def test_predictor_depth_scales_with_the_given_focal_exactly(predictor: Predictor) -> None:
    image = np.random.default_rng(0).integers(0, 255, (72, 120, 3), dtype=np.uint8)
    near = predictor(image, camera=(100.0, 100.0, 60.0, 36.0))
    far = predictor(image, camera=(300.0, 300.0, 60.0, 36.0))
    np.testing.assert_allclose(far.depth / near.depth, 3.0, rtol=1e-5)
    assert near.camera == (100.0, 100.0, 60.0, 36.0) and not near.camera_default
    np.testing.assert_array_equal(near.boxes, far.boxes)  # only depth depends on the camera


def test_predictor_default_and_hfov_cameras(predictor: Predictor) -> None:
    image = np.zeros((72, 120, 3), np.uint8)
    default = predictor(image)
    assert default.camera_default
    assert default.camera == pytest.approx(Camera.from_hfov(120, 72, 60.0).as_tuple())
    wide = predictor(image, hfov=90.0)
    assert wide.camera == pytest.approx((60.0, 60.0, 60.0, 36.0)) and not wide.camera_default
    explicit = predictor(image, camera=Camera(60.0, 60.0, 60.0, 36.0))
    np.testing.assert_allclose(wide.depth, explicit.depth, rtol=1e-6)
    both = predictor([image, image], camera=[None, (60.0, 60.0, 60.0, 36.0)])
    assert both[0].camera_default and not both[1].camera_default


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(camera=(0.0, 10.0, 5.0, 5.0)), "positive"),
        (dict(camera=(10.0, 10.0, float("nan"), 5.0)), "finite"),
        (dict(camera=(10.0, 10.0, 5.0)), "fx, fy, cx, cy"),
        (dict(camera=[None, None]), "2 cameras for 1 images"),
        (dict(hfov=180.0), "degrees"),
        (dict(camera=(10.0, 10.0, 5.0, 5.0), hfov=60.0), "not both"),
    ],
)
def test_bad_cameras_get_one_clear_error(predictor: Predictor, kwargs, message: str) -> None:
    with pytest.raises(InputError, match=message):
        predictor(np.zeros((72, 120, 3), np.uint8), **kwargs)


def test_onnx_backend_gives_the_same_metric_depth_for_two_cameras(
    predictor: Predictor, tmp_path: Path
) -> None:
    onnx = Predictor(write_tiny_release(tmp_path / "w.safetensors"), backend="onnx")
    image = np.random.default_rng(1).integers(0, 255, (72, 120, 3), dtype=np.uint8)
    for camera in [(70.0, 70.0, 60.0, 36.0), (260.0, 255.0, 50.0, 40.0)]:
        ref, got = predictor(image, camera=camera), onnx(image, camera=camera)
        np.testing.assert_allclose(got.depth, ref.depth, rtol=1e-3, atol=1e-3)
        assert got.camera == ref.camera == camera
