"""``perception bench``: one table of speed (and accuracy) per runtime, plus JSON.

Rows, all at the weights' input size unless ``size`` is given:

- ``torch eager fp32`` (and fp16/bf16 on a GPU, bf16 on a CPU with native bf16) at batch
  1 (latency) and ``batch`` (throughput), BatchNorm folded and channels-last as the
  ``Predictor`` runs it; with ``compile``, the same under ``torch.compile`` in that mode
  (fp16 on a GPU, where ``reduce-overhead`` replays CUDA graphs);
- with ``peer``, another network timed the same way, as its factory builds it; with
  ``rounds`` as well, both eager at batch 1 in that many alternating blocks per precision
  (``peer_rounds``), for a peer that is close to ours in speed;
- ``predictor torch fp32`` and ``predictor onnxruntime fp32``: the whole ``Predictor``
  call on one ``frame``-sized image (letterbox, network, decoding, maps back to the
  frame), against the model-only rows: what pre- and post-processing cost;
- ``onnxruntime fp32``, ``fp16`` and ``int8 <format>:<ops>`` (static INT8 calibrated on
  ``calib``, one row per ``int8`` setting, ``export.quantize``) exports of the same
  weights, CPU only; with ``rounds``, fp32 and the default INT8 setting (or the first
  one given) in that many alternating blocks (``int8_rounds``);
- with ``train_steps``: training throughput model-only in fp32, fp32 channels_last and
  (on a GPU or a CPU with native bf16) bf16 channels_last, and end-to-end for the setting
  ``perception train`` picks by default, on ``data``.

With ``data``, each inference runtime is also scored on the first ``eval_images`` of that
dataset (``perception eval``'s metrics), so a speed-up is never read without its cost;
``benchmark.report`` turns the rows into the ratios and targets BENCHMARKS.md asks for.
"""

from __future__ import annotations

import copy
import functools
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from perception.benchmark.cost import gflops, param_count
from perception.benchmark.machine import describe_machine
from perception.benchmark.peer import build_peer, check_runs
from perception.benchmark.report import ACCURACY_KEYS, ratios, round_ratios
from perception.benchmark.speed import (
    Row,
    onnx_inference,
    predictor_inference,
    torch_inference,
    training_throughput,
)
from perception.checkpoints import load_model
from perception.errors import PerceptionError
from perception.export.quantize import DEFAULT_INT8, int8_settings, parse_int8_setting
from perception.inference.backends import check_compile_mode
from perception.models.fold import fold_batchnorm
from perception.training.precision import cpu_has_native_bf16


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
    compile: str | None = None,
    rounds: int = 0,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the JSON-ready report. ``peer``:
    ``module:function`` building another network, timed beside ours (``benchmark.peer``);
    ``int8``: ``format:ops`` settings to quantize and time (``export.quantize``);
    ``frame``: the camera frame ``(H, W)`` of the end-to-end ``Predictor`` rows (None: none);
    ``compile``: a ``torch.compile`` mode for extra torch rows (None: eager only);
    ``rounds``: alternating rounds of ours and the peer eager (``peer_rounds``) and of
    onnxruntime fp32 and INT8 (``int8_rounds``); 0 = none."""
    settings = int8_settings(int8)
    has_int8 = onnx and bool(calib or data) and bool(settings)
    if rounds < 0 or (rounds and peer is None and not has_int8):
        raise PerceptionError(
            f"bench: rounds ({rounds}) must be >= 0 and needs a peer or INT8 rows "
            "(onnxruntime on, with --calib or --data)"
        )
    check_compile_mode(compile)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(weights, "cpu")
    size = tuple(size or loaded.meta.image_size)
    loaded.model.check_image_size(size)
    if train_steps and data is None:
        raise PerceptionError("bench: --train-steps needs --data (a v1 training dataset)")
    folded, _ = fold_batchnorm(loaded.model, size)  # as the Predictor runs it
    rows = _torch_rows(folded, size, batch, dev, iters, compile=compile)
    costs = {"ours": _cost(loaded.model, size)}
    alternating: dict[str, Any] = {}
    int8_alt: dict[str, Any] = {}
    if peer is not None:
        name, net = build_peer(peer)
        check_runs(peer, net, size)
        costs[f"peer {name}"] = _cost(net, size)
        rows += _torch_rows(net, size, batch, dev, iters, prefix=f"peer {name} ")
        if rounds:
            alternating = {name: peer_rounds(folded, net, name, size, dev, rounds, iters)}
    if frame is not None:
        rows += _predictor_rows(weights, size, frame, dev, onnx, threads, iters)
    if data is not None:  # each of our precisions, eager (compiling changes no numbers)
        for row in rows:
            if row.batch == 1 and row.variant.startswith("torch eager"):
                precision = row.variant.split()[-1]
                _score(row, weights, data, eval_images, str(dev), precision, size)
    if onnx:
        with tempfile.TemporaryDirectory(prefix="perception-bench-") as tmp:
            calib = calib or data
            onnx_rows, files = _onnx_rows(loaded, Path(tmp), size, batch, iters, calib, threads,
                                          settings)  # fmt: skip
            rows += onnx_rows
            if rounds and has_int8:  # the export's default setting, else the first given
                default = parse_int8_setting(DEFAULT_INT8)
                setting = ":".join(default if default in settings else settings[0])
                int8 = files[int8_variant(setting)]
                int8_alt = int8_rounds(files["onnxruntime fp32"], int8, setting, size, rounds,
                                       iters, threads)  # fmt: skip
            if data is not None:
                for row in onnx_rows:
                    if row.batch == 1:
                        _score(row, files[row.variant], data, eval_images, "cpu")
    if train_steps:
        rows += _train_rows(loaded, data, size, batch, dev, train_steps, workers)
    return {
        "weights": str(weights),
        "image_size": list(size),
        "device_type": dev.type,
        "machine": describe_machine(dev, threads),
        "cost": costs,
        "rows": [asdict(r) for r in rows],
        "ratios": ratios(rows) | round_ratios(alternating, int8_alt),
        **({"peer_rounds": alternating} if alternating else {}),
        **({"int8_rounds": int8_alt} if int8_alt else {}),
    }


def peer_rounds(
    ours: torch.nn.Module,
    peer: torch.nn.Module,
    name: str,
    size: tuple[int, int],
    dev: torch.device,
    rounds: int,
    iters: int,
) -> dict[str, dict[str, Any]]:
    """Ours and the peer eager at batch 1, one block each per round, in every precision
    worth timing: ``{precision: {"ours_ms", "<name>_ms", "peer_over_ours": per round,
    "median": of the per-round ratios}}``.

    One block per network measures whatever else the machine did at that moment; on a
    shared machine that moves a row by more than the gap between two close networks. The
    two blocks of a round see the same conditions, so the median of their ratios holds.
    Which network goes first swaps every round, so that whatever following the other
    network's block does to a block falls on both alike.
    """
    out = {}
    for precision in torch_precisions(dev):
        nets = {"ours": copy.deepcopy(ours), name: copy.deepcopy(peer)}
        blocks = {
            key: functools.partial(torch_inference, net, size, 1, dev, precision, iters=iters)
            for key, net in nets.items()
        }
        ms = alternate(blocks, rounds)
        out[precision] = {
            "ours_ms": ms["ours"],
            f"{name}_ms": ms[name],
            **_median_ratio("peer_over_ours", ms[name], ms["ours"]),
        }
    return out


def int8_rounds(
    fp32: Path, int8: Path, setting: str, size, rounds: int, iters: int, threads: int | None
) -> dict[str, Any]:
    """onnxruntime ``fp32`` and ``int8`` (an export in ``setting``) at batch 1 in
    alternating blocks, as ``peer_rounds`` does for two networks: ``{"setting", "fp32_ms",
    "int8_ms", "fp32_over_int8": per round, "median"}``. Two exports of one network are as
    close as two networks: one block each read the same pair at 1.86x and 2.39x in two runs."""
    paths = {"fp32": fp32, "int8": int8}
    blocks = {
        key: functools.partial(onnx_inference, path, size, 1, key, threads, iters=iters)
        for key, path in paths.items()
    }
    ms = alternate(blocks, rounds)
    return {
        "setting": setting,
        "fp32_ms": ms["fp32"],
        "int8_ms": ms["int8"],
        **_median_ratio("fp32_over_int8", ms["fp32"], ms["int8"]),
    }


def alternate(blocks: dict[str, Callable[[], Row]], rounds: int) -> dict[str, list[float]]:
    """Each block's batch-1 latency (ms) per round; which block goes first swaps every
    round, so that whatever following the other block does to a block falls on both."""
    ms: dict[str, list[float]] = {key: [] for key in blocks}
    for i in range(rounds):
        for key in list(blocks)[:: 1 if i % 2 == 0 else -1]:
            ms[key].append(blocks[key]().latency_ms)
    return ms


def _median_ratio(name: str, slow: list[float], fast: list[float]) -> dict[str, Any]:
    ratio = [round(a / b, 2) for a, b in zip(slow, fast, strict=True)]
    return {name: ratio, "median": round(statistics.median(ratio), 2)}


def _torch_rows(
    model: torch.nn.Module,
    size,
    batch: int,
    dev: torch.device,
    iters: int,
    prefix: str = "",
    compile: str | None = None,
) -> list[Row]:
    """Rows at batch 1 and ``batch``, eager in every precision this device runs natively,
    then compiled (``compile``) in the fastest one; each timed on its own copy of ``model``
    (rows cast and move it)."""
    precisions = torch_precisions(dev)
    runs = [(p, None) for p in precisions]
    if compile is not None:
        runs.append(("fp16" if dev.type == "cuda" else precisions[-1], compile))
    rows = []
    for precision, mode in runs:
        for b in sorted({1, batch}):
            net = copy.deepcopy(model)
            row = torch_inference(net, size, b, dev, precision, iters=iters, compile=mode)
            row.variant = prefix + row.variant
            rows.append(row)
    return rows


def torch_precisions(dev: torch.device) -> tuple[str, ...]:
    """The precisions worth timing: fp16 and bf16 on a GPU, bf16 on a CPU that multiplies
    it in hardware (AMX, AVX512-BF16); elsewhere bf16 is emulated and only slower."""
    if dev.type == "cuda":
        return ("fp32", "fp16", "bf16")
    return ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)


def _predictor_rows(weights, size, frame, dev, onnx: bool, threads, iters) -> list[Row]:
    """End-to-end ``Predictor`` rows, torch in each precision worth timing, then (on the
    CPU) onnxruntime, each alone."""
    from perception.inference import Predictor

    rows = []
    for precision in torch_precisions(dev):
        predictor = Predictor(weights, str(dev), image_size=size, precision=precision)
        variant = f"predictor torch {precision}"
        rows.append(predictor_inference(predictor, frame, variant, dev.type, iters=iters))
    if onnx:
        ort_predictor = Predictor(weights, backend="onnx", image_size=size, threads=threads)
        variant = "predictor onnxruntime fp32"
        rows.append(predictor_inference(ort_predictor, frame, variant, iters=iters))
    return rows


def _cost(model: torch.nn.Module, size: tuple[int, int]) -> dict[str, float]:
    """Parameters and GFLOPs per image of a CPU copy of ``model``."""
    net = copy.deepcopy(model).float().cpu()
    return {"params": param_count(net), "gflops": gflops(net, size)}


def int8_variant(setting: str) -> str:
    """The row name of the INT8 export in ``setting`` (``format:ops``)."""
    return f"onnxruntime int8 {setting}"


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
        files[int8_variant(f"{fmt}:{ops}")] = quantized
    rows = []
    for variant, path in files.items():
        for b in sorted({1, batch}):
            rows.append(onnx_inference(path, size, b, variant, threads, iters=iters))
    return rows, files


def _score(
    row: Row, weights, data, limit: int, device: str, precision: str = "fp32", size=None
) -> None:
    """``row.metrics``: ``weights`` scored at network input ``size`` (torch weights; an
    ``.onnx`` file has its own) in ``precision``, the way the row was timed."""
    from perception.evaluation.evaluate import evaluate

    metrics = evaluate(
        weights, data, workers=0, device=device, limit=limit, precision=precision, image_size=size
    )
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
