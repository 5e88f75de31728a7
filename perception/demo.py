"""``perception demo``: the released model on freshly rendered scenes, in under 2 minutes.

What it shows a newcomer, with no data and no GPU: the three tasks from one network on
scenes it never saw (rendered with the held-out seed 7), how good they are (the SPEC
metrics against the renderer's exact labels), and what they look like (ground truth
beside prediction). ``--source`` adds predictions on the user's own images or video.

Output folder (default ``runs/demo``): ``scenes/`` (the rendered v1 dataset),
``overlays/`` (one prediction overlay per scene), ``demo.jpg`` (rows of ground truth |
prediction | true depth | predicted depth, with titled columns and the depth colour
scale), ``metrics.json`` and ``summary.json``. A folder holding a previous demo is
replaced; any other non-empty folder is refused, so no one's data is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from perception.errors import PerceptionError

DEMO_MARKER = "summary.json"
DEMO_PARTS = ("scenes", "overlays", "source", "demo.jpg", "metrics.json", DEMO_MARKER)
HELD_OUT_SEED = 7  # the evaluation seed of docs/results.md; training data uses others


@dataclass
class DemoSummary:
    weights: str
    scenes: int
    metrics: dict[str, float | None]
    seconds: float
    out: str
    source_images: int = 0


def find_weights(weights: str | os.PathLike | None = None) -> Path:
    """``weights`` if given, else the one ``.safetensors`` release in ``weights/`` (the
    current folder's, then the repository's next to an editable install)."""
    if weights is not None:
        return Path(weights)
    folders = [Path.cwd() / "weights", Path(__file__).resolve().parent.parent / "weights"]
    for folder in folders:
        found = sorted(folder.glob("*.safetensors"))
        if found:
            return found[0]
    raise PerceptionError(
        f"no released weights (*.safetensors) in {' or '.join(map(str, folders))}; "
        "pass --weights FILE"
    )


def _prepare(out: Path) -> None:
    """Make ``out`` ready: empty/new, or a previous demo's folder whose parts we remove."""
    if out.exists() and not out.is_dir():
        raise PerceptionError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / DEMO_MARKER).is_file():
            raise PerceptionError(f"{out}: not empty and not a previous demo; choose another --out")
        for name in DEMO_PARTS:
            part = out / name
            if part.is_dir():
                shutil.rmtree(part)
            elif part.exists():
                part.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _ground_truth(root: Path, record, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The renderer's labels drawn exactly as a prediction would be (depth apart), and its
    depth map in metres."""
    from perception.data.formats import v1
    from perception.visualize import prediction_overlay

    image = v1.read_image(v1.resolve(root, record.image))
    boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
    labels = np.array([class_names.index(n) for n in record.labels], np.int64)
    lane = (v1.read_mask(v1.resolve(root, record.lane)) == 1).astype(np.float32)
    drivable = (v1.read_mask(v1.resolve(root, record.drivable)) == 1).astype(np.float32)
    depth = v1.read_depth(v1.resolve(root, record.depth))
    scores = np.ones(len(boxes), np.float32)
    overlay = prediction_overlay(
        image, boxes, scores, labels, class_names, lane, drivable, depth, inset=0
    )
    return overlay, depth


SHEET_TITLES = ("ground truth", "prediction", "true depth", "predicted depth", "")


def _sheet_row(truth: np.ndarray, truth_depth: np.ndarray, pred) -> list[np.ndarray]:
    """One scene of the demo sheet, panel by panel (``SHEET_TITLES``), ending with the
    depth colour scale. Depth gets its own panels so it hides no detection."""
    from perception.visualize import colorize_depth, depth_scale

    depths = [colorize_depth(truth_depth), colorize_depth(pred.depth)]
    return [truth, pred.plot(inset=0), *depths, depth_scale(truth.shape[0])]


def run_demo(
    out: str | os.PathLike = "runs/demo",
    weights: str | os.PathLike | None = None,
    num: int = 24,
    size: tuple[int, int] = (384, 640),
    source: str | os.PathLike | None = None,
    workers: int = 2,
    sheet_rows: int = 4,
    camera: tuple[float, float, float, float] | None = None,
    hfov: float | None = None,
) -> DemoSummary:
    """Render ``num`` held-out scenes, predict, score and draw them (module docstring).

    Each scene is predicted with the camera it was rendered with (metric depth needs it);
    ``camera`` / ``hfov`` describe the ``source`` images (default: the weights').
    """
    from perception.data.formats import v1
    from perception.data.synthetic.writer import write_dataset
    from perception.evaluation.evaluate import evaluate, write_json
    from perception.inference import Predictor
    from perception.inference.sources import predict_source
    from perception.visualize import titled

    start = time.perf_counter()
    weights, out = find_weights(weights), Path(out)
    predictor = Predictor(weights)  # fails early, before anything is written
    _prepare(out)
    scenes = write_dataset(out / "scenes", num=num, seed=HELD_OUT_SEED, size=size, workers=workers)
    records = v1.read_manifest(scenes)
    (out / "overlays").mkdir()
    rows = []
    for i, record in enumerate(records):
        pred = predictor(v1.resolve(scenes, record.image), camera=record.camera)
        overlay = pred.plot()
        cv2.imwrite(str(out / "overlays" / f"{record.id}.jpg"), overlay[..., ::-1])
        if i < sheet_rows:
            rows.append(_sheet_row(*_ground_truth(scenes, record, predictor.class_names), pred))
    columns = [np.vstack(panels) for panels in zip(*rows, strict=True)]
    sheet = titled(columns, SHEET_TITLES)
    cv2.imwrite(str(out / "demo.jpg"), sheet[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    # A second forward pass (~1 s): the metrics come from `perception eval`'s own code at
    # network resolution, so the demo's numbers mean exactly what eval's mean.
    metrics = evaluate(weights, scenes, batch_size=8, workers=0, device="cpu")
    write_json(metrics, out / "metrics.json")
    clean = {k: (None if v != v else v) for k, v in metrics.items()}  # NaN -> null
    summary = DemoSummary(str(weights), len(records), clean, 0.0, str(out))
    if source is not None:
        summary.source_images = predict_source(
            predictor, source, out / "source", camera=camera, hfov=hfov
        ).images
    summary.seconds = round(time.perf_counter() - start, 1)
    (out / DEMO_MARKER).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary
