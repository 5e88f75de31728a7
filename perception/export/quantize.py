"""Static INT8 quantization (QDQ or QOperator) of an fp32 export, calibrated on a v1 dataset.

Kept apart from ``onnx.py`` (the export) because it needs the dataset reader
and onnxruntime's quantization tool, which plain exports do not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perception.errors import PerceptionError
from perception.export.onnx import (
    CAMERA_NAME,
    DENSE_OUTPUTS,
    INPUT_NAME,
    RAW_OUTPUTS,
    _save,
    _set_metadata,
    example_camera,
    read_metadata,
)


class LetterboxCalibrationReader:
    """Calibration reader over a v1 dataset: letterboxed RGB images in ``[0, 1]``.

    Duck-typed ``onnxruntime.quantization.CalibrationDataReader`` (``get_next`` /
    ``rewind``), so importing this module does not load the quantisation tool. The same
    letterbox as inference (``data.transforms.letterbox_image``), so the calibration
    ranges are those of real inputs.
    """

    def __init__(
        self,
        calib_dir: str | os.PathLike,
        image_size: tuple[int, int],
        num: int,
        camera: bool = False,
    ):
        """``camera``: the graph has a camera input (a camera-aware export)."""
        from perception.data.formats import v1

        self.root, self.size, self.camera = Path(calib_dir), image_size, camera
        records = v1.read_manifest(self.root)
        if not records:
            raise PerceptionError(f"{calib_dir}: no images to calibrate INT8 with")
        self.records = records[:num]
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        from perception.data.formats import v1
        from perception.data.transforms import letterbox_image

        for rec in self.records:
            image = v1.read_image(v1.resolve(self.root, rec.image))  # [H, W, 3] uint8
            canvas, _ = letterbox_image(image, *self.size)
            chw = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # [1, 3, h, w]
            feed = {INPUT_NAME: chw}
            if self.camera:  # only scales the depth output: any valid camera calibrates
                feed[CAMERA_NAME] = example_camera(self.size).numpy()
            yield feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


INT8_FORMATS: tuple[str, ...] = ("qdq", "qoperator")
INT8_OPS: tuple[str, ...] = ("conv", "all")
# what "conv" quantizes; "all" is every operator onnxruntime has an INT8 kernel for
CONV_OPS = ["Conv", "MatMul", "Gemm"]
# the fastest within the accuracy budget on the CPU measured (docs/benchmarks.md), and
# portable: TensorRT reads Q/DQ pairs
DEFAULT_FORMAT, DEFAULT_OPS = "qdq", "all"
DEFAULT_INT8 = f"{DEFAULT_FORMAT}:{DEFAULT_OPS}"  # ``format:ops``
# 7-bit weights by default: x86 CPUs without VNNI (AVX2 only, e.g. AMD EPYC Zen 3) multiply
# u8 x s8 in pairs summed into int16, which saturates with full 8-bit weights (-1.3 pt
# mAP50 on the release, docs/benchmarks.md); with 7 bits the sums cannot overflow and the
# release stayed within the accuracy budget (-0.4 pt). The exporting machine is rarely the
# one that runs the model, so the default is the setting that is accurate everywhere; 8 bits
# for TensorRT, ARM or VNNI CPUs.
INT8_WEIGHT_BITS: tuple[int, ...] = (7, 8)
DEFAULT_WEIGHT_BITS = 7


def int8_settings(texts: Sequence[str]) -> list[tuple[str, str]]:
    """``["qoperator:all", ...]`` -> ``[("qoperator", "all"), ...]``, each checked;
    ``"all"`` stands for every format and op set."""
    if "all" in texts:
        return [(f, o) for f in INT8_FORMATS for o in INT8_OPS]
    return [parse_int8_setting(t) for t in texts]


def parse_int8_setting(text: str) -> tuple[str, str]:
    """``"qoperator:all"`` -> ``("qoperator", "all")``, checked (``check_int8_setting``)."""
    fmt, sep, ops = text.partition(":")
    if not sep:
        raise PerceptionError(f"INT8 setting {text!r}: expected format:ops, e.g. {DEFAULT_INT8}")
    check_int8_setting(fmt, ops)
    return fmt, ops


def check_int8_setting(fmt: str, ops: str, weight_bits: int = DEFAULT_WEIGHT_BITS) -> None:
    """One ``PerceptionError`` naming the valid choices for a wrong format, op set or
    weight width."""
    if weight_bits not in INT8_WEIGHT_BITS:
        raise PerceptionError(
            f"INT8 weight bits {weight_bits!r}; valid: {', '.join(map(str, INT8_WEIGHT_BITS))}"
        )
    if fmt not in INT8_FORMATS:
        raise PerceptionError(f"INT8 format {fmt!r}; valid: {', '.join(INT8_FORMATS)}")
    if ops not in INT8_OPS:
        raise PerceptionError(f"INT8 operators {ops!r}; valid: {', '.join(INT8_OPS)}")


def output_tail(graph: Any, stop: Sequence[str] = ()) -> list[str]:
    """Names of the nodes between the graph's outputs and the last ``Conv`` on each path
    back from them, those convolutions included (an ``onnx.GraphProto``). The walk does
    not go past a tensor named in ``stop``."""
    producer = {out: node for node in graph.node for out in node.output}
    tail: dict[str, None] = {}  # ordered set of node names
    pending = [o.name for o in graph.output]
    while pending:
        name = pending.pop()
        node = producer.get(name)
        if node is None or node.name in tail or name in stop:
            continue  # a graph input or initializer, already walked, or a stop
        tail[node.name] = None
        if node.op_type != "Conv":
            pending.extend(node.input)
    return list(tail)


# the dense heads' raw outputs: their last convolutions and upsamples are quantised
QUANTISED_OUTPUTS: tuple[str, ...] = tuple(n for n in RAW_OUTPUTS if n in DENSE_OUTPUTS)


def float_nodes(graph: Any) -> list[str]:
    """The nodes an INT8 export keeps in float: each detection output from its last
    convolution on, because box distances and class logits need more than 256 levels
    (quantised, they cost 15 points of mAP50_95 in QOperator form); and what turns log
    depth into metres for the camera (metres over 256 levels would be 0.3 m steps). The
    walk stops at ``seg_logits`` and ``depth_log``: quantising the dense heads' tails
    kept abs_rel within 0.0005 of a float tail on the release and raised INT8's speed-up
    over fp32 from 2.1-2.2x to 2.3-2.5x on the CPU measured (docs/benchmarks.md)."""
    return output_tail(graph, stop=QUANTISED_OUTPUTS)


def quantize_int8(
    fp32_onnx: str | os.PathLike,
    out_path: str | os.PathLike,
    calib_dir: str | os.PathLike,
    num_images: int = 64,
    *,
    fmt: str = DEFAULT_FORMAT,
    ops: str = DEFAULT_OPS,
    weight_bits: int = DEFAULT_WEIGHT_BITS,
) -> Path:
    """Static INT8 (u8 activations, s8 per-channel weights, MinMax calibration) of an fp32
    export.

    ``fmt``: ``qdq`` keeps float operators between QuantizeLinear/DequantizeLinear pairs
    (portable: TensorRT and other runtimes read it); ``qoperator`` writes onnxruntime's
    fused integer operators (QLinearConv, ...), which skip the Q/DQ round trips on CPU.
    ``ops``: ``conv`` quantizes only Conv/MatMul/Gemm; ``all`` also the activations,
    additions, resizes and concatenations between them, so fewer tensors go back to float.
    Which pays depends on the CPU and on the network's activation (``perception bench``
    times each). Whatever the setting, the detection outputs from their last convolution
    on and the conversion of log depth to metres stay fp32 (``float_nodes``).
    ``weight_bits``: 7 (the default, ``DEFAULT_WEIGHT_BITS``: no x86 CPU saturates) or 8
    (for runtimes whose integer products cannot saturate: TensorRT, ARM, VNNI CPUs).
    The choice is written to the metadata (``int8_format``, ``int8_ops``,
    ``int8_weight_bits``).
    INT8 is not held to the fp32 tolerance; compare it with ``verify_onnx(..., rtol=...,
    atol=...)`` loosened, or by mAP.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    check_int8_setting(fmt, ops, weight_bits)
    meta = read_metadata(fp32_onnx)
    if meta.get("precision") != "fp32":
        raise PerceptionError(f"{fp32_onnx}: INT8 needs an fp32 perception export")
    camera = CAMERA_NAME in (meta.get("input_names") or [])
    reader = LetterboxCalibrationReader(
        calib_dir, tuple(meta["image_size"]), num_images, camera=camera
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32_onnx),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=CONV_OPS if ops == "conv" else None,
        nodes_to_exclude=float_nodes(onnx.load(str(fp32_onnx)).graph),
        reduce_range=weight_bits == 7,  # onnxruntime's name for 7-bit weights
    )
    proto = onnx.load(str(out))
    extra = {
        "int8_format": fmt,
        "int8_ops": ops,
        "int8_weight_bits": weight_bits,
        "calibration_images": len(reader.records),
    }
    _set_metadata(proto, {**meta, "precision": "int8", **extra})
    return _save(proto, out)
