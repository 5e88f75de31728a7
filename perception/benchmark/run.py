"""``perception bench``: one table of speed (and accuracy) per runtime, plus JSON.

Rows, all at the weights' input size unless ``size`` is given:

- ``torch eager fp32`` (and fp16/bf16 on GPU) at batch 1 (latency) and ``batch``
  (throughput), BatchNorm folded and channels-last as the ``Predictor`` runs it;
- with ``peer``, another network timed the same way, as its factory builds it;
- ``predictor torch fp32`` and ``predictor onnxruntime fp32``: the whole ``Predictor``
  call on one ``frame``-sized image (letterbox, network, decoding, maps back to the
  frame), against the model-only rows: what pre- and post-processing cost;
- ``onnxruntime fp32``, ``fp16`` and ``int8 <format>:<ops>`` (static INT8 calibrated on
  ``calib``, one row per ``int8`` setting, ``export.quantize``) exports of the same
  weights, CPU only;
- with ``train_steps``: training throughput model-only in fp32, fp32 channels_last and
  (on a GPU or a CPU with native bf16) bf16 channels_last, and end-to-end for the setting
  ``perception train`` picks by default, on ``data``.

With ``data``, each inference runtime is also scored on the first ``eval_images`` of that
dataset (``perception eval``'s metrics), so a speed-up is never read without its cost;
``ratios`` compares the runtimes as BENCHMARKS.md asks (ORT fp32 vs torch, INT8 vs ORT).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from perception.benchmark.cost import gflops, param_count
from perception.benchmark.machine import describe_machine
from perception.benchmark.peer import build_peer, check_runs
from perception.benchmark.speed import (
    Row,
    onnx_inference,
    predictor_inference,
    torch_inference,
    training_throughput,
)
from perception.checkpoints import load_model
from perception.errors import PerceptionError
from perception.export.quantize import DEFAULT_INT8, int8_settings
from perception.models.fold import fold_batchnorm
from perception.training.precision import cpu_has_native_bf16

ACCURACY_KEYS = ("det/mAP50", "det/mAP50_95", "lane/iou", "drivable/miou", "depth/abs_rel")


def run_bench(
    weights: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    device: str | None = None,
    batch: int = 8,
    iters: int = 20,
    onnx: bool = True,
    calib: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    eval_images: int = 200,
    train_steps: int = 0,
    threads: int | None = None,
    workers: int = 2,
    peer: str | None = None,
    int8: Sequence[str] = (DEFAULT_INT8,),
    frame: tuple[int, int] | None = (720, 1280),
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the JSON-ready report. ``peer``:
    ``module:function`` building another network, timed beside ours (``benchmark.peer``);
    ``int8``: ``format:ops`` settings to quantize and time (``export.quantize``);
    ``frame``: the camera frame ``(H, W)`` of the end-to-end ``Predictor`` rows (None: none)."""
    settings = int8_settings(int8)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(weights, "cpu")
    size = tuple(size or loaded.meta.image_size)
    loaded.model.check_image_size(size)
    if train_steps and data is None:
        raise PerceptionError("bench: --train-steps needs --data (a v1 training dataset)")
    folded, _ = fold_batchnorm(loaded.model, size)  # as the Predictor runs it
    rows = _torch_rows(folded, size, batch, dev, iters)
    costs = {"ours": _cost(loaded.model, size)}
    if peer is not None:
        name, net = build_peer(peer)
        check_runs(peer, net, size)
        costs[f"peer {name}"] = _cost(net, size)
        rows += _torch_rows(net, size, batch, dev, iters, prefix=f"peer {name} ")
    if frame is not None:
        rows += _predictor_rows(weights, size, frame, dev, onnx, threads, iters)
    if data is not None:
        _score(rows[0], weights, data, eval_images, str(dev))
    if onnx:
        with tempfile.TemporaryDirectory(prefix="perception-bench-") as tmp:
            calib = calib or data
            onnx_rows, files = _onnx_rows(loaded, Path(tmp), size, batch, iters, calib, threads,
                                          settings)  # fmt: skip
            rows += onnx_rows
            if data is not None:
                for row in onnx_rows:
                    if row.batch == 1:
                        _score(row, files[row.variant], data, eval_images, "cpu")
    if train_steps:
        rows += _train_rows(loaded, data, size, batch, dev, train_steps, workers)
    return {
        "weights": str(weights),
        "image_size": list(size),
        "machine": describe_machine(dev, threads),
        "cost": costs,
        "rows": [asdict(r) for r in rows],
        "ratios": _ratios(rows),
    }


def _torch_rows(
    model: torch.nn.Module, size, batch: int, dev: torch.device, iters: int, prefix: str = ""
) -> list[Row]:
    """Eager rows at batch 1 and ``batch`` (and fp16/bf16 on a GPU), each timed on its own
    copy of ``model`` (rows cast and move it)."""
    rows = []
    for precision in ("fp32", "fp16", "bf16") if dev.type == "cuda" else ("fp32",):
        for b in sorted({1, batch}):
            row = torch_inference(copy.deepcopy(model), size, b, dev, precision, iters=iters)
            row.variant = prefix + row.variant
            rows.append(row)
    return rows


def _predictor_rows(weights, size, frame, dev, onnx: bool, threads, iters) -> list[Row]:
    """End-to-end ``Predictor`` rows, torch then (on the CPU) onnxruntime, each alone."""
    from perception.inference import Predictor

    torch_predictor = Predictor(weights, str(dev), image_size=size)
    variant = "predictor torch fp32"
    rows = [predictor_inference(torch_predictor, frame, variant, dev.type, iters=iters)]
    if onnx:
        ort_predictor = Predictor(weights, backend="onnx", image_size=size, threads=threads)
        variant = "predictor onnxruntime fp32"
        rows.append(predictor_inference(ort_predictor, frame, variant, iters=iters))
    return rows


def _cost(model: torch.nn.Module, size: tuple[int, int]) -> dict[str, float]:
    """Parameters and GFLOPs per image of a CPU copy of ``model``."""
    net = copy.deepcopy(model).float().cpu()
    return {"params": param_count(net), "gflops": gflops(net, size)}


def _onnx_rows(
    loaded, tmp: Path, size, batch, iters, calib, threads, int8: list[tuple[str, str]]
) -> tuple[list[Row], dict[str, Path]]:
    """The onnxruntime rows, and each row variant's ``.onnx`` file (to score it)."""
    from perception.export import export_onnx, quantize_int8

    fp32 = export_onnx(loaded, tmp / "fp32.onnx", dynamic_batch=True, image_size=size)
    fp16 = export_onnx(loaded, tmp / "fp16.onnx", dynamic_batch=True, image_size=size, fp16=True)
    files = {"onnxruntime fp32": fp32, "onnxruntime fp16": fp16}
    for fmt, ops in int8 if calib is not None else []:
        out = tmp / f"int8-{fmt}-{ops}.onnx"
        quantized = quantize_int8(fp32, out, calib, num_images=64, fmt=fmt, ops=ops)
        files[f"onnxruntime int8 {fmt}:{ops}"] = quantized
    rows = []
    for variant, path in files.items():
        for b in sorted({1, batch}):
            rows.append(onnx_inference(path, size, b, variant, threads, iters=iters))
    return rows, files


def _score(row: Row, weights, data, limit: int, device: str) -> None:
    from perception.evaluation.evaluate import evaluate

    metrics = evaluate(weights, data, batch_size=8, workers=0, device=device, limit=limit)
    row.metrics = {k: round(metrics[k], 4) for k in (*ACCURACY_KEYS, "num_images")}


def _train_rows(loaded, data, size, batch, dev, steps, workers) -> list[Row]:
    from perception.data.datamodule import PerceptionDataModule

    dm = PerceptionDataModule(
        [str(data)],
        loaded.meta.class_names,
        image_size=size,
        batch_size=batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=dev.type == "cuda",
    )
    dm.setup("fit")
    rows = []
    for precision, channels_last, end_to_end in training_settings(dev):
        model = copy.deepcopy(loaded.model)  # trained further in place; release untouched
        rows += training_throughput(
            model,
            dm.train_dataloader(),
            dev,
            steps,
            precision=precision,
            channels_last=channels_last,
            end_to_end=end_to_end,
        )
    return rows


def training_settings(dev: torch.device) -> list[tuple[str, bool, bool]]:
    """``(precision, channels_last, end_to_end)`` rows to time: the layouts and precisions
    a user can choose, end-to-end for the one ``perception train`` picks by default."""
    if dev.type == "cuda":
        return [("fp32", True, False), ("bf16", True, True)]
    bf16 = cpu_has_native_bf16()
    settings = [("fp32", False, False), ("fp32", True, not bf16)]
    return [*settings, ("bf16", True, True)] if bf16 else settings


def _ratios(rows: list[Row]) -> dict[str, float]:
    """BENCHMARKS.md's CPU ratios at batch 1 (and the training data-pipeline ratio)."""
    by = {(r.variant, r.batch): r for r in rows}
    out = {}
    pairs = {
        "ort_fp32_vs_torch_fp32": ("onnxruntime fp32", "torch eager fp32"),
        "ort_fp16_vs_ort_fp32": ("onnxruntime fp16", "onnxruntime fp32"),
    }
    for key, (fast, base) in pairs.items():
        if (fast, 1) in by and (base, 1) in by:
            out[key] = round(by[(base, 1)].latency_ms / by[(fast, 1)].latency_ms, 2)
    int8 = [r for r in rows if r.variant.startswith("onnxruntime int8") and r.batch == 1]
    if int8 and ("onnxruntime fp32", 1) in by:  # each setting, and the fastest one
        base = by[("onnxruntime fp32", 1)].latency_ms
        for r in int8:
            key = "ort_int8_" + r.variant.split()[-1].replace(":", "_") + "_vs_ort_fp32"
            out[key] = round(base / r.latency_ms, 2)
        out["ort_int8_vs_ort_fp32"] = round(base / min(r.latency_ms for r in int8), 2)
    slow_vs_fast = {  # latency of the first over the second: how much slower
        "predictor_torch_vs_model_only": ("predictor torch fp32", "torch eager fp32"),
        "predictor_ort_vs_model_only": ("predictor onnxruntime fp32", "onnxruntime fp32"),
        "predictor_torch_vs_predictor_ort": ("predictor torch fp32", "predictor onnxruntime fp32"),
    }
    for key, (slow, fast) in slow_vs_fast.items():
        if (slow, 1) in by and (fast, 1) in by:
            out[key] = round(by[(slow, 1)].latency_ms / by[(fast, 1)].latency_ms, 2)
    skip = ("peer ", "train ", "predictor ")
    ours = [r for r in rows if r.batch == 1 and not r.variant.startswith(skip)]
    for peer in (r for r in rows if r.variant.startswith("peer ") and r.batch == 1):
        name = peer.variant.split()[1]
        same = by.get((peer.variant.split(" ", 2)[2], 1))  # ours in the peer's runtime
        if same is not None:
            out[f"peer_{name}_vs_ours_same_runtime"] = round(peer.latency_ms / same.latency_ms, 2)
        fastest = min(ours, key=lambda r: r.latency_ms, default=None)
        if fastest is not None:
            out[f"peer_{name}_vs_our_fastest"] = round(peer.latency_ms / fastest.latency_ms, 2)
    train = {r.variant.removeprefix("train "): r.images_per_s for r in rows if "train" in r.variant}
    for name, speed in train.items():  # end-to-end vs model-only of the same setting
        only = train.get(name.replace("end-to-end", "model-only"))
        if name.startswith("end-to-end") and only:
            out["train_end_to_end_vs_model_only"] = round(speed / only, 2)
    for fast in ("fp32 channels_last", "bf16 channels_last"):
        if f"model-only {fast}" in train and "model-only fp32" in train:
            key = f"train_{fast.replace(' ', '_')}_vs_fp32"
            out[key] = round(train[f"model-only {fast}"] / train["model-only fp32"], 2)
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table (pasteable into docs/deploy.md)."""
    keys = [k for k in ACCURACY_KEYS if any(k in r["metrics"] for r in report["rows"])]
    head = ["variant", "device", "batch", "latency ms (median)", "p90 ms", "img/s", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        acc = [f"{r['metrics'][k]:.3f}" if k in r["metrics"] else "" for k in keys]
        speed = [f"{r['latency_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['images_per_s']:.1f}"]
        cells = [r["variant"], r["device"], str(r["batch"]), *speed, *acc]
        lines.append("| " + " | ".join(cells) + " |")
    costs = "; ".join(
        f"{name} {c['params'] / 1e6:.2f} M params, {c['gflops']:.2f} GFLOPs"
        for name, c in report.get("cost", {}).items()
    )
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in report["ratios"].items())
    machine = report["machine"]
    lines.insert(
        0,
        f"machine: {machine['device']}, {machine['cpu_count']} logical CPUs"
        f"{', ' + ' '.join(machine['isa']) if machine.get('isa') else ''}\n",
    )
    return (
        "\n".join(lines)
        + (f"\n\ncost: {costs}" if costs else "")
        + (f"\nratios: {ratios}" if ratios else "")
    )


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
