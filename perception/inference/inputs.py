"""Turn whatever a user passes to ``Predictor`` into ``(H, W, 3)`` uint8 RGB arrays.

Accepted: a path, an ``HxWx3`` uint8 RGB ndarray (or float in ``[0, 1]``), a
``PIL.Image``, a ``CHW`` tensor (float in ``[0, 1]`` as torchvision gives, or uint8), a
``BCHW`` tensor, or a list of these. Grayscale and RGBA are converted (gray repeated,
alpha dropped), never rejected. Everything else fails here with one ``InputError``
naming the input and what is wrong, before any model runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from perception.errors import PerceptionError
from perception.structures import Camera


class InputError(PerceptionError, ValueError):
    """An input ``Predictor`` cannot use; the message names which one and why."""


def is_batch(source: Any) -> bool:
    """A list/tuple of inputs, or a 4-D ``[B, C, H, W]`` tensor."""
    return isinstance(source, list | tuple) or (
        isinstance(source, torch.Tensor) and source.ndim == 4
    )


def to_images(source: Any, min_size: int) -> list[np.ndarray]:
    """One or many inputs -> list of ``(H, W, 3)`` uint8 RGB arrays, each at least
    ``min_size`` pixels on both sides (smaller cannot reach the coarsest stride)."""
    if isinstance(source, torch.Tensor) and source.ndim == 4:
        items: Sequence[Any] = list(source)
    elif isinstance(source, list | tuple):
        items = source
    else:
        items = [source]
    if not items:
        raise InputError("no images given (an empty list)")
    out = []
    for i, item in enumerate(items):
        where = f"input {i}" if len(items) > 1 else "input"
        image = to_rgb(item, where)
        h, w = image.shape[:2]
        if min(h, w) < min_size:
            raise InputError(
                f"{where}: image is {h}x{w}, smaller than the network stride {min_size}"
            )
        out.append(image)
    return out


def to_rgb(item: Any, where: str = "input") -> np.ndarray:
    """One input -> ``(H, W, 3)`` uint8 RGB, contiguous (see the module docstring)."""
    if isinstance(item, str | os.PathLike):
        from perception.data.formats.v1 import read_image

        return read_image(item)  # raises a PerceptionError naming the file
    if _is_pil(item):
        return np.asarray(item.convert("RGB"))
    if isinstance(item, torch.Tensor):
        return _from_tensor(item, where)
    if isinstance(item, np.ndarray):
        return _from_array(item, where)
    raise InputError(
        f"{where}: unsupported type {type(item).__name__}; expected a path, an HxWx3 uint8 "
        "array, a PIL image or a CHW tensor"
    )


def _is_pil(item: Any) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image)


def _from_array(array: np.ndarray, where: str) -> np.ndarray:
    """``(H, W)`` / ``(H, W, 1|3|4)``, uint8 or float in ``[0, 1]`` -> ``(H, W, 3)`` uint8."""
    if array.size == 0:
        raise InputError(f"{where}: empty array of shape {array.shape}")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        raise InputError(
            f"{where}: array of shape {array.shape} looks channels-first; arrays are HxWxC "
            "(use array.transpose(1, 2, 0), or pass a torch tensor for CHW)"
        )
    if np.issubdtype(array.dtype, np.floating):
        array = _unit_float_to_uint8(array.astype(np.float32), where)
    elif array.dtype != np.uint8:
        raise InputError(
            f"{where}: array dtype is {array.dtype}; expected uint8 RGB (0..255) or float in [0, 1]"
        )
    return _channels_last_to_rgb(array, where)


def _unit_float_to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Float pixels in ``[0, 1]`` -> uint8; NaN/inf or values outside ``[0, 1]`` rejected."""
    if not np.isfinite(array).all():
        raise InputError(f"{where}: image holds NaN or infinite pixels")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{where}: float pixels must lie in [0, 1], got [{lo:g}, {hi:g}] "
            "(divide 0..255 values by 255, or pass uint8)"
        )
    return np.round(array * 255.0).astype(np.uint8)


def _channels_last_to_rgb(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim == 2:  # grayscale
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(
            f"{where}: image shape {array.shape} is not HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])  # RGBA -> RGB: alpha dropped


def _from_tensor(tensor: torch.Tensor, where: str) -> np.ndarray:
    """``[C, H, W]`` (or ``[H, W]``) float in ``[0, 1]`` or uint8 -> ``(H, W, 3)`` uint8."""
    t = tensor.detach().cpu()
    if t.numel() == 0:
        raise InputError(f"{where}: empty tensor of shape {tuple(t.shape)}")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise InputError(
            f"{where}: tensor of shape {tuple(t.shape)} is not CxHxW with C in 1, 3 or 4"
        )
    if t.dtype == torch.uint8:
        hwc = t.permute(1, 2, 0).numpy()
    elif t.is_floating_point():
        hwc = _unit_float_to_uint8(t.float().permute(1, 2, 0).numpy(), where)
    else:
        raise InputError(f"{where}: tensor dtype {t.dtype}; expected float in [0, 1] or uint8")
    return _channels_last_to_rgb(hwc, where)


def resolve_cameras(
    camera: Any, hfov: float | None, images: Sequence[np.ndarray], default_hfov: float
) -> list[tuple[Camera, bool]]:
    """``Predictor``'s ``camera`` / ``hfov`` arguments -> one ``(Camera, is_default)`` per
    image, in that image's own pixels.

    ``camera`` is ``(fx, fy, cx, cy)`` or a ``Camera`` for every image, or a list/tuple
    with one such entry (or ``None``) per image; ``hfov`` (degrees) gives every image the
    centred camera of that field of view. Without either, ``default_hfov`` is assumed.
    """
    if camera is not None and hfov is not None:
        raise InputError("camera: give intrinsics or hfov, not both")
    if hfov is not None:
        return [(_hfov_camera(image, hfov, "hfov"), False) for image in images]
    if camera is None or _is_single_camera(camera):
        per_image = [camera] * len(images)
    elif isinstance(camera, list | tuple) and all(_is_number(v) for v in camera):
        raise InputError(f"camera: expected 4 values (fx, fy, cx, cy), got {len(camera)}")
    elif isinstance(camera, list | tuple):
        if len(camera) != len(images):
            raise InputError(f"camera: {len(camera)} cameras for {len(images)} images")
        per_image = list(camera)
    else:
        raise InputError(f"camera: expected (fx, fy, cx, cy), a Camera or a list, got {camera!r}")
    out = []
    for i, (cam, image) in enumerate(zip(per_image, images, strict=True)):
        where = f"camera {i}" if len(images) > 1 else "camera"
        if cam is None:
            out.append((_hfov_camera(image, default_hfov, "default_hfov"), True))
        else:
            out.append((_checked_camera(cam, where), False))
    return out


def _is_single_camera(camera: Any) -> bool:
    if isinstance(camera, Camera):
        return True
    return (
        isinstance(camera, Sequence | np.ndarray)
        and len(camera) == 4
        and all(_is_number(v) for v in camera)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _hfov_camera(image: np.ndarray, hfov: Any, where: str) -> Camera:
    h, w = image.shape[:2]
    try:
        return Camera.from_hfov(w, h, float(hfov))
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected degrees in (0, 180), got {hfov!r}") from None


def _checked_camera(cam: Any, where: str) -> Camera:
    if not _is_single_camera(cam):
        raise InputError(f"{where}: expected (fx, fy, cx, cy) or a Camera, got {cam!r}")
    if not isinstance(cam, Camera):
        cam = Camera(*(float(v) for v in cam))
    values = cam.as_array()
    if not np.isfinite(values).all() or cam.fx <= 0 or cam.fy <= 0:
        raise InputError(f"{where}: fx, fy must be positive and all values finite, got {cam}")
    return cam
