"""``perception predict``: run a ``Predictor`` over an image, a folder or a video.

Images (and each image of a folder) get an overlay JPEG in ``out`` with the same stem,
plus, with ``save_raw``, an ``.npz`` of the ``Prediction`` arrays. A video becomes an
``.mp4`` of overlays at its own frame rate. Nothing is overwritten silently: an existing
output file is an error unless ``overwrite``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from perception.errors import PerceptionError
from perception.inference.predictor import Predictor
from perception.structures import Prediction

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm"}


@dataclass
class PredictSummary:
    """What a ``predict_source`` run produced."""

    images: int  # images or video frames predicted
    detections: int  # boxes over all of them
    outputs: list[Path]  # files written


def image_files(source: Path) -> list[Path]:
    """A single image, or every image directly inside a folder (sorted)."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PerceptionError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    if source.suffix.lower() not in IMAGE_SUFFIXES:
        raise PerceptionError(f"{source}: not an image or video file (unknown suffix)")
    return [source]


def save_prediction(pred: Prediction, path: Path) -> None:
    """The ``Prediction`` arrays as one compressed ``.npz`` (no ``drivable`` when absent)."""
    arrays = {
        "boxes": pred.boxes,
        "scores": pred.scores,
        "labels": pred.labels,
        "class_names": np.array(pred.class_names),
        "lane": pred.lane.astype(np.float16),
        "depth": pred.depth,
    }
    if pred.camera is not None:
        arrays["camera"] = np.array(pred.camera, np.float32)  # (fx, fy, cx, cy) pixels
    if pred.drivable is not None:
        arrays["drivable"] = pred.drivable.astype(np.float16)
    np.savez_compressed(path, **arrays)


def _target(path: Path, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise PerceptionError(f"{path}: already exists (pass --overwrite to replace it)")
    return path


def _write_rgb(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise PerceptionError(f"{path}: could not write the overlay")


def predict_source(
    predictor: Predictor,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    save_raw: bool = False,
    overwrite: bool = False,
    camera: tuple[float, float, float, float] | None = None,
    hfov: float | None = None,
) -> PredictSummary:
    """Predict ``source`` (image, folder or video) and write overlays under ``out``.

    ``camera`` (``(fx, fy, cx, cy)`` source pixels) or ``hfov`` (degrees) is the camera of
    every image; neither: the weights' default field of view (``Predictor.__call__``).
    """
    lens = {"camera": camera, "hfov": hfov}
    source, out = Path(source), Path(out)
    if not source.exists():
        raise PerceptionError(f"{source}: no such file or folder")
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        out.mkdir(parents=True, exist_ok=True)
        return _predict_video(predictor, source, out, overwrite, lens)
    files = image_files(source)
    targets = [_target(out / f"{f.stem}.jpg", overwrite) for f in files]  # check all first
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(0, 0, [])
    for file, target in tqdm(
        list(zip(files, targets, strict=True)), desc="predict", unit="img", disable=None
    ):
        pred = predictor(file, **lens)
        _write_rgb(target, pred.plot())
        summary.outputs.append(target)
        if save_raw:
            save_prediction(pred, target.with_suffix(".npz"))
            summary.outputs.append(target.with_suffix(".npz"))
        summary.images += 1
        summary.detections += len(pred)
    return summary


def video_frames(path: Path) -> tuple[Iterator[np.ndarray], float, int]:
    """RGB frames of a video, its frame rate and (approximate) frame count."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise PerceptionError(f"{path}: unreadable video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    return frames(), fps, count


def _predict_video(
    predictor: Predictor, source: Path, out: Path, overwrite: bool, lens: dict
) -> PredictSummary:
    target = _target(out / f"{source.stem}.mp4", overwrite)
    frames, fps, count = video_frames(source)
    writer: cv2.VideoWriter | None = None
    summary = PredictSummary(0, 0, [target])
    try:
        for frame in tqdm(frames, desc="predict", unit="frame", total=count or None, disable=None):
            pred = predictor(frame, **lens)
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(cv2.cvtColor(pred.plot(), cv2.COLOR_RGB2BGR))
            summary.images += 1
            summary.detections += len(pred)
    finally:
        if writer is not None:
            writer.release()
    if summary.images == 0:
        raise PerceptionError(f"{source}: the video has no readable frames")
    return summary
