"""``perception synth``: render N scenes in parallel and write a v1 dataset.

Sample ``i`` of seed ``S`` is drawn from ``SeedSequence([S, i])``, so the bytes of every
file depend only on (S, i) — not on the number of workers or on scheduling. The manifest
is written to a temporary file and renamed at the end, so an interrupted run never leaves
a manifest that points at missing files, and an existing dataset is never overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from perception.data.formats import v1
from perception.data.synthetic.render import (
    MIN_VISIBLE_PIXELS,
    Rendered,
    lane_label_rule,
    render,
)
from perception.data.synthetic.scene import CLASSES, FOCAL_RANGE, Scene, sample_scene
from perception.errors import PerceptionError
from perception.structures import TASKS, Camera


def render_sample(
    seed: int,
    index: int,
    size: tuple[int, int],
    focal_range: tuple[float, float] = FOCAL_RANGE,
) -> tuple[Scene, Rendered]:
    """The deterministic scene and rendering for sample ``index`` of ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    scene = sample_scene(rng, *size, focal_range=focal_range)
    return scene, render(scene, rng)


def _write_one(job: tuple[str, int, int, tuple[int, int], tuple[float, float], tuple]) -> str:
    root, seed, index, size, focal_range, tasks = job
    scene, out = render_sample(seed, index, size, focal_range)
    sid = f"{index:06d}"
    v1.write_image(Path(root, "images", f"{sid}.jpg"), out.image, scene.lens.jpeg_quality)
    labels = {"lane": out.lane, "drivable": out.drivable, "depth": v1.encode_depth(out.depth)}
    paths = {k: f"{k}/{sid}.png" for k in labels if k in tasks}
    for key, path in paths.items():
        v1.write_png(Path(root, path), labels[key])
    cam = scene.camera
    record = v1.Record(
        id=sid,
        image=f"images/{sid}.jpg",
        width=size[1],
        height=size[0],
        boxes=out.boxes.tolist() if "det" in tasks else None,
        labels=out.labels if "det" in tasks else None,
        camera=Camera(cam.fx, cam.fy, cam.cx, cam.cy),
        **paths,
    )
    return record.to_json()


def _init_worker() -> None:
    """Spawned (not forked: forking a process that already runs threads can deadlock)."""
    import cv2

    cv2.setNumThreads(1)  # one process per core already


def dataset_info(
    seed: int, size: tuple[int, int], focal_range: tuple[float, float] = FOCAL_RANGE
) -> v1.DatasetInfo:
    return v1.DatasetInfo(
        name=f"synthetic-seed{seed}",
        classes=list(CLASSES),
        notes={
            "generator": "perception synth (ray-cast pinhole camera over a ground plane)",
            "seed": seed,
            "size_hw": list(size),
            "focal_range": f"fx = U{tuple(focal_range)} x image width; fy = fx +- 2 %",
            "lane_label": lane_label_rule(),
            "drivable_label": "visible ego road surface (all lanes between the curbs)",
            "depth_label": "z-buffer depth along the optical axis in metres; sky = 0",
            "boxes": f"extent of visible pixels; objects with < {MIN_VISIBLE_PIXELS} visible "
            "pixels are not labelled",
        },
    )


def write_dataset(
    out: str | os.PathLike,
    num: int,
    seed: int = 0,
    size: tuple[int, int] = (384, 640),
    workers: int = 1,
    preview: str | os.PathLike | None = None,
    focal_range: tuple[float, float] = FOCAL_RANGE,
    tasks: Sequence[str] = TASKS,
) -> Path:
    """Render ``num`` samples into ``out`` (which must not hold a dataset yet).

    ``focal_range``: focal length as a multiple of the image width, drawn uniformly.
    ``tasks``: the labels to write; the others are left out of the manifest, which makes
    a partially labeled set like a real dataset's (BDD100K has no depth, KITTI no lanes).
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise PerceptionError(f"tasks must be a non-empty subset of {list(TASKS)}, got {tasks}")
    lo, hi = (float(v) for v in focal_range)
    if not 0.0 < lo <= hi:
        raise PerceptionError(f"focal range must be 0 < min <= max, got {tuple(focal_range)}")
    root = Path(out)
    if (root / v1.MANIFEST_FILE).exists():
        raise PerceptionError(
            f"{root}: already holds a dataset (manifest.jsonl); "
            "choose another --out or remove it first"
        )
    if root.exists() and not root.is_dir():
        raise PerceptionError(f"{root}: exists and is not a directory")
    for sub in ("images", "lane", "drivable", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), seed, i, tuple(size), (lo, hi), tuple(tasks)) for i in range(num)]
    bar = dict(total=num, desc="synth", unit="img", disable=None)
    if workers > 1:
        with get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            lines = list(tqdm(pool.imap(_write_one, jobs, chunksize=4), **bar))
    else:
        lines = [_write_one(job) for job in tqdm(jobs, **bar)]
    info = dataset_info(seed, size, (lo, hi))
    if tuple(tasks) != TASKS:
        info.notes["tasks"] = f"only {', '.join(tasks)} labeled (the others left out)"
    v1.write_info(root, info)
    tmp = root / (v1.MANIFEST_FILE + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, root / v1.MANIFEST_FILE)
    if preview is not None:
        from perception.data.synthetic.preview import contact_sheet

        contact_sheet(root, preview)
    return root
