"""ONNX export: wrapper, export, metadata and an onnxruntime session; fp16 and INT8 variants.

Why it looks the way it does:

- ``ExportWrapper`` returns a flat tuple of named tensors (ONNX has no NamedTuple); the raw
  outputs are exactly ``MultiTaskModel``'s, so a consumer decodes them with the same
  ``perception.postprocess`` code as PyTorch.
- Metric depth needs the camera (``perception.ops.camera``): a camera-aware model's graph
  takes a second input ``camera [B, 4]`` = ``(fx, fy, cx, cy)`` in network pixels (the
  source intrinsics through the letterbox) and adds the output ``depth [B, 1, H, W]`` in
  metres for that camera. ``depth_log`` stays the raw canonical output.
- ``nms=True`` puts decoding + NMS in the graph for runtimes that want boxes out
  (``export/nms.py``: one ONNX ``NonMaxSuppression`` over the batch, padded outputs).
  Limits: the points are constants for the export size, so ``nms`` needs a fixed H x W;
  candidates are chosen as in ``postprocess_detections`` (multi-label, ``score > conf``,
  the ``pre_nms_topk`` best), except that ties at the ``pre_nms_topk``-th score all enter.
- ``verify.py`` runs every export against its eager twin in onnxruntime.
- Metadata (class names, input size, mean/std, version, outputs, NMS settings) is stored
  in the file's ``metadata_props``, so the ``.onnx`` alone is enough to run the model.
- fp16: ``onnxconverter-common`` is not a dependency; onnxruntime ships the same converter
  (``onnxruntime.transformers.float16``). We convert the verified fp32 graph with
  ``keep_io_types=True``: fp16 internals, fp32 inputs/outputs, so every consumer feeds the
  same tensors whatever the precision.
- INT8: static QDQ quantisation (``onnxruntime.quantization.quantize_static``) calibrated
  on letterboxed images of a v1 dataset, i.e. exactly what the model sees at inference.

This module never imports Lightning or ``perception.training`` (ARCHITECTURE: export runs
without them).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perception.checkpoints import LoadedModel, ModelMeta, load_model
from perception.errors import PerceptionError
from perception.export.nms import NMSConfig, detect, onnx_class_nms
from perception.models import MultiTaskModel
from perception.models.fold import fold_batchnorm
from perception.ops.camera import depth_scale
from perception.ops.cpus import default_threads
from perception.postprocess.dense import depth_metres

INPUT_NAME = "images"
CAMERA_NAME = "camera"
RAW_OUTPUTS: tuple[str, ...] = ("cls_logits", "box_dist", "seg_logits", "depth_log")
DET_OUTPUTS: tuple[str, ...] = ("det_boxes", "det_scores", "det_labels", "det_count")
DENSE_OUTPUTS: tuple[str, ...] = ("seg_logits", "depth_log", "depth")
METADATA_FORMAT = 1


# --------------------------------------------------------------------------- the wrapper


class ExportWrapper(nn.Module):
    """``images [B, 3, H, W]`` float in ``[0, 1]`` (+ ``camera [B, 4]`` network pixels for a
    camera-aware model) -> flat tuple of named tensors.

    Without NMS: ``(cls_logits, box_dist, seg_logits, depth_log, depth)``: the model's raw
    outputs and metric depth. With NMS: ``(det_boxes [B, D, 4], det_scores [B, D],
    det_labels [B, D] int64, det_count [B] int64, seg_logits, depth_log, depth)``,
    ``D = max_det``, boxes xyxy in network pixels, rows sorted by decreasing score and zero
    past ``det_count``.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        nms: NMSConfig | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.model, self.nms, self.image_size = model, nms, image_size
        if nms is not None:
            if image_size is None:
                raise PerceptionError("export: nms needs a fixed image_size (H, W)")
            points, strides = model.points(image_size)
            self.register_buffer("points", points, persistent=False)  # [A, 2]
            self.register_buffer("point_strides", strides, persistent=False)  # [A]

    @property
    def camera_aware(self) -> bool:
        """Whether the graph takes a ``camera`` input (metric depth depends on it)."""
        return self.model.canonical_focal > 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return (INPUT_NAME, CAMERA_NAME) if self.camera_aware else (INPUT_NAME,)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of ``forward``'s outputs, in order."""
        return (*RAW_OUTPUTS, "depth") if self.nms is None else DET_OUTPUTS + DENSE_OUTPUTS

    def forward(self, images: Tensor, camera: Tensor | None = None) -> tuple[Tensor, ...]:
        out = self.model(images)
        scale = depth_scale(camera, self.model.canonical_focal) if self.camera_aware else None
        depth = depth_metres(out.depth_log, scale)  # [B, 1, H, W] metres
        if self.nms is None:
            return (*out, depth)
        dets = self._detect(out.cls_logits, out.box_dist)
        return (*dets, out.seg_logits, out.depth_log, depth)

    def _detect(self, cls_logits: Tensor, box_dist: Tensor) -> tuple[Tensor, ...]:
        assert self.nms is not None and self.image_size is not None
        return detect(
            cls_logits, box_dist, self.points, self.point_strides, self.nms, self.image_size
        )


# ------------------------------------------------------------------------------ export


def _resolve(weights_or_model: Any, class_names: Sequence[str] | None) -> LoadedModel:
    """A weights path, a ``LoadedModel`` or a bare ``MultiTaskModel`` -> ``LoadedModel``."""
    if isinstance(weights_or_model, LoadedModel):
        return weights_or_model
    if isinstance(weights_or_model, MultiTaskModel):
        names = list(class_names or [str(i) for i in range(weights_or_model.num_classes)])
        return LoadedModel(weights_or_model, ModelMeta({}, names, (384, 640)))
    if isinstance(weights_or_model, str | os.PathLike):
        return load_model(weights_or_model, "cpu")
    raise PerceptionError(f"export: expected a weights path or a model, got {weights_or_model!r}")


def _dynamic_shapes(dynamic_batch: bool, dynamic_hw: bool, camera: bool) -> dict | None:
    """``torch.export`` dims for the inputs (H, W stay multiples of 32; one batch dim)."""
    if not (dynamic_batch or dynamic_hw):
        return None
    dims: dict[int, Any] = {}
    batch = torch.export.Dim("batch", min=1, max=1024)
    if dynamic_batch:
        dims[0] = batch
    if dynamic_hw:
        dims[2] = 32 * torch.export.Dim("h32", min=1, max=128)
        dims[3] = 32 * torch.export.Dim("w32", min=1, max=128)
    shapes: dict[str, Any] = {"images": dims}
    if camera:
        shapes["camera"] = {0: batch} if dynamic_batch else None
    return shapes


def example_images(
    image_size: tuple[int, int], batch: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Deterministic ``[B, 3, H, W]`` images in ``[0, 1]``; seed 0 exports, seed 1 verifies."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, *image_size), generator=gen).to(dtype)


def example_camera(image_size: tuple[int, int], batch: int = 1, focal: float = 1.0) -> Tensor:
    """``[B, 4]`` a centred camera of focal ``focal x W`` network pixels (export/verify)."""
    h, w = image_size
    return torch.tensor([[focal * w, focal * w, w / 2, h / 2]]).repeat(batch, 1)


def graph_feed(session: Any, images: np.ndarray, camera: np.ndarray | None = None) -> dict:
    """An onnxruntime feed for ``images`` ``[B, 3, H, W]``; a camera-aware graph also gets
    ``camera`` ``[B, 4]`` network pixels (default: a centred camera, focal = W)."""
    feed = {INPUT_NAME: images.astype(np.float32)}
    if CAMERA_NAME in {i.name for i in session.get_inputs()}:
        if camera is None:
            camera = example_camera(tuple(images.shape[-2:]), len(images)).numpy()
        feed[CAMERA_NAME] = camera.astype(np.float32)
    return feed


def export_onnx(
    weights_or_model: str | os.PathLike | LoadedModel | MultiTaskModel,
    out_path: str | os.PathLike,
    *,
    opset: int = 18,
    dynamic_batch: bool = False,
    dynamic_hw: bool = False,
    nms: bool | NMSConfig = False,
    fp16: bool = False,
    image_size: tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Export to ONNX (``torch.onnx.export(dynamo=True)``) with metadata; returns the path.

    Args:
        weights_or_model: ``.safetensors`` / ``.ckpt`` path, ``LoadedModel`` or model.
        out_path: the ``.onnx`` file to write (single file, weights inside).
        opset: ONNX opset, at least 17.
        dynamic_batch: symbolic batch axis. dynamic_hw: symbolic H and W (no ``nms``).
        nms: ``True`` (default ``NMSConfig``) or an ``NMSConfig`` for in-graph NMS.
        fp16: convert the fp32 graph to fp16 internals with fp32 inputs/outputs.
        image_size: ``(H, W)`` export size; default the weights' ``meta.image_size``.
        class_names: only for a bare model (weights carry their own).
    """
    if opset < 17:
        raise PerceptionError(f"export: opset must be >= 17, got {opset}")
    nms_cfg = NMSConfig() if nms is True else (nms or None)
    if nms_cfg is not None and dynamic_hw:
        raise PerceptionError("export: --nms needs a fixed input size; drop dynamic H/W")
    loaded = _resolve(weights_or_model, class_names)
    size = tuple(image_size or loaded.meta.image_size)
    model = copy.deepcopy(loaded.model).float().eval().cpu()  # never move the caller's model
    model.check_image_size(size)
    # onnxruntime folds a conv's BatchNorm itself, but not one after a conv shared across
    # levels, and an INT8 graph keeps that norm in float between Q/DQ pairs
    model, _ = fold_batchnorm(model, size)
    wrapper = ExportWrapper(model, nms_cfg, size).eval()
    proto = _export_proto(wrapper, size, opset, dynamic_batch, dynamic_hw)
    if fp16:
        proto = _to_fp16(proto)
    precision = "fp16" if fp16 else "fp32"
    flags = {"dynamic_batch": dynamic_batch, "dynamic_hw": dynamic_hw, "opset": opset}
    _set_metadata(proto, _metadata(loaded.meta, model, wrapper, size, precision, flags))
    return _save(proto, out_path)


def _export_proto(
    wrapper: ExportWrapper,
    size: tuple[int, int],
    opset: int,
    dynamic_batch: bool,
    dynamic_hw: bool,
) -> Any:
    """Run the dynamo exporter and return the ``onnx.ModelProto``."""
    batch = 2 if dynamic_batch else 1  # batch 1 would be specialised to a constant
    args: tuple[Tensor, ...] = (example_images(size, batch),)
    if wrapper.camera_aware:
        args = (*args, example_camera(size, batch))
    with torch.no_grad(), warnings.catch_warnings():
        # one batch Dim shared by images and camera: the exporter notes it keeps one name
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares")
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=list(wrapper.input_names),
            output_names=list(wrapper.output_names),
            dynamic_shapes=_dynamic_shapes(dynamic_batch, dynamic_hw, wrapper.camera_aware),
            custom_translation_table={torch.ops.perception.class_nms.default: onnx_class_nms},
            optimize=True,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise PerceptionError("export: torch.onnx.export returned nothing")
    return program.model_proto


def _to_fp16(proto: Any) -> Any:
    """fp16 internals, fp32 IO (see module docstring); NMS/TopK stay fp32 (block list)."""
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = sorted({*DEFAULT_OP_BLOCK_LIST, "NonMaxSuppression", "TopK"})
    del proto.graph.value_info[:]  # stale fp32 annotations would contradict the fp16 graph
    proto = convert_float_to_float16(proto, keep_io_types=True, op_block_list=blocked)
    model = ir.from_proto(proto)
    model.graph.sort()  # the converter appends its input Casts last: restore topological order
    proto = ir.to_proto(model)
    del proto.graph.value_info[:]
    return proto


def _metadata(
    meta: ModelMeta,
    model: MultiTaskModel,
    wrapper: ExportWrapper,
    size: tuple[int, int],
    precision: str,
    flags: dict[str, Any],
) -> dict[str, Any]:
    """Everything a consumer needs besides the graph (values JSON-encoded on write)."""
    from perception import __version__

    return {
        "perception_format": METADATA_FORMAT,
        "class_names": list(meta.class_names),
        "image_size": list(size),
        "input_name": INPUT_NAME,
        "input_names": list(wrapper.input_names),
        "input_range": [0.0, 1.0],
        "camera_input": "(fx, fy, cx, cy) in network pixels: source intrinsics * letterbox "
        "scale, + pad for cx, cy; depth = exp(depth_log) * sqrt(fx * fy) / canonical_focal"
        if wrapper.camera_aware
        else None,
        "canonical_focal": model.canonical_focal,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "normalization": "inside the graph: (images - mean) / std",
        "strides": list(model.strides),
        "output_names": list(wrapper.output_names),
        "nms": asdict(wrapper.nms) if wrapper.nms is not None else None,
        "precision": precision,
        "model_config": meta.config,
        "version": meta.version or __version__,
        **flags,
    }


def _set_metadata(proto: Any, values: dict[str, Any]) -> None:
    """Replace ``metadata_props`` with ``values``, each JSON-encoded."""
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)


def read_metadata(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """``metadata_props`` of an exported file, JSON-decoded (``{}`` for a foreign file)."""
    import onnx

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: not an ONNX model
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PerceptionError(f"{onnx_path}: not a readable ONNX model ({reason})") from None
    out = {}
    for entry in proto.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            out[entry.key] = entry.value
    return out


def _save(proto: Any, out_path: str | os.PathLike) -> Path:
    import onnx

    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


# ----------------------------------------------------------------------------- session


def cpu_session(onnx_path: str | os.PathLike, threads: int | None = None, spin: bool = True) -> Any:
    """An onnxruntime CPU session; ``threads`` intra-op threads (default: up to 4 cores).

    ``spin=False`` lets its threads sleep as soon as a run ends. Spinning shaves a little
    off back-to-back runs, but the spinning threads hold the cores that the code after a
    run (decoding, NMS, resizing in torch) needs.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = default_threads(threads)
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise PerceptionError(f"{onnx_path}: onnxruntime cannot load it ({err})") from None
