"""ONNX export: onnxruntime must agree with eager PyTorch on inputs unlike the export's.

A tiny resnet18 model at 64x96 keeps each export to a few seconds on CPU; exports are
module-scoped fixtures shared by the tests that only read them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import write_tiny_dataset

from perception.errors import PerceptionError
from perception.export import NMSConfig, export_onnx, quantize_int8, read_metadata, verify_onnx
from perception.export.onnx import example_camera, example_images, graph_feed
from perception.models import ModelConfig, MultiTaskModel, build_model
from perception.ops.points import dense_points
from perception.postprocess.detection import postprocess_detections

SIZE = (64, 96)
CLASSES = ["car", "pedestrian", "cyclist", "truck", "sign"]


def _run(
    path: Path, images: torch.Tensor, camera: torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    """onnxruntime CPU outputs by name (a camera-aware graph gets ``camera`` or a default)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = graph_feed(session, images.numpy(), None if camera is None else camera.numpy())
    return dict(zip(names, session.run(names, feed), strict=True))


@pytest.fixture(scope="module")
def model() -> MultiTaskModel:
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="resnet18", neck_width=16, head_width=16)).eval()


@pytest.fixture(scope="module")
def fp32_path(model: MultiTaskModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_onnx(model, out, image_size=SIZE, class_names=CLASSES)


def test_fp32_export_matches_eager_on_a_second_input(
    fp32_path: Path, model: MultiTaskModel
) -> None:
    images = example_images(SIZE, 1, seed=7)  # not the export input (seed 0)
    diffs = verify_onnx(fp32_path, model, images)
    assert set(diffs) == {"cls_logits", "box_dist", "seg_logits", "depth_log", "depth"}
    assert all(max_abs < 1e-3 for max_abs, _ in diffs.values())
    onnx.checker.check_model(str(fp32_path), full_check=True)
    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "camera"]
    with pytest.raises(PerceptionError, match="does not fit"):  # static batch of 1
        verify_onnx(fp32_path, model, example_images(SIZE, 2, seed=7), full_check=False)


def test_no_batchnorm_is_left_in_the_graph(fp32_path: Path) -> None:
    """Every norm is folded before export, also those after the detection towers' shared
    convs, which onnxruntime cannot fold and an INT8 graph would keep in float."""
    ops = {node.op_type for node in onnx.load(str(fp32_path)).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops


def test_metadata_round_trips(fp32_path: Path, model: MultiTaskModel) -> None:
    meta = read_metadata(fp32_path)
    assert meta["class_names"] == CLASSES
    assert meta["image_size"] == list(SIZE)
    assert meta["mean"] == pytest.approx(model.mean.flatten().tolist())
    assert meta["std"] == pytest.approx(model.std.flatten().tolist())
    assert meta["output_names"] == ["cls_logits", "box_dist", "seg_logits", "depth_log", "depth"]
    assert meta["input_names"] == ["images", "camera"]
    assert meta["canonical_focal"] == model.canonical_focal > 0
    assert meta["nms"] is None and meta["precision"] == "fp32" and meta["version"]


def test_onnx_metric_depth_follows_the_camera_like_torch(
    fp32_path: Path, model: MultiTaskModel
) -> None:
    """Two different cameras: onnxruntime equals torch, and depth = exp(depth_log) * f / f_c."""
    images = example_images(SIZE, 1, seed=8)
    with torch.no_grad():
        depth_log = model(images).depth_log  # [1, 1, H, W] canonical log depth
    depths = []
    for focal in (0.6, 1.4):  # network-pixel focal = focal x W
        camera = example_camera(SIZE, 1, focal)
        got = _run(fp32_path, images, camera)
        expected = depth_log.exp() * (focal * SIZE[1]) / model.canonical_focal
        np.testing.assert_allclose(got["depth"], expected.numpy(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got["depth_log"], depth_log.numpy(), rtol=1e-3, atol=1e-4)
        depths.append(got["depth"])
    np.testing.assert_allclose(depths[1] / depths[0], 1.4 / 0.6, rtol=1e-4)


def test_camera_blind_model_exports_without_a_camera_input(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", neck_width=16, head_width=16, canonical_focal=0.0)
    blind = build_model(cfg).eval()
    path = export_onnx(blind, tmp_path / "blind.onnx", image_size=SIZE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    images = example_images(SIZE, 1, seed=2)
    got = _run(path, images)
    with torch.no_grad():
        expected = blind(images).depth_log.exp()
    np.testing.assert_allclose(got["depth"], expected.numpy(), rtol=1e-3, atol=1e-4)
    verify_onnx(path, blind)


def test_tampered_weight_fails_verification_naming_the_output(
    fp32_path: Path, model: MultiTaskModel
) -> None:
    tampered = copy.deepcopy(model)
    with torch.no_grad():
        list(tampered.depth.parameters())[-1].add_(0.5)  # the depth head's last bias
    with pytest.raises(PerceptionError, match="depth_log"):
        verify_onnx(fp32_path, tampered, example_images(SIZE, 1, seed=3))


def test_dynamic_batch_runs_at_batch_1_and_3(model: MultiTaskModel, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "dyn.onnx", image_size=SIZE, dynamic_batch=True)
    for batch in (1, 3):
        images = example_images(SIZE, batch, seed=10 + batch)
        camera = example_camera(SIZE, batch, 0.8) * torch.linspace(0.9, 1.1, batch)[:, None]
        got = _run(path, images, camera)
        with torch.no_grad():
            ref = model(images)
        scale = (camera[:, 0] * camera[:, 1]).sqrt() / model.canonical_focal  # [B]
        expected = ref.depth_log.exp() * scale[:, None, None, None]
        np.testing.assert_allclose(got["depth"], expected.numpy(), rtol=1e-3, atol=1e-4)
        for name, value in ref._asdict().items():
            assert got[name].shape == tuple(value.shape)
            np.testing.assert_allclose(got[name], value.numpy(), rtol=1e-3, atol=1e-4)


def test_opset_below_17_and_nms_with_dynamic_hw_are_refused(model: MultiTaskModel) -> None:
    with pytest.raises(PerceptionError, match="opset"):
        export_onnx(model, "unused.onnx", image_size=SIZE, opset=16)
    with pytest.raises(PerceptionError, match="nms"):
        export_onnx(model, "unused.onnx", image_size=SIZE, nms=True, dynamic_hw=True)


def _confident_model(model: MultiTaskModel) -> MultiTaskModel:
    """A copy whose head logits and boxes spread widely, so some points score high."""
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.detection.cls_pred.weight.mul_(300.0)
        nudged.detection.box_pred.weight.mul_(30.0)
    return nudged


def _conf_between(model: MultiTaskModel, images: torch.Tensor, rank: int) -> float:
    """A threshold halfway between the ``rank``-th and next best score (no boundary ties)."""
    with torch.no_grad():
        scores = model(images).cls_logits.sigmoid().flatten().sort(descending=True).values
    return float((scores[rank - 1] + scores[rank]) / 2)


def test_nms_export_matches_eager_postprocess(model: MultiTaskModel, tmp_path: Path) -> None:
    nudged = _confident_model(model)
    images = example_images(SIZE, 2, seed=5)
    cfg = NMSConfig(conf=_conf_between(nudged, images, 60), iou=0.5, max_det=12, pre_nms_topk=40)
    path = export_onnx(nudged, tmp_path / "nms.onnx", image_size=SIZE, nms=cfg, dynamic_batch=True)
    got = _run(path, images)
    with torch.no_grad():
        out = nudged(images)
    points, strides = dense_points(nudged.level_sizes(SIZE), nudged.strides)
    ref = postprocess_detections(
        out.cls_logits, out.box_dist, points, strides, cfg.conf, cfg.iou, cfg.max_det,
        cfg.pre_nms_topk, image_size=SIZE,
    )  # fmt: skip
    assert got["det_boxes"].shape == (2, 12, 4) and got["det_count"].dtype == np.int64
    for b, det in enumerate(ref):
        n = int(got["det_count"][b])
        assert n == len(det.scores) > 0
        np.testing.assert_allclose(got["det_scores"][b, :n], det.scores.numpy(), rtol=1e-4)
        np.testing.assert_allclose(got["det_boxes"][b, :n], det.boxes.numpy(), atol=1e-3)
        np.testing.assert_array_equal(got["det_labels"][b, :n], det.labels.numpy())
        assert not got["det_scores"][b, n:].any()  # padding is zero
    np.testing.assert_allclose(got["depth_log"], out.depth_log.numpy(), rtol=1e-3, atol=1e-4)
    verify_onnx(path, nudged, images)  # the eager wrapper agrees too


def test_fp16_and_int8_variants_run_close_to_fp32(
    fp32_path: Path, model: MultiTaskModel, tmp_path: Path
) -> None:
    path16 = export_onnx(model, tmp_path / "m16.onnx", image_size=SIZE, fp16=True)
    assert read_metadata(path16)["precision"] == "fp16"
    diffs = verify_onnx(path16, model, example_images(SIZE, 1, seed=4), rtol=1e-2, atol=1e-2)
    assert diffs["depth_log"][0] < 1e-2
    write_tiny_dataset(tmp_path / "calib", num=4, size=SIZE)
    settings = (("qdq", "conv", "DequantizeLinear"), ("qoperator", "all", "QLinearConv"))
    for fmt, ops, fused in settings:
        out = tmp_path / f"m8-{fmt}.onnx"
        path8 = quantize_int8(fp32_path, out, tmp_path / "calib", num_images=4, fmt=fmt, ops=ops)
        meta = read_metadata(path8)
        assert meta["precision"] == "int8" and meta["class_names"] == CLASSES
        assert (meta["int8_format"], meta["int8_ops"]) == (fmt, ops)  # the export says which
        graph = onnx.load(str(path8)).graph
        assert fused in {n.op_type for n in graph.node}
        producer = {o: n for n in graph.node for o in n.output}
        dense = {"seg_logits", "depth_log"}
        for out in graph.output:  # box distances, logits and metres: never 256 levels
            if out.name not in dense:
                assert producer[out.name].op_type not in {"DequantizeLinear", "QLinearConv"}, out
        if ops == "all":  # the dense heads' last conv and upsample are quantised (faster)
            assert {producer[name].op_type for name in dense} == {"DequantizeLinear"}
        got = _run(path8, example_images(SIZE, 1, seed=4))
        assert got["depth_log"].shape == (1, 1, *SIZE) and np.isfinite(got["depth_log"]).all()
    with pytest.raises(PerceptionError, match="INT8 operators 'some'; valid: conv, all"):
        quantize_int8(fp32_path, tmp_path / "x.onnx", tmp_path / "calib", ops="some")
    assert not (tmp_path / "x.onnx").exists()


def test_export_command_verifies_and_prints_differences(
    model: MultiTaskModel, tmp_path: Path, capsys
) -> None:
    import dataclasses

    from perception.checkpoints import ModelMeta, save_release
    from perception.cli import main

    config = dataclasses.asdict(ModelConfig(backbone="resnet18", neck_width=16, head_width=16))
    meta = ModelMeta(config, [f"class{i}" for i in range(config["num_classes"])], SIZE)
    weights = save_release(model, meta, tmp_path / "w.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--dynamic"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "depth_log" in printed and "cls_logits" in printed
    assert main(["export", "--weights", str(weights), "--out", str(out), "--int8"]) == 2
    assert "--calib" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    args = ["export", "--weights", str(weights), "--out", str(bad), "--int8", "--calib", "c"]
    assert main([*args, "--int8-format", "qlinear"]) == 2
    assert "INT8 format 'qlinear'; valid: qdq, qoperator" in capsys.readouterr().err
    assert not bad.exists() and not bad.with_suffix(".fp32.onnx").exists()
    assert main([*args, "--int8-weight-bits", "6"]) == 2
    assert "INT8 weight bits 6; valid: 7, 8" in capsys.readouterr().err
    assert not bad.exists() and not bad.with_suffix(".fp32.onnx").exists()


def test_int8_weights_are_7_bit_unless_asked(fp32_path: Path, tmp_path: Path) -> None:
    """Without VNNI, x86 sums pairs of u8 x s8 products in int16: weights within +-64
    cannot saturate it. 8 bits on request, for runtimes that cannot saturate."""
    from onnx import numpy_helper

    write_tiny_dataset(tmp_path / "calib", num=4, size=SIZE)
    widest = {}
    for bits in (None, 8):
        kwargs = {} if bits is None else {"weight_bits": bits}
        out = tmp_path / f"w{bits}.onnx"
        path = quantize_int8(fp32_path, out, tmp_path / "calib", num_images=4, **kwargs)
        weights = [
            numpy_helper.to_array(t)
            for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) == 4
        ]
        assert weights  # the convolutions really are quantized
        widest[bits] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
        assert read_metadata(path)["int8_weight_bits"] == (bits or 7)
    assert widest[None] <= 64 < widest[8] <= 127


def test_the_output_tail_stays_fp32() -> None:
    """Everything from the last convolution of each path to the outputs is left float,
    or from a tensor named as a stop."""
    from onnx import TensorProto, helper

    from perception.export.quantize import output_tail

    def node(op: str, inputs: list[str], out: str) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [out], name=f"{op}_{out}")

    nodes = [
        node("Conv", ["x", "w1"], "a"),
        node("Relu", ["a"], "b"),
        node("Conv", ["b", "w2"], "c"),  # last conv of the box path
        node("Reshape", ["c", "shape"], "boxes"),
        node("Conv", ["b", "w3"], "d"),  # last conv of the depth path
        node("Exp", ["d"], "e"),
        node("Mul", ["e", "camera"], "depth"),
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("boxes", "depth")
    ]
    graph = helper.make_graph(nodes, "g", [], outputs)
    assert sorted(output_tail(graph)) == ["Conv_c", "Conv_d", "Exp_e", "Mul_depth", "Reshape_boxes"]
    # not past the log depth "d": only the conversion to metres stays on that path
    tail = ["Conv_c", "Exp_e", "Mul_depth", "Reshape_boxes"]
    assert sorted(output_tail(graph, stop=["d"])) == tail


def test_sessions_for_the_predictor_do_not_spin(fp32_path: Path) -> None:
    from perception.export.onnx import cpu_session

    key = "session.intra_op.allow_spinning"
    quiet = cpu_session(fp32_path, 1, spin=False).get_session_options()
    assert quiet.get_session_config_entry(key) == "0"
    from perception.inference.backends import OnnxBackend

    backend = OnnxBackend(fp32_path, threads=1)
    assert backend.session.get_session_options().get_session_config_entry(key) == "0"
