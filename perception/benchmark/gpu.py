"""The GPU half of the benchmark in one command, sized for ten minutes on one H100/H200.

``python tools/bench_gpu.py`` renders a small held-out synthetic set if there is none,
then runs ``perception bench`` with the GPU settings BENCHMARKS.md asks for:

- batch-1 latency in fp32, fp16 and bf16 eager, and fp16 under ``torch.compile`` with
  CUDA graphs (``reduce-overhead``);
- batch-32 throughput in the same runtimes (channels-last, BatchNorm folded);
- training throughput in fp32 and bf16 (channels-last), model-only (stepping through the
  batches that end to end then loads afresh) and end-to-end (loading, augmentation,
  assignment, every loss, AdamW);
- accuracy of each eager precision on the held-out images, and with ``--peer`` another
  network (e.g. YOLOP) timed the same way.

It writes the JSON and replaces the GPU section of ``docs/benchmarks.md`` (everything
else in that file is kept), with the targets met or missed. The same code runs on a CPU
(``--device cpu``), which is how the tests exercise it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from perception.cli_args import positive_int, size
from perception.ops.cpus import usable_cpus
from perception.structures import COMPILE_MODES

RELEASE = "weights/perception-r18-synth-288x480.safetensors"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/bench_gpu.py", description=__doc__.split("\n\n")[0].strip()
    )
    p.add_argument("--weights", default=RELEASE, help=".safetensors release or .ckpt")
    p.add_argument("--device", default="cuda", help="torch device (cpu runs the same code)")
    p.add_argument("--size", type=size, default=(384, 640), help="input HxW")
    p.add_argument("--batch", type=positive_int, default=32, help="throughput batch size")
    p.add_argument("--iters", type=positive_int, default=50, help="timed calls per row")
    p.add_argument("--train-steps", type=positive_int, default=30, help="timed training steps")
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="data workers for training rows (default: every usable CPU but two, at most 16)",
    )
    p.add_argument("--eval-images", type=positive_int, default=200, help="images per accuracy row")
    p.add_argument("--data", default="data/bench_384x640", help="v1 set (rendered if missing)")
    p.add_argument(
        "--compile",
        choices=(*COMPILE_MODES, "none"),
        default="reduce-overhead",
        help="torch.compile mode of the compiled rows (reduce-overhead: CUDA graphs; none: "
        "eager rows only)",
    )
    p.add_argument("--peer", default=None, help="module:function of another network")
    p.add_argument("--json", default="docs/bench_gpu_384x640.json", help="the JSON to write")
    p.add_argument("--doc", default="docs/benchmarks.md", help="Markdown file to update")
    return p


def default_workers() -> int:
    """Loading workers for the end-to-end training rows: a GPU steps a batch of 32 faster
    than eight workers augment one, so take the usable CPUs, less two for the process that
    feeds the GPU."""
    return max(1, min(16, usable_cpus() - 2))


def images_to_render(args: argparse.Namespace) -> int:
    """Enough images for the accuracy rows and for every timed training step to fall in one
    epoch: a new epoch restarts the loader, whose first batch one worker builds alone, a
    stall a real training run meets once per thousands of steps, not every few."""
    return max(args.eval_images, (args.train_steps + 3) * args.batch)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; returns the exit status (a ``PerceptionError`` is one line, status 2)."""
    from perception.errors import PerceptionError

    args = build_parser().parse_args(argv)
    try:
        run_suite(args, shlex.join(["python", "tools/bench_gpu.py", *(argv or sys.argv[1:])]))
    except PerceptionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_suite(args: argparse.Namespace, command: str) -> dict:
    """Render the data if needed, bench, write the JSON and the document section."""
    from perception.benchmark.report import format_report, write_doc_section, write_report
    from perception.benchmark.run import run_bench
    from perception.data.synthetic.writer import write_dataset
    from perception.inference.backends import resolve_device

    resolve_device(args.device)  # before anything is written
    start = time.perf_counter()
    data = Path(args.data)
    if not (data / "dataset.yaml").is_file():
        num = images_to_render(args)
        write_dataset(data, num, seed=7, size=tuple(args.size), workers=args.workers or 1)
        print(f"rendered {num} images into {data} ({time.perf_counter() - start:.0f} s)")
    report = run_bench(
        args.weights,
        size=tuple(args.size),
        device=args.device,
        batch=args.batch,
        iters=args.iters,
        onnx=False,  # onnxruntime runs on the CPU here; the CPU tables cover it
        data=data,
        eval_images=args.eval_images,
        train_steps=args.train_steps,
        workers=args.workers,
        peer=args.peer,
        compile=None if args.compile == "none" else args.compile,
    )
    print(format_report(report))
    write_report(report, args.json)
    doc = write_doc_section(report, args.doc, command)
    print(f"wrote {args.json} and the {report['device_type']} section of {doc} "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
    return report
