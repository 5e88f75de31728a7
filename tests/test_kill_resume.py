"""A training process killed at any moment (SIGKILL: no clean-up runs) leaves only
complete checkpoints, and resuming from the last one finishes the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model_section

from perception.checkpoints import load_model
from perception.data.synthetic.writer import write_dataset

SIZE = (64, 96)
STEPS = 24


def _config(tmp_path: Path, data: Path) -> Path:
    config = {
        "model": tiny_model_section(),
        "data": {
            "train": [str(data)],
            "val_fraction": 0.25,
            "image_size": list(SIZE),
            "batch_size": 4,
            "num_workers": 0,
        },
        "trainer": {
            "max_steps": STEPS,
            "val_check_interval": 2,  # a checkpoint every 2 steps: many chances to tear one
            "check_val_every_n_epoch": None,
            "accelerator": "cpu",
            "precision": "32-true",
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path / "runs"),
            "logger": False,
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "perception.cli", "train", "--config", str(config), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def test_sigkill_mid_run_then_resume_finishes_with_loadable_checkpoints(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", num=16, seed=6, size=SIZE)
    config = _config(tmp_path, data)
    ckpt_dir = tmp_path / "runs" / "checkpoints"
    run = _train(config)
    deadline = time.monotonic() + 300
    while not any(ckpt_dir.glob("best-*.ckpt")) or len(list(ckpt_dir.glob("*.ckpt"))) < 2:
        assert run.poll() is None, run.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere in the next steps, perhaps inside a checkpoint write
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL

    killed_at = _step(ckpt_dir / "last.ckpt")  # every file left is complete and loads
    for path in ckpt_dir.glob("*.ckpt"):
        _step(path)
    assert killed_at < STEPS, "the run finished before the kill; kill earlier"

    resumed = _train(config, "--ckpt_path", str(ckpt_dir / "last.ckpt"))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    assert _step(ckpt_dir / "last.ckpt") == STEPS
    best = tmp_path / "runs" / "best.ckpt"  # linked by the resumed run
    loaded = load_model(best)
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())


def test_a_release_write_that_dies_midway_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch
) -> None:
    import safetensors.torch
    from conftest import write_tiny_release

    from perception.checkpoints import load_model, save_release

    path = write_tiny_release(tmp_path / "r.safetensors")
    before = path.read_bytes()
    loaded = load_model(path)

    def dies_midway(state, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # a torn write, then the process is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_release(loaded.model, loaded.meta, path)
    assert path.read_bytes() == before
