"""``Predictor``: images in, typed ``Prediction`` out, in the original image's pixels.

The one inference path (ARCHITECTURE data flow 6): inputs -> ``letterbox_image`` (the
same function training uses) -> a backend -> ``detections_to_source`` and
``dense_to_source`` -> ``Prediction``. Backends differ only in what runs the network.

    >>> p = Predictor("weights/perception-r18-synth.safetensors")
    >>> pred = p("street.jpg")
    >>> pred.boxes, pred.lane, pred.depth
    >>> pred = p("street.jpg", camera=(1000.0, 1000.0, 640.0, 360.0))  # metric for that lens

Metric depth needs the camera (``perception.ops.camera``): give intrinsics in the
image's own pixels, or a horizontal field of view; without either the default field of
view stored in the weights is assumed, and ``Prediction.camera`` says which was used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from perception.checkpoints import load_model
from perception.data.transforms import letterbox_image
from perception.errors import PerceptionError
from perception.inference.backends import (
    NMSSettings,
    OnnxBackend,
    Raw,
    TorchBackend,
    check_graph_settings,
)
from perception.inference.inputs import is_batch, resolve_cameras, to_images
from perception.postprocess import dense_to_source, detections_to_source, seg_probabilities
from perception.structures import Camera, Letterbox, Prediction

BACKENDS = ("auto", "torch", "onnx")


class Predictor:
    """Run released weights, a checkpoint or an ONNX export on images.

    Args:
        weights: ``.safetensors`` release, Lightning ``.ckpt`` or ``perception export``
            ``.onnx`` file.
        device: torch device for the torch backend (``"cpu"``, ``"cuda"``, ...).
        conf: keep detections scoring above this. iou: NMS IoU threshold (class-aware).
        max_det: at most this many detections per image.
        backend: ``"auto"`` (by file type), ``"torch"`` or ``"onnx"``; ``"onnx"`` with
            torch weights exports them to a temporary fp32 ONNX file first.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` weights for the torch backend.
        batch_size: images per forward pass when given a list.
        image_size: network input ``(H, W)`` for torch weights (multiples of the model's
            stride), e.g. a larger one for far objects; default the size they were trained
            at. An ``.onnx`` file runs at the size it was exported at.
        threads: onnxruntime intra-op threads (default: up to 4 cores); torch uses
            ``torch.set_num_threads``.
        compile: run the torch backend under ``torch.compile`` in this mode:
            ``"default"``, ``"reduce-overhead"`` (CUDA graphs on a GPU) or
            ``"max-autotune"``; ``None`` (default) runs eager. Each new batch size
            compiles once on its first call.
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        device: str = "cpu",
        conf: float = 0.25,
        iou: float = 0.6,
        max_det: int = 300,
        *,
        backend: str = "auto",
        precision: str = "fp32",
        batch_size: int = 8,
        image_size: tuple[int, int] | None = None,
        threads: int | None = None,
        compile: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise PerceptionError(f"backend {backend!r}: expected one of {list(BACKENDS)}")
        if not 0.0 <= conf < 1.0 or not 0.0 < iou <= 1.0 or max_det < 1 or batch_size < 1:
            raise PerceptionError(
                f"need 0 <= conf < 1, 0 < iou <= 1, max_det >= 1 and batch_size >= 1; got "
                f"conf={conf}, iou={iou}, max_det={max_det}, batch_size={batch_size}"
            )
        self.nms = NMSSettings(conf, iou, max_det)
        self.batch_size = batch_size
        self._tmp: tempfile.TemporaryDirectory | None = None
        path = Path(weights)
        is_onnx = path.suffix == ".onnx"
        if backend == "torch" and is_onnx:
            raise PerceptionError(f"{path}: an .onnx file runs on the onnx backend only")
        if is_onnx and image_size is not None:
            raise PerceptionError(f"{path}: an .onnx file runs at its export size; re-export")
        if compile is not None and (is_onnx or backend == "onnx"):
            raise PerceptionError(
                f"{path}: compile= is for the torch backend (onnxruntime optimises its own graph)"
            )
        if is_onnx or backend == "onnx":
            self.backend: TorchBackend | OnnxBackend = OnnxBackend(
                path if is_onnx else self._export(path, image_size), threads
            )
            if self.backend.graph_nms is not None:
                check_graph_settings(self.backend.graph_nms, self.nms, str(path))
        else:
            self.backend = TorchBackend(load_model(path), device, precision, image_size, compile)

    def _export(self, weights: Path, image_size: tuple[int, int] | None) -> Path:
        """Torch weights -> a temporary fp32 ONNX file with dynamic batch (kept while alive)."""
        from perception.export import export_onnx

        loaded = load_model(weights)
        self._tmp = tempfile.TemporaryDirectory(prefix="perception-onnx-")
        out = Path(self._tmp.name) / "model.onnx"
        return export_onnx(loaded, out, dynamic_batch=True, image_size=image_size)

    @property
    def class_names(self) -> list[str]:
        return self.backend.class_names

    @property
    def image_size(self) -> tuple[int, int]:
        """Network input ``(H, W)``; every image is letterboxed to it."""
        return self.backend.image_size

    @property
    def default_hfov(self) -> float:
        """Horizontal field of view (degrees) assumed for images given without a camera."""
        return float(self.backend.model_config["default_hfov"])

    @overload
    def __call__(
        self, source: list | tuple, camera: Any = None, hfov: float | None = None
    ) -> list[Prediction]: ...
    @overload
    def __call__(
        self, source: Any, camera: Any = None, hfov: float | None = None
    ) -> Prediction | list[Prediction]: ...

    def __call__(
        self, source: Any, camera: Any = None, hfov: float | None = None
    ) -> Prediction | list[Prediction]:
        """Predict one input (-> ``Prediction``) or a list / ``BCHW`` tensor (-> list).

        Args:
            source: see the class docstring.
            camera: ``(fx, fy, cx, cy)`` in the original image's pixels (or a ``Camera``)
                for every image, or a list with one per image (``None`` entries take the
                default).
            hfov: instead of ``camera``: the horizontal field of view in degrees (a
                centred camera). Neither: the weights' ``default_hfov``.
        """
        images = to_images(source, min_size=int(self.backend.strides.max()))  # coarsest stride
        cameras = resolve_cameras(camera, hfov, images, self.default_hfov)
        step = self.batch_size if self.backend.max_batch is None else self.backend.max_batch
        preds: list[Prediction] = []
        for start in range(0, len(images), step):
            preds += self._predict(images[start : start + step], cameras[start : start + step])
        return preds if is_batch(source) else preds[0]

    def _predict(
        self, images: list[np.ndarray], cameras: list[tuple[Camera, bool]]
    ) -> list[Prediction]:
        h, w = self.image_size
        boxed = [letterbox_image(image, h, w) for image in images]
        canvas = np.stack([c for c, _ in boxed])  # [B, H, W, 3] uint8
        batch = torch.from_numpy(canvas).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
        net_cams = [
            c.letterboxed(lb).as_array() for (c, _), (_, lb) in zip(cameras, boxed, strict=True)
        ]
        raw = self.backend(batch, self.nms, torch.from_numpy(np.stack(net_cams)))  # cam [B, 4]
        return [
            self._to_source(raw, i, lb, image, cameras[i])
            for i, (image, (_, lb)) in enumerate(zip(images, boxed, strict=True))
        ]

    def _to_source(
        self, raw: Raw, i: int, lb: Letterbox, image: np.ndarray, camera: tuple[Camera, bool]
    ) -> Prediction:
        """Image ``i`` of a batch, from network to original pixels."""
        det = detections_to_source(raw.detections[i], lb)
        seg = dense_to_source(seg_probabilities(raw.seg_logits[i]), lb)  # [S, H0, W0]
        depth = dense_to_source(raw.depth[i], lb)[0]  # [H0, W0] metres
        return Prediction(
            boxes=det.boxes.numpy().astype(np.float32).reshape(-1, 4),
            scores=det.scores.numpy().astype(np.float32),
            labels=det.labels.numpy().astype(np.int64),
            class_names=list(self.class_names),
            lane=seg[0].numpy(),
            drivable=seg[1].numpy() if seg.shape[0] > 1 else None,
            depth=depth.numpy(),
            camera=camera[0].as_tuple(),
            camera_default=camera[1],
            image=image,
        )
