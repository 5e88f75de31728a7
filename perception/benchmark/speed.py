"""Timing primitives: inference latency/throughput per runtime, and training throughput.

Each function times one thing the same way: ``warmup`` untimed calls, then ``iters``
timed ones (CUDA synchronised), reported as the median and 90th percentile per call
and images per second at the median. Inputs are random images at the network size;
speed does not depend on pixel values.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from perception.inference.backends import PRECISIONS, check_compile_mode
from perception.models import MultiTaskModel

if TYPE_CHECKING:
    from perception.inference import Predictor


@dataclass
class Row:
    """One line of the benchmark table."""

    variant: str  # e.g. "torch eager fp32", "onnxruntime int8", "train model-only"
    device: str
    batch: int
    latency_ms: float  # median per call
    p90_ms: float
    images_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)  # accuracy, when measured


def timed(fn: Callable[[], object], warmup: int, iters: int, cuda: bool = False) -> np.ndarray:
    """Seconds per call of ``fn`` over ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return np.asarray(out)


def _row(variant: str, device: str, batch: int, seconds: np.ndarray) -> Row:
    median = float(np.median(seconds))
    return Row(
        variant,
        device,
        batch,
        round(median * 1e3, 3),
        round(float(np.percentile(seconds, 90)) * 1e3, 3),
        round(batch / median, 1),
    )


def torch_inference(
    model: MultiTaskModel,
    size: tuple[int, int],
    batch: int,
    device: torch.device,
    precision: str = "fp32",
    warmup: int = 3,
    iters: int = 20,
    compile: str | None = None,
) -> Row:
    """Forward pass (raw head outputs), channels-last, weights cast to ``precision``;
    eager, or under ``torch.compile`` in mode ``compile`` (compiled in the first warm-up
    call; ``reduce-overhead`` records CUDA graphs on a GPU, which the next calls replay)."""
    check_compile_mode(compile)
    dtype = PRECISIONS[precision]
    net = model.to(device, dtype).eval().to(memory_format=torch.channels_last)
    run = net if compile is None else torch.compile(net, mode=compile)
    images = torch.rand(batch, 3, *size, device=device, dtype=dtype)
    images = images.contiguous(memory_format=torch.channels_last)

    grad_off = torch.inference_mode if compile is None else torch.no_grad  # as Predictor

    def step() -> object:
        with grad_off():
            return run(images)

    seconds = timed(step, warmup, iters, cuda=device.type == "cuda")
    how = "eager" if compile is None else f"compiled {compile}"
    return _row(f"torch {how} {precision}", device.type, batch, seconds)


def onnx_inference(
    path: str | os.PathLike,
    size: tuple[int, int],
    batch: int,
    variant: str,
    threads: int | None = None,
    warmup: int = 3,
    iters: int = 20,
) -> Row:
    """onnxruntime CPU session on a ``[batch, 3, H, W]`` input (the graph's fixed size)."""
    from perception.export.onnx import cpu_session, graph_feed

    session = cpu_session(path, threads)
    feed = graph_feed(session, np.random.default_rng(0).random((batch, 3, *size), np.float32))
    seconds = timed(lambda: session.run(None, feed), warmup, iters)
    return _row(variant, "cpu", batch, seconds)


def predictor_inference(
    predictor: Predictor,
    frame: tuple[int, int],
    variant: str,
    device: str = "cpu",
    warmup: int = 3,
    iters: int = 20,
) -> Row:
    """End-to-end ``Predictor`` call on one ``frame`` ``(H, W)`` RGB uint8 image: letterbox,
    network, decoding and NMS, and every map brought back to the frame's pixels; what an
    application waits for, against the model-only rows."""
    image = np.random.default_rng(0).integers(0, 256, (*frame, 3), dtype=np.uint8)
    seconds = timed(lambda: predictor(image), warmup, iters)  # outputs come back on the CPU
    return _row(variant, device, 1, seconds)


def training_throughput(
    model: MultiTaskModel,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    steps: int,
    warmup: int = 2,
    *,
    precision: str = "fp32",
    channels_last: bool = True,
    end_to_end: bool = True,
) -> list[Row]:
    """Training images per second, model-only and, with ``end_to_end``, end-to-end (each
    step loads, augments and collates its batch) plus the loading alone, in one process
    (``in_one_process``).

    The model-only row steps through batches loaded beforehand, the very batches the
    end-to-end row then loads afresh (the training order is a pure function of seed and
    epoch, ``data.order``), so the two rows differ by the loading only. Reusing one batch
    instead made the ratio a draw: the loss's cost grows with the boxes in the batch.

    Both run the full multi-task loss with label assignment, backward and AdamW, under
    ``precision`` (``fp32`` or ``bf16`` autocast, as Lightning's ``bf16-mixed``) with the
    model and images in ``channels_last`` memory layout or not.
    """
    from perception.losses import LossConfig, build_combiner, build_loss

    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = model.to(device, memory_format=layout).train()
    loss_fn = build_loss(
        LossConfig(), build_combiner("uncertainty"), canonical_focal=net.canonical_focal
    ).to(device)
    opt = torch.optim.AdamW([*net.parameters(), *loss_fn.parameters()], lr=1e-4)
    cuda = device.type == "cuda"
    name = f"{precision}{' channels_last' if channels_last else ''}"

    def step(batch) -> None:
        batch = batch.to(device)
        images = batch.images.float().div_(255.0).contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = net(images)
            total, _ = loss_fn(outputs, batch, *net.points(images.shape[-2:], device))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    loaded = list(itertools.islice(_endless(loader), warmup + steps))
    size = len(loaded[0])
    ready = iter(loaded)
    rows = [
        _row(
            f"train model-only {name}",
            device.type,
            size,
            timed(lambda: step(next(ready)), warmup, steps, cuda),
        )
    ]
    if end_to_end:
        fresh = _endless(loader)  # the same batches again, loaded as training loads them
        seconds = timed(lambda: step(next(fresh)), warmup, steps, cuda)
        rows.append(_row(f"train end-to-end {name}", device.type, size, seconds))
        alone = _endless(in_one_process(loader))
        rows.append(_row("train loading only", device.type, size, timed(alone.__next__, 1, steps)))
    return rows


def in_one_process(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """``loader`` without worker processes: the same batches, loaded in this process. The
    loading row times this: with workers, ``next`` only waits for a batch they loaded
    ahead (0.3 ms against a 41 ms step on a GPU), which says nothing of what a batch costs;
    in one process it is that cost, which ``workers`` processes share (at best they load
    that many times as fast)."""
    if loader.num_workers == 0:
        return loader
    return torch.utils.data.DataLoader(
        loader.dataset, batch_sampler=loader.batch_sampler, collate_fn=loader.collate_fn
    )


def _endless(loader: Iterable) -> Iterator:
    """The loader's batches, starting over whenever it runs out."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("training throughput: the loader yields no batches")
