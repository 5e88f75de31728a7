"""Distributed training is exact: two CPU processes (DDP over gloo) train and validate, and
the metrics they log are those of a one-process evaluation of the same weights."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_model_section

from perception.data.synthetic.writer import write_dataset
from perception.evaluation.evaluate import evaluate

SIZE = (64, 96)
VAL_IMAGES = 7  # odd: the two shards differ in size, and padding would repeat an image


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("ddp")
    train = write_dataset(tmp / "train", 8, seed=3, size=SIZE)
    val = write_dataset(tmp / "val", VAL_IMAGES, seed=4, size=SIZE)
    config = {
        "seed_everything": 0,
        "model": tiny_model_section(overlay_images=2, warmup_steps=1),
        "data": {
            "train": [str(train)],
            "val": [str(val)],
            "image_size": list(SIZE),
            # batch 1: a conv's output can differ by ~5e-7 with the batch it is computed
            # in, which may reorder near-tied detection scores; one image per batch makes
            # both sides compute each image alone, so the metrics must match exactly
            "batch_size": 1,
            "num_workers": 0,
        },
        "trainer": {
            "max_steps": 8,  # two epochs of 8 images at 2 x 1 per step; validated after each
            "accelerator": "cpu",
            "devices": 2,
            "strategy": "ddp",
            "precision": "32-true",
            "enable_progress_bar": False,
            "default_root_dir": str(tmp / "runs"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp / "runs"), "name": "csv"},
            },
        },
    }
    path = tmp / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "perception.cli", "train", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "runs", val, done.stdout + done.stderr


def _last_validation(runs: Path) -> dict[str, float]:
    (metrics,) = runs.glob("csv/version_*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/score")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def test_ddp_runs_two_processes_over_gloo(ddp_run: tuple[Path, Path, str]) -> None:
    runs, _, log = ddp_run
    assert "Starting with 2 processes" in log
    assert list(runs.rglob("overlays/step_*.jpg"))  # written by rank 0 alone
    assert (runs / "last.ckpt").exists()


def test_ddp_validation_equals_one_process_eval(ddp_run: tuple[Path, Path, str]) -> None:
    runs, val, _ = ddp_run
    logged = _last_validation(runs)
    assert logged["val/num_images"] == VAL_IMAGES  # each image once: no padded repeats
    single = evaluate(runs / "last.ckpt", val, batch_size=1, workers=0, device="cpu")
    compared = 0
    for key, value in single.items():
        if isinstance(value, float) and math.isnan(value):
            assert f"val/{key}" not in logged
            continue
        assert logged[f"val/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        compared += 1
    assert compared >= 10  # detection, lanes, drivable area and depth all scored


def _collectives(rank: int, world: int, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from perception.losses.detection import DetectionLoss
    from perception.training.module import PerceptionModule

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        decided = PerceptionModule._any_rank(rank == 1)  # only rank 1 saw a NaN
        loss = DetectionLoss()
        train_norm = float(loss._normaliser(torch.tensor(2.0 + 4.0 * rank)))  # 2 and 6
        loss.eval()
        val_norm = float(loss._normaliser(torch.tensor(2.0 + 4.0 * rank)))
        Path(out, f"rank{rank}").write_text(f"{decided} {train_norm} {val_norm}")
    finally:
        dist.destroy_process_group()


def test_one_process_nan_skips_all_and_the_loss_normaliser_is_global(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_collectives, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    # a NaN seen by rank 1 alone skips the step on both; in training both ranks divide by
    # the mean of their positives (2 and 6 -> 4), in validation each by its own
    got = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    assert got == ["True 4.0 2.0", "True 4.0 6.0"]
