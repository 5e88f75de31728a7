"""Predictor: every input type, every bad input, both backends, original-pixel outputs.

A tiny resnet18 release (``conftest.write_tiny_release``) that yields a few dozen boxes;
exports are module-scoped and shared by the tests that read them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_RELEASE_CLASSES, TINY_RELEASE_SIZE, write_tiny_release
from PIL import Image

import perception
from perception import Prediction, Predictor
from perception.checkpoints import load_model
from perception.errors import PerceptionError
from perception.export import NMSConfig, export_onnx
from perception.inference import InputError
from perception.inference.backends import OnnxBackend

SIZE = TINY_RELEASE_SIZE
CLASSES = TINY_RELEASE_CLASSES
CONF = 0.3


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_release(tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def predictor(weights: Path) -> Predictor:
    return Predictor(weights, conf=CONF)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 90x150 RGB street-like gradient with shapes (another aspect than the network's)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (90, 150, 3), dtype=np.uint8)
    cv2.rectangle(img, (20, 30), (60, 70), (200, 30, 30), -1)
    return img


def _same(a: Prediction, b: Prediction, atol: float = 1e-5) -> None:
    assert a.boxes.shape == b.boxes.shape
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.lane, b.lane, atol=atol)
    np.testing.assert_allclose(a.depth, b.depth, rtol=atol)


def test_prediction_is_typed_and_in_original_pixels(
    predictor: Predictor, image: np.ndarray
) -> None:
    pred = predictor(image)
    assert isinstance(pred, Prediction) and len(pred) > 0
    assert pred.boxes.dtype == np.float32 and pred.boxes.shape == (len(pred), 4)
    assert pred.scores.dtype == np.float32 and pred.labels.dtype == np.int64
    assert (pred.scores > CONF).all() and (np.diff(pred.scores) <= 0).all()
    assert (pred.boxes[:, [0, 2]] >= 0).all() and (pred.boxes[:, [0, 2]] <= 150).all()
    assert (pred.boxes[:, [1, 3]] >= 0).all() and (pred.boxes[:, [1, 3]] <= 90).all()
    assert pred.names == [CLASSES[i] for i in pred.labels]
    for dense in (pred.lane, pred.drivable, pred.depth):
        assert dense is not None and dense.shape == (90, 150) and dense.dtype == np.float32
    assert pred.lane.min() >= 0 and pred.lane.max() <= 1 and (pred.depth > 0).all()
    overlay = pred.plot()
    assert overlay.shape == (90, 150, 3) and overlay.dtype == np.uint8
    assert not np.array_equal(overlay, image)  # tints, boxes and the depth inset drawn


def test_every_input_type_gives_the_same_prediction(
    predictor: Predictor, image: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "img.png"  # lossless, so the file holds exactly `image`
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    chw_float = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    ref = predictor(image)
    for source in (
        path,
        str(path),
        Image.fromarray(image),
        chw_float,
        torch.from_numpy(image).permute(2, 0, 1),  # uint8 CHW
        image.astype(np.float32) / 255.0,  # HxWx3 float in [0, 1]
    ):
        _same(predictor(source), ref)
    batch = predictor([image, path, chw_float])  # a list is batched, order kept
    assert isinstance(batch, list) and len(batch) == 3
    for pred in batch:
        _same(pred, ref)
    stacked = predictor(chw_float[None].repeat(2, 1, 1, 1))  # BCHW tensor -> list
    assert len(stacked) == 2
    _same(stacked[1], ref)


def test_batches_split_by_batch_size_match_single_calls(weights: Path, image: np.ndarray) -> None:
    other = np.ascontiguousarray(image[::-1])
    small = Predictor(weights, conf=CONF, batch_size=2)
    preds = small([image, other, image])
    _same(preds[0], small(image))
    _same(preds[1], small(other))


def test_grayscale_and_rgba_are_converted_not_rejected(
    predictor: Predictor, image: np.ndarray
) -> None:
    gray = image[..., 1]
    gray_rgb = np.repeat(gray[..., None], 3, axis=2)
    ref_gray = predictor(gray_rgb)
    for source in (gray, gray[..., None], Image.fromarray(gray), torch.from_numpy(gray)[None]):
        _same(predictor(source), ref_gray)
    rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 7, np.uint8)], axis=2)
    ref = predictor(image)
    _same(predictor(rgba), ref)
    _same(predictor(Image.fromarray(rgba, "RGBA")), ref)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (np.zeros((64, 64, 3), np.int16), "dtype is int16"),
        (np.full((64, 64, 3), 2.0, np.float32), r"must lie in \[0, 1\]"),
        (np.zeros((3, 64, 80), np.uint8), "looks channels-first"),
        (np.zeros((64, 64, 5), np.uint8), "is not HxW"),
        (np.zeros((0, 64, 3), np.uint8), "empty array"),
        (torch.full((3, 64, 64), float("nan")), "NaN"),
        (torch.zeros((2, 64, 64)), "is not CxHxW"),
        (torch.zeros((3, 64, 64), dtype=torch.int32), "dtype torch.int32"),
        (np.zeros((20, 200, 3), np.uint8), "smaller than the network stride 32"),
        ([], "no images"),
        ({"image": 1}, "unsupported type dict"),
    ],
)
def test_bad_inputs_get_one_clear_error(predictor: Predictor, source, message: str) -> None:
    with pytest.raises(InputError, match=message):
        predictor(source)


def test_bad_files_name_the_file(predictor: Predictor, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    for path, message in (
        (empty, "unreadable"),
        (broken, "unreadable"),
        (tmp_path / "missing.jpg", "not found"),
    ):
        with pytest.raises(PerceptionError, match=f"{path.name}.*{message}"):
            predictor(path)
    with pytest.raises(InputError, match="input 1"):  # which list item is bad
        predictor([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.float64) + 5])


def test_zero_detections_give_empty_arrays_of_the_right_shape(
    weights: Path, image: np.ndarray
) -> None:
    pred = Predictor(weights, conf=0.999999)(image)
    assert len(pred) == 0
    assert pred.boxes.shape == (0, 4) and pred.boxes.dtype == np.float32
    assert pred.scores.shape == (0,) and pred.labels.shape == (0,)
    assert pred.labels.dtype == np.int64 and pred.names == []
    assert pred.plot().shape == image.shape


def test_torch_and_onnxruntime_return_the_same_prediction(
    weights: Path, predictor: Predictor, image: np.ndarray, tmp_path: Path
) -> None:
    onnx_path = export_onnx(load_model(weights), tmp_path / "m.onnx", dynamic_batch=True)
    ort_pred = Predictor(onnx_path, conf=CONF)
    assert ort_pred.class_names == CLASSES and ort_pred.image_size == SIZE
    ref = predictor([image, image[:, ::-1].copy()])
    got = ort_pred([image, image[:, ::-1].copy()])
    assert len(ref[0]) > 0
    for a, b in zip(got, ref, strict=True):
        _same(a, b, atol=1e-3)
    _same(Predictor(weights, conf=CONF, backend="onnx")(image), ref[0], atol=1e-3)


def test_onnx_with_graph_nms_matches_torch(
    weights: Path, predictor: Predictor, image: np.ndarray, tmp_path: Path
) -> None:
    nms = NMSConfig(conf=0.1, iou=0.6, max_det=300, pre_nms_topk=100_000)
    path = export_onnx(load_model(weights), tmp_path / "nms.onnx", nms=nms)
    got, ref = Predictor(path, conf=CONF)(image), predictor(image)
    assert len(ref) > 0
    _same(got, ref, atol=1e-3)
    with pytest.raises(PerceptionError, match="no raw detection outputs"):  # eval needs raw
        OnnxBackend(path).head_outputs(torch.rand(1, 3, *SIZE))
    with pytest.raises(PerceptionError, match=r"in-graph NMS at conf 0\.1"):
        Predictor(path, conf=0.05)
    with pytest.raises(PerceptionError, match=r"in-graph NMS at iou 0\.6"):
        Predictor(path, conf=CONF, iou=0.5)


def test_fixed_batch_export_runs_any_batch_as_head_outputs(weights: Path, tmp_path: Path) -> None:
    loaded = load_model(weights)
    path = export_onnx(loaded, tmp_path / "static.onnx")  # batch fixed at 1
    images = torch.rand(3, 3, *SIZE)
    got = OnnxBackend(path).head_outputs(images)  # run one image at a time
    with torch.no_grad():
        ref = loaded.model(images)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-3, atol=1e-4)


def test_reduced_precision_torch_backend_stays_close(weights: Path, image: np.ndarray) -> None:
    ref = Predictor(weights, conf=CONF)(image)
    low = Predictor(weights, conf=CONF, precision="bf16")(image)
    np.testing.assert_allclose(low.depth, ref.depth, rtol=0.1)
    np.testing.assert_allclose(low.lane, ref.lane, atol=0.1)


def test_another_input_size_runs_in_both_backends(weights: Path, image: np.ndarray) -> None:
    big = (96, 160)  # not the 64x96 the weights were trained at
    torch_pred = Predictor(weights, conf=CONF, image_size=big)
    ort_pred = Predictor(weights, conf=CONF, image_size=big, backend="onnx", threads=1)
    assert torch_pred.image_size == ort_pred.image_size == big
    ref, got = torch_pred(image), ort_pred(image)
    assert ref.depth.shape == image.shape[:2]  # still the frame's pixels
    _same(got, ref, atol=1e-3)
    with pytest.raises(PerceptionError, match="multiples of 32"):
        Predictor(weights, image_size=(100, 160))


def test_compiled_predictor_matches_eager(weights: Path, image: np.ndarray) -> None:
    """``compile=`` runs the same network under torch.compile (inductor on the CPU)."""
    eager = Predictor(weights, conf=CONF)
    compiled = Predictor(weights, conf=CONF, compile="default")
    assert compiled.backend.forward is not compiled.backend.model
    _same(compiled(image), eager(image), atol=1e-4)
    with pytest.raises(PerceptionError, match="compile mode 'fast'"):
        Predictor(weights, compile="fast")
    with pytest.raises(PerceptionError, match="compile= is for the torch backend"):
        Predictor(weights, backend="onnx", compile="default")


def test_bad_predictor_arguments(weights: Path, tmp_path: Path) -> None:
    cases = [
        ({"backend": "tensorrt"}, "backend 'tensorrt'"),
        ({"precision": "int4"}, "precision 'int4'"),
        ({"conf": 1.5}, "0 <= conf < 1"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "x"}, "device"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PerceptionError, match=message):
            Predictor(weights, **kwargs)
    with pytest.raises(PerceptionError, match="weights file not found"):
        Predictor(tmp_path / "nope.safetensors")
    with pytest.raises(PerceptionError, match="onnx backend only"):
        Predictor(tmp_path / "m.onnx", backend="torch")
    with pytest.raises(PerceptionError, match="runs at its export size"):
        Predictor(tmp_path / "m.onnx", image_size=(64, 96))


def test_public_api_is_importable_from_the_package() -> None:
    assert {"Predictor", "Prediction", "build_model", "load_model"} <= set(perception.__all__)
    assert perception.load_model is load_model and perception.Predictor is Predictor
    with pytest.raises(AttributeError):
        _ = perception.not_a_name
