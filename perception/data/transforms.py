"""Sample transforms: letterbox to the network size, then (training only) augment.

There are two geometric steps, and they mean different things for depth:

1. **Letterbox** (train, val and inference alike). Resizing by ``scale`` changes the
   *camera resolution*: the same rays land on a coarser or finer pixel grid and the scene
   does not move. So the intrinsics follow the pixels (``fx, fy`` times ``scale``;
   ``cx, cy`` times ``scale`` plus the pad) and metric depth is unchanged. Inference
   applies the identical letterbox, so train and test see the same size/depth relation.

2. **Augmentation zoom** by ``s`` (training only). The network has no way to know that an
   image was zoomed: it must read distance from apparent size as if the camera were
   unchanged. An object drawn ``s`` times bigger with the same ``fx`` is ``s`` times
   closer, so the depth target is divided by ``s`` and ``fx, fy`` stay as they are. For a
   camera-aware model this is exactly "focal times ``s``": the canonical target
   ``z / s * f_c / f`` equals ``z * f_c / (s f)`` (``perception.ops.camera``). The
   principal point is where the optical axis meets the image, so it moves with the image
   (shifted by translation, mirrored by a flip: ``cx -> W - cx``).

``s`` and the new principal point are *measured*, not recomputed from albumentations'
sampled parameters: two probe keypoints (the principal point and the point 100 px to its
right) go through the same ``Compose`` as the image; ``s`` is the ratio of their distance
and the first probe is the new principal point. That stays right whatever geometric
transforms the pipeline holds and in whatever order.

Frames: boxes and intrinsics use the pixel-edge convention (pixel ``i`` spans
``[i, i + 1)``, see ``perception.ops.boxes``); albumentations keypoints use pixel
centres (pixel ``i`` at ``x = i``), so the probes are shifted by half a pixel each way.

Masks: albumentations has one ``fill_mask`` for all masks, so an all-ones validity mask
travels with lane / drivable / depth (fill 0); afterwards the padding gets lane and
drivable 255 (ignore), depth 0 (no measurement) and ``Sample.valid`` False. Masks and depth
are resampled with NEAREST so interpolation never invents a class value or a depth.

Ignore regions (``Sample.ignore``) are boxes without a class: they go through the very
same code as the GT boxes (the letterbox map, and albumentations' bbox target with the
label ``IGNORE_LABEL``), so flips, zooms, crops, clipping and the visibility / size
filters treat both alike and an ignore region always stays where its objects are.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch

from perception.data.fog import Fog
from perception.errors import PerceptionError
from perception.ops.camera import DEFAULT_HFOV
from perception.structures import Camera, Letterbox, Sample

IMAGE_FILL = 114  # gray padding for the image (the usual letterbox value)
IGNORE = 255  # lane / drivable value that losses and metrics skip
MIN_VISIBILITY = 0.25  # drop a box when less than this fraction of it stays in view
MIN_BOX_PX = 2.0  # drop a box narrower or lower than this after augmentation
PROBE_DX = 100.0  # distance in pixels between the two zoom probes
MASK_TARGETS = ("lane", "drivable", "depth")
IGNORE_LABEL = -1  # box label that marks an ignore region inside the albumentations call


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation strengths; ``enabled=False`` (validation) skips all of it.

    Attributes:
        flip_p: probability of a horizontal flip.
        zoom_p: probability of the zoom + translate step (crops when zooming in, pads when
            zooming out).
        zoom_range: ``(min, max)`` zoom factor; values below 1 zoom out. A range around 1
            zooms in and out equally often.
        translate: largest shift as a fraction of the image width / height.
        photometric: strength of colour jitter (brightness, contrast, hue, saturation,
            gamma) relative to the defaults; 0 turns off colour jitter and sensor
            degradations (noise, blur, JPEG).
        weather_p: probability of one of fog, rain or a cast shadow.
    """

    enabled: bool = True
    flip_p: float = 0.5
    zoom_p: float = 0.7
    zoom_range: tuple[float, float] = (0.75, 1.33)
    translate: float = 0.1
    photometric: float = 1.0
    weather_p: float = 0.05

    def __post_init__(self) -> None:
        for name in ("flip_p", "zoom_p", "weather_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise PerceptionError(f"augment: {name} must be in [0, 1], got {value}")
        lo, hi = self.zoom_range
        if not 0.0 < lo <= hi:
            raise PerceptionError(
                f"augment: zoom_range must be 0 < min <= max, got {self.zoom_range}"
            )
        if not 0.0 <= self.translate < 1.0:
            raise PerceptionError(f"augment: translate must be in [0, 1), got {self.translate}")
        if self.photometric < 0:
            raise PerceptionError(f"augment: photometric must be >= 0, got {self.photometric}")


# ---------------------------------------------------------------------------- letterbox


def letterbox_params(src_h: int, src_w: int, net_h: int, net_w: int) -> Letterbox:
    """Fit a ``src_h x src_w`` image into ``net_h x net_w``, centred, aspect kept.

    ``scale = min(net_h / src_h, net_w / src_w)``; the leftover is split evenly between the
    two sides (the extra pixel of an odd split goes right / bottom). Pads are whole pixels
    and the resized size is rounded, so ``net = src * scale + pad`` holds to half a pixel.
    """
    if min(src_h, src_w, net_h, net_w) <= 0:
        raise ValueError(f"sizes must be positive, got src {src_h}x{src_w}, net {net_h}x{net_w}")
    scale = min(net_h / src_h, net_w / src_w)
    lb = Letterbox(scale=scale, pad_x=0.0, pad_y=0.0, src_h=src_h, src_w=src_w)
    new_h, new_w = _resized_size(lb, net_h, net_w)
    return Letterbox(scale, float((net_w - new_w) // 2), float((net_h - new_h) // 2), src_h, src_w)


def _resized_size(lb: Letterbox, net_h: int, net_w: int) -> tuple[int, int]:
    new_h = min(net_h, max(1, round(lb.src_h * lb.scale)))
    new_w = min(net_w, max(1, round(lb.src_w * lb.scale)))
    return new_h, new_w


def _place(
    array: np.ndarray, lb: Letterbox, net_hw: tuple[int, int], interpolation: int, fill: float
) -> np.ndarray:
    """Resize ``array`` by the letterbox scale and paste it into a ``fill``-ed canvas."""
    net_h, net_w = net_hw
    new_h, new_w = _resized_size(lb, net_h, net_w)
    if array.shape[:2] != (new_h, new_w):
        array = cv2.resize(array, (new_w, new_h), interpolation=interpolation)
    canvas = np.full((net_h, net_w, *array.shape[2:]), fill, dtype=array.dtype)
    y, x = int(lb.pad_y), int(lb.pad_x)
    canvas[y : y + new_h, x : x + new_w] = array
    return canvas


def letterbox_image(image: np.ndarray, net_h: int, net_w: int) -> tuple[np.ndarray, Letterbox]:
    """``[H, W, 3]`` uint8 source image -> ``[net_h, net_w, 3]`` canvas (bilinear, fill 114).

    The same function serves training and inference, so both see identical pixels.
    """
    lb = letterbox_params(image.shape[0], image.shape[1], net_h, net_w)
    return _place(image, lb, (net_h, net_w), cv2.INTER_LINEAR, IMAGE_FILL), lb


def _chain(first: Letterbox | None, second: Letterbox) -> Letterbox:
    """Letterbox of applying ``first`` then ``second`` (``first`` None = identity)."""
    if first is None:
        return second
    return Letterbox(
        scale=first.scale * second.scale,
        pad_x=first.pad_x * second.scale + second.pad_x,
        pad_y=first.pad_y * second.scale + second.pad_y,
        src_h=first.src_h,
        src_w=first.src_w,
    )


def letterbox_sample(sample: Sample, net_h: int, net_w: int) -> Sample:
    """Letterbox every field of ``sample`` into the ``net_h x net_w`` network frame.

    Image bilinear; masks, depth and validity NEAREST (exact pixel-centre alignment).
    Padding: lane / drivable 255, depth 0, valid False. Boxes and intrinsics are mapped
    by ``net = src * scale + pad`` (``fx, fy`` by ``scale`` only); depth values are
    unchanged (see the module docstring).
    """
    image, lb = letterbox_image(sample.image, net_h, net_w)
    size = (net_h, net_w)

    def nearest(array: np.ndarray | None, fill: float) -> np.ndarray | None:
        if array is None:
            return None
        return _place(array, lb, size, cv2.INTER_NEAREST_EXACT, fill)

    valid = sample.valid if sample.valid is not None else np.ones(sample.image.shape[:2], bool)
    cam = sample.camera.letterboxed(lb) if sample.camera is not None else None
    return sample.replace(
        image=image,
        boxes=_letterbox_boxes(sample.boxes, lb),
        ignore=_letterbox_boxes(sample.ignore, lb),
        lane=nearest(sample.lane, IGNORE),
        drivable=nearest(sample.drivable, IGNORE),
        depth=nearest(sample.depth, 0.0),
        valid=nearest(valid.astype(np.uint8), 0).astype(bool),
        camera=cam,
        letterbox=_chain(sample.letterbox, lb),
    )


def _letterbox_boxes(boxes: np.ndarray | None, lb: Letterbox) -> np.ndarray | None:
    """``[N, 4]`` xyxy source pixels -> network pixels (``net = src * scale + pad``)."""
    if boxes is None:
        return None
    pad = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float32)
    return (boxes.astype(np.float32) * np.float32(lb.scale) + pad).astype(np.float32)


# ---------------------------------------------------------------------------- augmentation


def _photometric(cfg: AugmentConfig) -> list[A.BasicTransform]:
    """Image-only colour jitter and sensor degradations, scaled by ``cfg.photometric``."""
    k = cfg.photometric
    if k == 0:
        return []
    return [
        A.RandomBrightnessContrast(brightness_limit=0.25 * k, contrast_limit=0.25 * k, p=0.8),
        A.HueSaturationValue(
            hue_shift_limit=8 * k, sat_shift_limit=25 * k, val_shift_limit=0, p=0.5
        ),
        A.RandomGamma(gamma_limit=(100 - 20 * k, 100 + 20 * k), p=0.3),
        A.GaussNoise(std_range=(0.01, 0.01 + 0.04 * k), p=0.2),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.1),
        A.ImageCompression(quality_range=(max(1, round(95 - 55 * k)), 95), p=0.25),
    ]


def _weather(cfg: AugmentConfig) -> list[A.BaseCompose]:
    if cfg.weather_p == 0:
        return []
    return [
        A.OneOf(
            [
                Fog(fog_coef_range=(0.1, 0.3), alpha_coef=0.08),  # RandomFog, drawn faster
                A.RandomRain(rain_type="drizzle", brightness_coefficient=0.85),
                A.RandomShadow(num_shadows_limit=(1, 2), shadow_intensity_range=(0.3, 0.6)),
            ],
            p=cfg.weather_p,
        )
    ]


def build_augmentation(cfg: AugmentConfig) -> A.Compose:
    """The training ``Compose``: geometry first (moves everything), then weather and
    photometric (image only). ``strict=True`` turns a misspelled argument into an error."""
    t = cfg.translate
    geometric = [
        A.HorizontalFlip(p=cfg.flip_p),
        A.Affine(
            scale=cfg.zoom_range,
            translate_percent={"x": (-t, t), "y": (-t, t)},
            keep_ratio=True,
            balanced_scale=cfg.zoom_range[0] < 1.0 < cfg.zoom_range[1],
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=IMAGE_FILL,
            fill_mask=0,
            p=cfg.zoom_p,
        ),
    ]
    return A.Compose(
        [*geometric, *_weather(cfg), *_photometric(cfg)],
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["box_labels"],
            min_visibility=MIN_VISIBILITY,
            min_width=MIN_BOX_PX,
            min_height=MIN_BOX_PX,
            clip=True,
            filter_invalid_bboxes=True,
        ),
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        additional_targets={name: "mask" for name in MASK_TARGETS},
        strict=True,
    )


def _probes(sample: Sample) -> np.ndarray:
    """``[2, 2]`` probe keypoints in pixel-centre coordinates: principal point, +100 px x."""
    cam = sample.camera
    cx, cy = (cam.cx, cam.cy) if cam is not None else (sample.width / 2, sample.height / 2)
    return np.array([[cx - 0.5, cy - 0.5], [cx - 0.5 + PROBE_DX, cy - 0.5]], np.float32)


def _augment(compose: A.Compose, sample: Sample) -> Sample:
    """Run ``compose`` on a network-size sample; see the module docstring for depth."""
    valid = sample.valid if sample.valid is not None else np.ones(sample.image.shape[:2], bool)
    boxes = sample.boxes if sample.boxes is not None else np.zeros((0, 4), np.float32)
    labels = sample.labels if sample.labels is not None else np.zeros((0,), np.int64)
    ignore = sample.ignore if sample.ignore is not None else np.zeros((0, 4), np.float32)
    ignore = ignore.reshape(-1, 4)  # [M, 4], appended to the GT boxes: one geometry for both
    boxes = np.concatenate([boxes.reshape(-1, 4), ignore]).astype(np.float32)  # [N + M, 4]
    labels = np.concatenate([labels.reshape(-1), np.full(len(ignore), IGNORE_LABEL, np.int64)])
    data = {"image": sample.image, "mask": valid.astype(np.uint8), "keypoints": _probes(sample)}
    data.update(bboxes=boxes, box_labels=labels)
    data.update({k: getattr(sample, k) for k in MASK_TARGETS if getattr(sample, k) is not None})
    out = compose(**data)

    p0, p1 = np.asarray(out["keypoints"], np.float64)[:, :2] + 0.5  # back to pixel edges
    zoom = float(np.hypot(*(p1 - p0))) / PROBE_DX
    valid = out["mask"].astype(bool)
    changes: dict = {"image": out["image"], "valid": valid}
    for name in ("lane", "drivable"):
        if name in out:
            changes[name] = np.where(valid, out[name], np.uint8(IGNORE))
    if "depth" in out:
        changes["depth"] = np.where(valid, out["depth"] / np.float32(zoom), 0).astype(np.float32)
    out_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)  # [N' + M', 4]
    out_labels = np.asarray(out["box_labels"], np.int64).reshape(-1)  # [N' + M']
    is_ignore = out_labels == IGNORE_LABEL
    if sample.boxes is not None:
        changes["boxes"] = out_boxes[~is_ignore]
        changes["labels"] = out_labels[~is_ignore]
    if sample.ignore is not None:
        changes["ignore"] = out_boxes[is_ignore]
    if sample.camera is not None:
        cam = sample.camera
        changes["camera"] = Camera(cam.fx, cam.fy, float(p0[0]), float(p0[1]))
    return sample.replace(**changes)


class SampleTransform:
    """Source-resolution ``Sample`` -> network-resolution ``Sample``.

    Letterboxes to ``image_size`` (always), then augments when ``augment.enabled``. The
    result has ``valid`` and ``letterbox`` filled; unlabeled tasks stay ``None``.

    A sample without intrinsics gets the centred camera of ``default_hfov`` degrees
    (the model's default, which inference assumes too) *before* any geometry, so the
    letterbox and zoom act on it exactly as on a calibrated camera; ``None`` leaves it
    without one (its depth then cannot be scored by a camera-aware model).

    Randomness: pass ``rng`` for reproducible draws (training does: each draw of
    ``data.order.TrainOrder`` carries its own seed); without it each process (DataLoader
    worker) seeds its own generator from ``torch.initial_seed()``, which PyTorch makes
    distinct per worker and epoch, so workers never repeat each other's augmentations.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        augment: AugmentConfig | None = None,
        default_hfov: float | None = DEFAULT_HFOV,
    ):
        net_h, net_w = (int(v) for v in image_size)
        if net_h <= 0 or net_w <= 0:
            raise PerceptionError(f"image_size must be two positive ints [H, W], got {image_size}")
        self.image_size = (net_h, net_w)
        self.augment = augment if augment is not None else AugmentConfig(enabled=False)
        self.default_hfov = default_hfov
        self._compose = build_augmentation(self.augment) if self.augment.enabled else None
        self._rng: np.random.Generator | None = None
        self._pid: int | None = None

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if sample.camera is None and self.default_hfov is not None:
            default = Camera.from_hfov(sample.width, sample.height, self.default_hfov)
            sample = sample.replace(camera=default)
        sample = letterbox_sample(sample, *self.image_size)
        if self._compose is None:
            return sample
        seed = int(self._generator(rng).integers(2**32))
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return _augment(self._compose, sample)

    def _generator(self, rng: np.random.Generator | None) -> np.random.Generator:
        if rng is not None:
            return rng
        if self._rng is None or self._pid != os.getpid():  # first call in this process
            self._rng = np.random.default_rng(torch.initial_seed())
            self._pid = os.getpid()
        return self._rng
