"""``perception bench``: every runtime timed, scored on data, ratios and JSON written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RELEASE_SIZE, write_tiny_release

from perception.benchmark.speed import timed
from perception.cli import main
from perception.data.synthetic.writer import write_dataset
from perception.errors import PerceptionError
from perception.training.precision import cpu_has_native_bf16


def test_bench_times_every_runtime_and_scores_each(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    data = tmp_path / "data"
    write_dataset(data, num=6, seed=0, size=TINY_RELEASE_SIZE)  # the release's classes
    out = tmp_path / "bench.json"
    args = ["bench", "--weights", str(weights), "--iters", "2", "--batch", "2", "--data",
            str(data), "--train-steps", "2", "--workers", "0", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| torch eager fp32 | cpu | 1 |" in printed and "ratios:" in printed
    report = json.loads(out.read_text())
    rows = {(r["variant"], r["batch"]): r for r in report["rows"]}
    for variant in ("torch eager fp32", "onnxruntime fp32", "onnxruntime fp16", "onnxruntime int8"):
        for batch in (1, 2):
            row = rows[(variant, batch)]
            assert row["latency_ms"] > 0 and row["images_per_s"] > 0
        assert rows[(variant, 1)]["metrics"]["num_images"] == 6  # scored at batch 1
    default = "bf16 channels_last" if cpu_has_native_bf16() else "fp32 channels_last"
    trained = ["fp32", "fp32 channels_last", *(["bf16 channels_last"] * cpu_has_native_bf16())]
    for setting in trained:
        assert rows[(f"train model-only {setting}", 2)]["images_per_s"] > 0
    assert [v for v, _ in rows if v.startswith("train end-to-end")] == [
        f"train end-to-end {default}"
    ]
    assert rows[(f"train end-to-end {default}", 2)]["images_per_s"] > 0
    assert set(report["ratios"]) >= {
        "ort_fp32_vs_torch_fp32",
        "ort_int8_vs_ort_fp32",
        "train_end_to_end_vs_model_only",
        "train_fp32_channels_last_vs_fp32",
    }
    # the same weights in every runtime: fp32 accuracy must agree with eager exactly enough
    torch_m, ort_m = (
        rows[("torch eager fp32", 1)]["metrics"],
        rows[("onnxruntime fp32", 1)]["metrics"],
    )
    assert abs(torch_m["depth/abs_rel"] - ort_m["depth/abs_rel"]) < 1e-3
    assert report["image_size"] == list(TINY_RELEASE_SIZE)


def test_bench_refuses_training_without_data(tmp_path: Path) -> None:
    from perception.benchmark import run_bench

    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    with pytest.raises(PerceptionError, match="--train-steps needs --data"):
        run_bench(weights, train_steps=3, onnx=False)


def test_timed_counts_only_the_timed_calls() -> None:
    calls = []
    seconds = timed(lambda: calls.append(torch.ones(1)), warmup=2, iters=5)
    assert len(calls) == 7 and seconds.shape == (5,) and np.all(seconds >= 0)
