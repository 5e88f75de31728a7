"""The multi-task model: normalise -> backbone -> neck -> (detection, lane, depth) heads.

``build_model(ModelConfig)`` is the one factory; ``MultiTaskModel`` receives its parts by
constructor injection and returns ``HeadOutputs`` of raw tensors in every mode (train,
eval, tracing, export), so losses, postprocess and ONNX all see the same contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from perception.errors import PerceptionError
from perception.models.backbone import Backbone, build_backbone
from perception.models.heads import DepthHead, DetectionHead, LaneHead
from perception.models.layers import check_act, check_norm, check_refine_stride
from perception.models.necks import PAFPN
from perception.models.plain import PlainBackbone, is_plain, parse_plain
from perception.ops.camera import DEFAULT_HFOV
from perception.ops.points import dense_points, level_sizes
from perception.structures import HeadOutputs


@dataclass
class ModelConfig:
    """Everything needed to rebuild a ``MultiTaskModel`` (weights aside).

    Primitive fields only: this becomes Lightning hparams, YAML and weights metadata.
    Detection strides are not configurable: they are the backbone's 8/16/32 levels.

    Attributes:
        backbone: timm model name (a CNN with ``features_only``), optionally ``name.tag``;
            or ``plain:<depth>x<width>``, a residual-free conv stack (``models.plain``)
            whose layers follow ``act`` and ``norm``.
        pretrained: ``False`` random init, ``True`` timm hub weights, or a local file path.
        num_classes: K detection classes.
        drivable: add the drivable-area channel to the segmentation head (S = 2, else 1).
        neck_width, neck_depth: channels of all neck maps; 3x3 convs per merge block.
        head_width, head_depth: channels of the heads; 3x3 layers per detection branch.
        dense_refine_stride: where the lane and depth decoders' last 3x3 conv runs: 1 at
            full resolution, 2 at half resolution with only the outputs upsampled the last
            2x (cheaper on a CPU; ``layers.DenseDecoder``).
        act: activation name (relu, leaky_relu, prelu, elu, gelu, silu).
        norm: normalisation name (batch, group, none).
        canonical_focal: focal length in network pixels of the canonical camera the depth
            head predicts for (``perception.ops.camera``); 0 = camera-blind metric depth.
        default_hfov: horizontal field of view (degrees) assumed for images that come
            without intrinsics (a dataset without calibration, a user's photo).
    """

    backbone: str = "resnet18"
    pretrained: bool | str = False
    num_classes: int = 5
    drivable: bool = True
    neck_width: int = 96
    neck_depth: int = 1
    head_width: int = 96
    head_depth: int = 2
    dense_refine_stride: int = 1
    act: str = "silu"
    norm: str = "batch"
    canonical_focal: float = 500.0
    default_hfov: float = DEFAULT_HFOV

    def __post_init__(self) -> None:
        """Fail on a bad value now, with the field's name, not deep inside torch later."""
        for name in ("num_classes", "neck_width", "neck_depth", "head_width", "head_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PerceptionError(f"model config: {name} must be a positive int, got {value!r}")
        check_refine_stride(self.dense_refine_stride, "model config: dense_refine_stride")
        check_act(self.act)
        if is_plain(self.backbone):
            parse_plain(self.backbone)
        check_norm(self.norm)
        if isinstance(self.canonical_focal, bool) or not self.canonical_focal >= 0:
            raise PerceptionError(
                f"model config: canonical_focal must be >= 0 (0 = camera-blind), "
                f"got {self.canonical_focal!r}"
            )
        if not 0.0 < self.default_hfov < 180.0:
            raise PerceptionError(
                f"model config: default_hfov must be in (0, 180) degrees, got {self.default_hfov!r}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Strict construction from e.g. weights metadata: unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PerceptionError(
                f"model config: unknown keys {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)


class MultiTaskModel(nn.Module):
    """Shared backbone + neck feeding detection, lane/drivable and depth heads.

    Input: ``images [B, 3, H, W]`` float RGB in ``[0, 1]``, H and W multiples of
    ``size_divisor`` (32). Normalisation (the backbone's pretrained mean/std) happens
    inside, as buffers, so training, ``Predictor`` and ONNX agree.

    Attributes:
        strides: detection strides in network pixels, ``(8, 16, 32)``, in ``A`` order.
        num_classes: K. num_seg: S (1 lane, or 2 lane + drivable).
        size_divisor: H and W must be multiples of it (the coarsest backbone stride).
    """

    def __init__(
        self,
        backbone: Backbone | PlainBackbone,
        neck: PAFPN,
        detection: DetectionHead,
        lane: LaneHead,
        depth: DepthHead,
        *,
        canonical_focal: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck
        self.detection, self.lane, self.depth = detection, lane, depth
        # [3] -> [1, 3, 1, 1] to broadcast over images; persistent so checkpoints carry them
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))
        self.strides: tuple[int, ...] = tuple(neck.det_strides)
        self.num_classes: int = detection.num_classes
        self.num_seg: int = lane.num_outputs
        self.size_divisor: int = max(backbone.strides)
        # depth_log is log depth for a camera of this focal (network px); 0 = metric
        self.canonical_focal: float = float(canonical_focal)

    def forward(self, images: Tensor) -> HeadOutputs:
        """``[B, 3, H, W]`` in ``[0, 1]`` -> raw ``HeadOutputs`` (see its field comments)."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_image_size(images.shape[-2:])  # eager only: export keeps shapes symbolic
        x = (images - self.mean) / self.std
        dense, det_maps = self.neck(self.backbone(x))
        cls_logits, box_dist = self.detection(det_maps)
        return HeadOutputs(
            cls_logits=cls_logits,
            box_dist=box_dist,
            seg_logits=self.lane(dense),
            depth_log=self.depth(dense),
        )

    def check_image_size(self, image_hw: Sequence[int]) -> None:
        """Raise ``PerceptionError`` unless H and W are positive multiples of ``size_divisor``."""
        h, w = (int(v) for v in image_hw)
        d = self.size_divisor
        if h <= 0 or w <= 0 or h % d or w % d:
            raise PerceptionError(f"input size {h}x{w}: height and width must be multiples of {d}")

    def level_sizes(self, image_hw: Sequence[int]) -> list[tuple[int, int]]:
        """Detection map ``(h, w)`` per stride for an ``H x W`` input.

        Pass to ``ops.points.dense_points(sizes, model.strides)`` to get the ``A`` points
        in the order of ``HeadOutputs.cls_logits`` / ``box_dist``.
        """
        return level_sizes(image_hw, self.strides)

    def points(
        self, image_hw: Sequence[int], device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Detection point centres ``[A, 2]`` (x, y network pixels) and strides ``[A]`` for
        an ``H x W`` input, in the order of ``HeadOutputs.cls_logits`` / ``box_dist``."""
        return dense_points(self.level_sizes(image_hw), self.strides, device)


def build_model(cfg: ModelConfig) -> MultiTaskModel:
    """The one factory: a ``MultiTaskModel`` whose wiring is read from the backbone."""
    layer = {"act": cfg.act, "norm": cfg.norm}
    backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, **layer)
    neck = PAFPN(
        backbone.out_channels,
        backbone.strides,
        width=cfg.neck_width,
        depth=cfg.neck_depth,
        **layer,
    )
    head = {"width": cfg.head_width, **layer}
    dense = {"scale": neck.dense_stride, "refine_stride": cfg.dense_refine_stride, **head}
    return MultiTaskModel(
        backbone,
        neck,
        DetectionHead(
            neck.out_channels,
            cfg.num_classes,
            len(neck.det_strides),
            depth=cfg.head_depth,
            **head,
        ),
        LaneHead(neck.out_channels, drivable=cfg.drivable, **dense),
        DepthHead(neck.out_channels, **dense),
        canonical_focal=cfg.canonical_focal,
    )
