"""Appearance: light, textures and camera effects, so flat colours never solve the task.

Colours are linear RGB in [0, 1] until ``develop`` applies exposure, vignetting, gamma
(2.0: a square root, close to sRGB and cheap), blur and sensor noise; fog is blended by
depth before that. Textures are looked up in world
coordinates (asphalt grain stays on the road as it recedes) from noise tiles built once
per process with a fixed seed, so rendering stays deterministic and fast.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from perception.data.synthetic.scene import Lens, Lighting

TILE = 512


@lru_cache(maxsize=1)
def texture_tile() -> np.ndarray:
    """``[TILE, TILE]`` float32 multi-octave smooth noise in about [-1, 1]."""
    rng = np.random.default_rng(20240611)
    out = np.zeros((TILE, TILE), np.float32)
    for cells, weight in ((8, 0.45), (32, 0.3), (128, 0.15), (TILE, 0.1)):
        small = rng.standard_normal((cells, cells)).astype(np.float32)
        out += weight * cv2.resize(small, (TILE, TILE), interpolation=cv2.INTER_CUBIC)
    return out / np.abs(out).max()


@lru_cache(maxsize=2)
def sensor_noise(height: int, width: int) -> np.ndarray:
    """``[3, H + 64, W + 64]`` float32 unit Gaussian noise; images take random crops."""
    rng = np.random.default_rng(7)
    return rng.standard_normal((3, height + 64, width + 64), dtype=np.float32)


def texture(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Tiled noise at world coordinates (u, v) metres, ``scale`` texels per metre."""
    iu = (u * scale).astype(np.int32) & (TILE - 1)  # two's complement: a cheap modulo
    iv = (v * scale).astype(np.int32) & (TILE - 1)
    return np.take(texture_tile().reshape(-1), iv * TILE + iu)


def frac(x: np.ndarray) -> np.ndarray:
    """Fractional part, ``x - floor(x)`` (20x faster than ``np.mod`` on float arrays)."""
    return x - np.floor(x)


def lit(albedo: np.ndarray, lambert: np.ndarray | float, light: Lighting) -> np.ndarray:
    """Diffuse shading of planar ``[3, M]`` (or ``[3, 1]``) albedo -> ``[3, M]``.

    ``albedo * (ambient + sun * max(0, n . sun_dir))``; ``lambert`` is ``[M]`` or a scalar.
    """
    lam = np.maximum(np.asarray(lambert, np.float32), np.float32(0.0))
    ambient = np.asarray(light.ambient, np.float32).reshape(3, 1)
    sun = np.asarray(light.sun_color, np.float32).reshape(3, 1)
    return albedo.astype(np.float32, copy=False) * (ambient + sun * lam)


def sky(rays: np.ndarray, light: Lighting, step: int = 4) -> np.ndarray:
    """``[3, H, W]`` sky: horizon-to-zenith gradient, sun glow and soft clouds.

    The sky is smooth, so it is shaded on every ``step``-th ray and upsampled.
    """
    h, w = rays.shape[1:]
    low = _sky(rays[:, ::step, ::step], light)  # [h, w, 3]
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)


def _sky(rays: np.ndarray, light: Lighting) -> np.ndarray:
    dx, dy, dz = rays
    norm = np.sqrt(dx * dx + dy * dy + dz * dz)
    elevation = np.clip(-dy / norm, 0.0, 1.0)[..., None]  # [H, W, 1]
    horizon = np.asarray(light.sky_horizon, np.float32)
    zenith = np.asarray(light.sky_zenith, np.float32)
    color = horizon + (zenith - horizon) * np.sqrt(np.clip(elevation * 2.5, 0, 1))
    cos_sun = (dx * light.sun[0] + dy * light.sun[1] + dz * light.sun[2]) / norm
    color = color + np.asarray(light.sun_color) * (np.clip(cos_sun, 0, 1) ** 64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cu, cv = dx / np.maximum(-dy, 0.02), dz / np.maximum(-dy, 0.02)
    cloud = np.clip(texture(cu * 40, cv * 40, 1.0) * 1.5, 0, 1)[..., None] * (elevation > 0)
    return (color * (1 - 0.6 * cloud) + 0.6 * cloud * horizon.max()).astype(np.float32)


def fog(color: np.ndarray, depth: np.ndarray, light: Lighting) -> np.ndarray:
    """Beer-Lambert haze on planar ``[3, H, W]``: ``c * T + fog * (1 - T)``,
    ``T = exp(-density * depth)``."""
    if light.fog_density <= 0:
        return color
    trans = np.exp(-light.fog_density * np.minimum(depth, 1e4))
    fog_rgb = np.asarray(light.fog_color, np.float32)
    return np.stack([color[c] * trans + fog_rgb[c] * (1 - trans) for c in range(3)])


def develop(color: np.ndarray, light: Lighting, lens: Lens, rng: np.random.Generator) -> np.ndarray:
    """Planar linear ``[3, H, W]`` radiance -> ``[H, W, 3]`` uint8 image through a camera."""
    h, w = color.shape[1:]
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    gain = light.exposure * (1.0 - lens.vignette * 0.5 * (xx * xx + yy * yy))  # [H, W]
    img = np.sqrt(np.minimum(color * gain, 1.0)) * np.float32(255)  # gamma-2 encoding
    if lens.blur_sigma > 0:
        img = np.stack([cv2.GaussianBlur(plane, (0, 0), lens.blur_sigma) for plane in img])
    oy, ox = rng.integers(0, 64, 2)
    img += np.float32(lens.noise_std) * sensor_noise(h, w)[:, oy : oy + h, ox : ox + w]
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return cv2.merge(list(img))  # [3, H, W] -> [H, W, 3]
