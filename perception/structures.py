"""Data contracts that cross module boundaries.

One class per contract (ARCHITECTURE rule 4). Everything here is plain data: numpy for
samples on the CPU side of the loader, torch for batches. A task label that is ``None``
means *not labeled* — never "background" — so losses and metrics can skip it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # torch is heavy; the renderer and check-data never need it
    import torch

TASKS: tuple[str, ...] = ("det", "lane", "drivable", "depth")
# The torch path's precisions and ``torch.compile`` modes, named once for the library and
# the command line (which must not import torch to list them).
PRECISION_NAMES: tuple[str, ...] = ("fp32", "fp16", "bf16")
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels of the image they travel with (x right, y down)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def as_array(self) -> np.ndarray:
        """``[4]`` float32 ``(fx, fy, cx, cy)``."""
        return np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float32)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (float(self.fx), float(self.fy), float(self.cx), float(self.cy))

    @classmethod
    def from_hfov(cls, width: int, height: int, hfov: float) -> Camera:
        """A centred camera whose horizontal field of view is ``hfov`` degrees.

        ``fx = fy = (width / 2) / tan(hfov / 2)``, principal point at the image centre:
        what to assume when a dataset or a user gives no intrinsics.
        """
        if not 0.0 < hfov < 180.0:
            raise ValueError(f"hfov must be in (0, 180) degrees, got {hfov}")
        f = (width / 2) / math.tan(math.radians(hfov) / 2)
        return cls(f, f, width / 2, height / 2)

    def letterboxed(self, lb: Letterbox) -> Camera:
        """The same camera in the network frame of letterbox ``lb``.

        Resizing changes the pixel grid, not the rays: focal lengths scale with the image,
        the principal point moves with it (``net = src * scale + pad``).
        """
        s = lb.scale
        return Camera(self.fx * s, self.fy * s, self.cx * s + lb.pad_x, self.cy * s + lb.pad_y)


@dataclass(frozen=True)
class Letterbox:
    """How a source image was placed into the network canvas.

    ``net = src * scale + pad``: a point ``(x, y)`` in source pixels lands at
    ``(x * scale + pad_x, y * scale + pad_y)`` in network pixels.
    """

    scale: float
    pad_x: float
    pad_y: float
    src_h: int
    src_w: int

    def as_array(self) -> np.ndarray:
        """``[5]`` float32 ``(scale, pad_x, pad_y, src_h, src_w)``."""
        return np.array(
            [self.scale, self.pad_x, self.pad_y, self.src_h, self.src_w], dtype=np.float32
        )


@dataclass
class Sample:
    """One image and its labels, all in the same pixel frame.

    Attributes:
        id: the manifest id.
        image: ``[H, W, 3]`` uint8 RGB.
        boxes: ``[N, 4]`` float32 xyxy pixels (pixel-edge convention: a box around the
            single pixel at column 3 is ``x1=3, x2=4``), or ``None`` if not labeled.
        labels: ``[N]`` int64 indices into the model's class list, ``None`` iff boxes is.
        lane, drivable: ``[H, W]`` uint8, 0 background, 1 foreground, 255 ignore; or None.
        depth: ``[H, W]`` float32 meters along the optical axis, 0 = no measurement; or None.
        camera: intrinsics in this frame, or None when the dataset does not give them.
        valid: ``[H, W]`` bool, True where the pixel comes from the source image (False in
            padding added by augmentation or letterboxing); None means all valid.
        letterbox: how the source image was placed into this frame (identity if untouched).
        ignore: ``[M, 4]`` float32 xyxy regions of unboxed objects (DontCare, crowds), in
            this frame and moved by every geometric step exactly as ``boxes``; detection
            is neither rewarded nor punished inside them. None or ``[0, 4]`` = none.
    """

    id: str
    image: np.ndarray
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    lane: np.ndarray | None = None
    drivable: np.ndarray | None = None
    depth: np.ndarray | None = None
    camera: Camera | None = None
    valid: np.ndarray | None = None
    letterbox: Letterbox | None = None
    ignore: np.ndarray | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def labeled(self, task: str) -> bool:
        """Whether this sample carries a label for ``task`` (one of ``TASKS``)."""
        if task == "det":
            return self.boxes is not None
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return getattr(self, task) is not None

    def replace(self, **changes) -> Sample:
        return replace(self, **changes)


@dataclass
class Batch:
    """A collated mini-batch at network resolution (B images of H x W).

    Images stay uint8 until they reach the device (4x less host-to-device traffic); the
    training module turns them into float ``[0, 1]``, which is what the model takes.
    Unlabeled tasks are filled with "ignore" values *and* flagged in ``has_*``, so a
    consumer that forgets the flag still cannot learn background from a missing label.

    ``ignore`` holds one ``[M_i, 4]`` tensor per image (``[0, 4]`` when it has none). It
    defaults to an empty list, which ``__post_init__`` expands to B empty tensors, so code
    that builds a ``Batch`` without ignore regions keeps working.
    """

    images: torch.Tensor  # [B, 3, H, W] uint8 RGB
    boxes: list[torch.Tensor]  # B x [N_i, 4] float32 xyxy network pixels
    labels: list[torch.Tensor]  # B x [N_i] int64
    lane: torch.Tensor  # [B, H, W] uint8, 255 where ignored or unlabeled
    drivable: torch.Tensor  # [B, H, W] uint8, 255 where ignored or unlabeled
    depth: torch.Tensor  # [B, H, W] float32 meters, 0 where invalid or unlabeled
    valid: torch.Tensor  # [B, H, W] bool, False on padding
    has_det: torch.Tensor  # [B] bool
    has_lane: torch.Tensor  # [B] bool
    has_drivable: torch.Tensor  # [B] bool
    has_depth: torch.Tensor  # [B] bool
    camera: torch.Tensor  # [B, 4] float32 (fx, fy, cx, cy) network pixels; NaN if unknown
    letterbox: torch.Tensor  # [B, 5] float32 (scale, pad_x, pad_y, src_h, src_w)
    ids: list[str] = field(default_factory=list)
    num_skipped: int = 0  # bad samples the loader dropped from this batch
    # B x [M_i, 4] float32 xyxy network pixels: regions the detection loss and mAP ignore
    ignore: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ignore and len(self) > 0:
            import torch  # only here: structures stays importable without torch

            empty = torch.zeros((0, 4), dtype=torch.float32, device=self.images.device)
            self.ignore = [empty] * len(self)
        if len(self.ignore) != len(self):
            raise ValueError(f"Batch: {len(self.ignore)} ignore tensors for {len(self)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Move every tensor to ``device`` (lists element-wise)."""
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copy; DataLoader(pin_memory=True) calls this on custom batches."""
        return self._apply(lambda t: t.pin_memory())

    def _apply(self, move) -> Batch:
        """A copy with ``move`` applied to every tensor."""
        return replace(
            self,
            images=move(self.images),
            boxes=[move(b) for b in self.boxes],
            labels=[move(lb) for lb in self.labels],
            lane=move(self.lane),
            drivable=move(self.drivable),
            depth=move(self.depth),
            valid=move(self.valid),
            has_det=move(self.has_det),
            has_lane=move(self.has_lane),
            has_drivable=move(self.has_drivable),
            has_depth=move(self.has_depth),
            camera=move(self.camera),
            letterbox=move(self.letterbox),
            ignore=[move(g) for g in self.ignore],
        )


class HeadOutputs(NamedTuple):
    """Raw per-task tensors from the model, identical in train, eval and export.

    ``A`` is the number of dense detection points over all levels (strides 8, 16, 32,
    row-major within a level, levels in stride order; see ``ops.points.dense_points``).
    Decoding lives in ``perception.postprocess``; losses read these raw values.
    """

    cls_logits: torch.Tensor  # [B, A, K] class logits (sigmoid, one per class)
    box_dist: torch.Tensor  # [B, A, 4] raw (l, t, r, b); pixels = softplus(raw) * stride
    seg_logits: torch.Tensor  # [B, S, H, W] S=1 lane or S=2 lane + drivable, input size
    # [B, 1, H, W] natural log of depth (metres) for the model's canonical camera (metric
    # depth for a camera-blind model), input size; see perception.ops.camera
    depth_log: torch.Tensor


class Detections(NamedTuple):
    """Decoded detections of one image after NMS, in the pixel frame the caller asked for."""

    boxes: torch.Tensor  # [N, 4] float32 xyxy pixels
    scores: torch.Tensor  # [N] float32 confidence in [0, 1]
    labels: torch.Tensor  # [N] int64 class indices


@dataclass
class Prediction:
    """What ``Predictor`` returns for one image, in the ORIGINAL image's pixels.

    The same fields come back from every backend (torch or onnxruntime), so code written
    against one runs on the other. Zero detections give ``(0, 4)`` / ``(0,)`` arrays.
    """

    boxes: np.ndarray  # (N, 4) float32 xyxy, original image pixels
    scores: np.ndarray  # (N,) float32 confidence in [0, 1], decreasing
    labels: np.ndarray  # (N,) int64 indices into class_names
    class_names: list[str]
    lane: np.ndarray  # (H, W) float32 lane probability in [0, 1]
    drivable: np.ndarray | None  # (H, W) float32 probability, None without that channel
    depth: np.ndarray  # (H, W) float32 metres, for ``camera``
    # (fx, fy, cx, cy) original pixels the depth was computed for; ``camera_default``:
    # True when none was given and the weights' default field of view was assumed
    camera: tuple[float, float, float, float] | None = None
    camera_default: bool = False
    image: np.ndarray | None = field(default=None, repr=False)  # (H, W, 3) uint8 RGB input

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def names(self) -> list[str]:
        """Class name of each detection, in ``boxes`` order."""
        return [self.class_names[int(i)] for i in self.labels]

    def plot(self, image: np.ndarray | None = None, inset: float = 0.3) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB overlay: drivable and lane tints, boxes with class and
        score, and a depth colormap inset of ``inset`` of the width, 0 for none
        (``visualize.prediction_overlay``).

        Draws on ``image`` when given (it must be the predicted image's size), else on the
        input the prediction was made from.
        """
        from perception.visualize import prediction_overlay

        base = self.image if image is None else np.asarray(image)
        if base is None:
            raise ValueError("plot: this prediction holds no image; pass image=")
        if base.shape[:2] != self.depth.shape:
            raise ValueError(f"plot: image is {base.shape[:2]}, prediction is {self.depth.shape}")
        return prediction_overlay(
            base,
            self.boxes,
            self.scores,
            self.labels,
            self.class_names,
            self.lane,
            self.drivable,
            self.depth,
            inset=inset,
        )
