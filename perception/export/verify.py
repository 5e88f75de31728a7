"""Verification of an exported graph: onnxruntime against the eager model it came from.

Why: an export that loads is not an export that is right. Every output is compared with
the eager ``ExportWrapper`` rebuilt from the file's own metadata, on inputs unlike the
export's (another seed, another batch / size when the axes are dynamic, two different
lenses for a camera-aware model), so a graph that only works for its trace input fails.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from perception.errors import PerceptionError
from perception.export.nms import NMSConfig
from perception.export.onnx import (
    ExportWrapper,
    cpu_session,
    example_camera,
    example_images,
    graph_feed,
    read_metadata,
)
from perception.models import MultiTaskModel


def _wrapper_from_metadata(model: MultiTaskModel, meta: dict[str, Any]) -> ExportWrapper:
    """The eager twin of an exported graph, rebuilt from its metadata."""
    nms = NMSConfig(**meta["nms"]) if meta.get("nms") else None
    size = tuple(meta["image_size"]) if "image_size" in meta else None
    return ExportWrapper(model, nms, size).eval()


def _diff(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """``(max_abs, max_rel)``; rel is ``|d| / max(|ref|, 1e-6)`` (bounded near zero)."""
    if got.size == 0:
        return 0.0, 0.0
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    d = np.abs(got - ref)
    return float(d.max()), float((d / np.maximum(np.abs(ref), 1e-6)).max())


def _check_output(name: str, got: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> None:
    if got.shape != ref.shape:
        raise PerceptionError(f"verify: output '{name}' has shape {got.shape}, eager {ref.shape}")
    if not np.allclose(got, ref, rtol=rtol, atol=atol):
        max_abs, max_rel = _diff(got, ref)
        raise PerceptionError(
            f"verify: output '{name}' differs from PyTorch beyond rtol={rtol:g} atol={atol:g} "
            f"(max abs {max_abs:.3g}, max rel {max_rel:.3g})"
        )


def verify_onnx(
    onnx_path: str | os.PathLike,
    model: MultiTaskModel,
    images: Tensor | Sequence[Tensor] | None = None,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    full_check: bool = True,
) -> dict[str, tuple[float, float]]:
    """Compare onnxruntime (CPU) with eager PyTorch; raise ``PerceptionError`` on a mismatch.

    Args:
        onnx_path: an ``export_onnx`` file (its metadata says how it was exported).
        model: the eager model it came from.
        images: ``[B, 3, H, W]`` tensor(s) in ``[0, 1]``; default ``verification_images``
            (a different seed from the export input, a second batch/size when dynamic).
        rtol, atol: ``np.allclose`` tolerances, checked on every output.
        full_check: also run ``onnx.checker.check_model(full_check=True)``.

    Returns:
        ``{output name: (max_abs, max_rel)}``, the worst over all ``images``.
    """
    import onnx

    if full_check:
        try:
            onnx.checker.check_model(str(onnx_path), full_check=True)
        except onnx.checker.ValidationError as err:
            raise PerceptionError(
                f"{onnx_path}: invalid ONNX ({str(err).splitlines()[0]})"
            ) from None
    meta = read_metadata(onnx_path)
    batches = [images] if isinstance(images, Tensor) else list(images or verification_images(meta))
    wrapper = _wrapper_from_metadata(copy.deepcopy(model).float().eval().cpu(), meta)
    session = cpu_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    worst: dict[str, tuple[float, float]] = {}
    for batch in batches:
        _check_input(session, batch, onnx_path)
        for camera in verification_cameras(batch) if wrapper.camera_aware else [None]:
            feed = graph_feed(session, batch.float().numpy(), _numpy(camera))
            got = session.run(names, feed)
            with torch.no_grad():
                ref = [t.numpy() for t in wrapper(batch.float(), camera)]
            for name, g, r in zip(names, got, ref, strict=True):
                _check_output(name, g, r, rtol, atol)
                (max_abs, max_rel), (old_abs, old_rel) = _diff(g, r), worst.get(name, (0, 0))
                worst[name] = (max(max_abs, old_abs), max(max_rel, old_rel))
    return worst


def verification_cameras(images: Tensor) -> list[Tensor]:
    """Two different cameras for ``images`` ``[B, 3, H, W]``: a wide (focal 0.6 W) and a
    long (focal 1.4 W, outside the synthetic training range) lens, off-centre."""
    size = tuple(images.shape[-2:])
    wide = example_camera(size, len(images), 0.6)
    long = example_camera(size, len(images), 1.4) + torch.tensor([0.0, 0.0, 7.0, -5.0])
    return [wide, long]


def _numpy(tensor: Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.numpy()


def _check_input(session: Any, images: Tensor, onnx_path: str | os.PathLike) -> None:
    """One clear line instead of onnxruntime's error when ``images`` cannot feed the graph."""
    expected = session.get_inputs()[0].shape  # ints for fixed axes, names for dynamic ones
    fixed = all(
        not isinstance(e, int) or e == g for e, g in zip(expected, images.shape, strict=False)
    )
    if images.ndim != len(expected) or not fixed:
        raise PerceptionError(
            f"{onnx_path}: input of shape {tuple(images.shape)} does not fit {expected}"
        )


def verification_images(meta: dict[str, Any]) -> list[Tensor]:
    """Inputs unlike the export's (seed 1), plus batch 3 / a second size when dynamic."""
    h, w = meta["image_size"]
    out = [example_images((h, w), 1, seed=1)]
    if meta.get("dynamic_batch"):
        out.append(example_images((h, w), 3, seed=2))
    if meta.get("dynamic_hw"):
        out.append(example_images((h + 32, w - 32 if w > 32 else w + 32), 1, seed=3))
    return out


def format_differences(diffs: dict[str, tuple[float, float]]) -> str:
    """One line per output, for the CLI."""
    return "\n".join(f"{n:12s} max_abs={a:.3e} max_rel={r:.3e}" for n, (a, r) in diffs.items())
