"""Inference backends: run a letterboxed batch, return detections + dense maps.

Both backends take ``[B, 3, H, W]`` float images in ``[0, 1]`` on the network canvas and
each image's camera ``[B, 4]`` in network pixels, and return the same ``Raw`` triple in
network pixels (depth already in metres for that camera), so ``Predictor`` un-letterboxes
them in one place whichever runs:

- ``TorchBackend``: the model on CPU/GPU in fp32, fp16 or bf16, eager or under
  ``torch.compile`` (``COMPILE_MODES``; ``reduce-overhead`` adds CUDA graphs on a GPU).
- ``OnnxBackend``: an ``export_onnx`` file under onnxruntime. A raw export is decoded by
  the same ``postprocess_detections`` as torch; an ``--nms`` export decodes in its graph
  with the settings it was exported with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from perception.checkpoints import LoadedModel
from perception.errors import PerceptionError
from perception.models.fold import fold_batchnorm
from perception.ops.camera import DEFAULT_HFOV, depth_scale
from perception.ops.points import dense_points, level_sizes
from perception.postprocess import depth_metres, postprocess_detections
from perception.structures import COMPILE_MODES, PRECISION_NAMES, Detections, HeadOutputs

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True))


def check_precision(precision: str) -> None:
    """One named error for a precision that is not in ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise PerceptionError(f"precision {precision!r}: expected one of {list(PRECISIONS)}")


def resolve_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``; one named error for a bad name or missing CUDA."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise PerceptionError(f"device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PerceptionError(f"device {device!r}: CUDA is not available on this machine")
    return dev


def check_compile_mode(mode: str | None) -> None:
    """One named error for a ``torch.compile`` mode that is not in ``COMPILE_MODES``."""
    if mode is not None and mode not in COMPILE_MODES:
        raise PerceptionError(f"compile mode {mode!r}: expected one of {list(COMPILE_MODES)}")


@dataclass(frozen=True)
class NMSSettings:
    """``Predictor``'s detection settings (``postprocess_detections`` arguments)."""

    conf: float = 0.25
    iou: float = 0.6
    max_det: int = 300


class Raw(NamedTuple):
    """One batch's outputs in network pixels, on the CPU."""

    detections: list[Detections]  # B x (boxes [N, 4] xyxy, scores [N], labels [N])
    seg_logits: torch.Tensor  # [B, S, H, W]
    depth: torch.Tensor  # [B, 1, H, W] metres for the camera that was passed


class TorchBackend:
    """The ``MultiTaskModel``; ``precision`` casts the weights (fp16/bf16 on a GPU, bf16 on
    a CPU with AMX or AVX512-BF16); ``compile`` runs it under ``torch.compile`` in that mode
    (the first call of each batch size compiles, which takes seconds to a minute)."""

    max_batch: int | None = None

    def __init__(
        self,
        loaded: LoadedModel,
        device: str = "cpu",
        precision: str = "fp32",
        image_size: tuple[int, int] | None = None,
        compile: str | None = None,
    ):
        """``image_size``: the network input ``(H, W)``; default the weights' own."""
        check_precision(precision)
        check_compile_mode(compile)
        self.device = resolve_device(device)
        self.dtype = PRECISIONS[precision]
        self.image_size: tuple[int, int] = tuple(image_size or loaded.meta.image_size)
        loaded.model.check_image_size(self.image_size)
        # BatchNorm folded into its convs and channels-last activations: the layout and
        # graph onnxruntime runs, so eager inference is not slower for want of them
        model, _ = fold_batchnorm(loaded.model.float().eval(), self.image_size)
        model = model.to(self.device, self.dtype).to(memory_format=torch.channels_last)
        self.model = model
        self.forward = model if compile is None else torch.compile(model, mode=compile)
        self.class_names: list[str] = list(loaded.meta.class_names)
        self.model_config: dict[str, Any] = dict(loaded.meta.config)
        self.points, self.strides = self.model.points(self.image_size, self.device)

    @torch.no_grad()
    def head_outputs(self, images: torch.Tensor) -> HeadOutputs:
        """``[B, 3, H, W]`` float images -> the raw outputs in float32, on this device (what
        metrics score: the network exactly as ``__call__`` runs it)."""
        images = images.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        return HeadOutputs(*(t.float() for t in self.forward(images)))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, nms: NMSSettings, camera: torch.Tensor) -> Raw:
        out = self.head_outputs(images)
        dets = _decode(
            out.cls_logits, out.box_dist, self.points, self.strides, nms, self.image_size
        )
        scale = depth_scale(camera.float(), self.model.canonical_focal)  # [B]
        depth = depth_metres(out.depth_log.cpu(), scale)
        return Raw(dets, out.seg_logits.cpu(), depth)


class OnnxBackend:
    """An exported ``.onnx`` file (any precision) under onnxruntime on the CPU."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from perception.export.onnx import cpu_session, read_metadata

        path = Path(path)
        if not path.is_file():
            raise PerceptionError(f"{path}: ONNX file not found")
        meta = read_metadata(path)
        if "image_size" not in meta or "class_names" not in meta:
            raise PerceptionError(f"{path}: no perception metadata; export it with perception")
        # threads sleep after each run: decoding and resizing follow at once on the CPU
        self.session, self.path = cpu_session(path, threads, spin=False), path
        self.image_size: tuple[int, int] = tuple(meta["image_size"])
        self.class_names: list[str] = list(meta["class_names"])
        self.model_config: dict[str, Any] = {
            "canonical_focal": 0.0,  # exports before the camera input were camera-blind
            "default_hfov": DEFAULT_HFOV,
            **dict(meta.get("model_config") or {}),
        }
        self.graph_nms: dict[str, Any] | None = meta.get("nms")
        self.max_batch = None if meta.get("dynamic_batch") else 1
        self.names = [o.name for o in self.session.get_outputs()]
        strides = list(meta["strides"])
        self.points, self.strides = dense_points(level_sizes(self.image_size, strides), strides)

    def _run(self, images: torch.Tensor, camera: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Every graph output by name, for any batch (split into single images when the
        graph has a fixed batch of 1). ``camera`` ``[B, 4]`` feeds a camera-aware graph
        (``None``: ``graph_feed``'s default camera, for outputs that do not depend on it)."""
        from perception.export.onnx import graph_feed

        step = len(images) if self.max_batch is None else self.max_batch
        feeds = [
            graph_feed(
                self.session,
                images[i : i + step].float().cpu().numpy(),
                None if camera is None else camera[i : i + step].float().cpu().numpy(),
            )
            for i in range(0, len(images), step)
        ]
        outs = [self.session.run(self.names, feed) for feed in feeds]
        return {
            name: torch.from_numpy(np.concatenate(parts))
            for name, parts in zip(self.names, zip(*outs, strict=True), strict=True)
        }

    def head_outputs(self, images: torch.Tensor) -> HeadOutputs:
        """A raw export's outputs as the model's ``HeadOutputs`` (what metrics score).

        The raw outputs do not depend on the camera (it only scales the ``depth``
        output), so a camera-aware graph is fed a default camera here.
        """
        if self.graph_nms is not None:
            raise PerceptionError(
                f"{self.path}: an --nms export has no raw detection outputs; use a raw export"
            )
        out = self._run(images, None)
        return HeadOutputs(*(out[name] for name in HeadOutputs._fields))

    def __call__(self, images: torch.Tensor, nms: NMSSettings, camera: torch.Tensor) -> Raw:
        out = self._run(images, camera)
        if self.graph_nms is None:
            cls_logits, box_dist = out["cls_logits"], out["box_dist"]
            dets = _decode(cls_logits, box_dist, self.points, self.strides, nms, self.image_size)
        else:
            dets = [_graph_detections(out, i, nms) for i in range(len(images))]
        return Raw(dets, out["seg_logits"].float(), out["depth"].float())


def _decode(
    cls_logits: torch.Tensor,
    box_dist: torch.Tensor,
    points: torch.Tensor,
    strides: torch.Tensor,
    nms: NMSSettings,
    image_size: tuple[int, int],
) -> list[Detections]:
    """Raw detection outputs -> per-image ``Detections`` on the CPU (network pixels)."""
    dets = postprocess_detections(
        cls_logits, box_dist, points, strides, nms.conf, nms.iou, nms.max_det, image_size=image_size
    )
    return [Detections(*(t.cpu() for t in d)) for d in dets]


def _graph_detections(out: dict[str, torch.Tensor], i: int, nms: NMSSettings) -> Detections:
    """Image ``i``'s rows of a padded in-graph NMS result, ``score > conf``, ``max_det``."""
    n = int(out["det_count"][i])
    scores = out["det_scores"][i, :n].float()
    keep = (scores > nms.conf).nonzero().squeeze(1)[: nms.max_det]
    return Detections(
        out["det_boxes"][i, :n].float()[keep], scores[keep], out["det_labels"][i, :n].long()[keep]
    )


def check_graph_settings(graph_nms: dict[str, Any], nms: NMSSettings, path: str) -> None:
    """An ``--nms`` export can only filter further: a lower ``conf``, another ``iou`` or a
    larger ``max_det`` than it was exported with would silently not happen."""
    if nms.conf < graph_nms["conf"] or nms.max_det > graph_nms["max_det"]:
        raise PerceptionError(
            f"{path}: exported with in-graph NMS at conf {graph_nms['conf']} and max_det "
            f"{graph_nms['max_det']}; got conf {nms.conf}, max_det {nms.max_det} "
            "(use conf >= and max_det <= those, or a raw export without --nms)"
        )
    if abs(nms.iou - graph_nms["iou"]) > 1e-9:
        raise PerceptionError(
            f"{path}: exported with in-graph NMS at iou {graph_nms['iou']}, got iou {nms.iou} "
            "(re-export with that iou, or use a raw export without --nms)"
        )
