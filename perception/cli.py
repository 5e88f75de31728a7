"""The ``perception`` command: one entry point, one subcommand per job.

Only argparse is imported at module level so ``perception --help`` answers at once;
each subcommand imports its heavy machinery (torch, cv2, ...) when it runs. User
mistakes surface as one ``perception <cmd>: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from perception.cli_args import (
    DefaultsFormatter,
    add_camera_args,
    add_compile_arg,
    add_precision_arg,
    positive_int,
    size,
)
from perception.cli_data import add_check_data, add_convert, add_synth
from perception.cli_studies import add_compare, add_features


def _cmd_train(args: argparse.Namespace) -> int:
    from perception.training.cli import run_train

    run_train(args.rest)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from perception.evaluation.evaluate import evaluate, format_table, write_json

    metrics = evaluate(
        args.weights,
        args.data,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        limit=args.limit,
        precision=args.precision,
        depth_regions=args.depth_regions,
    )
    print(format_table(metrics))
    if args.json:
        write_json(metrics, args.json)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perception.checkpoints import load_model
    from perception.errors import PerceptionError
    from perception.export import export_onnx, format_differences, quantize_int8, verify_onnx
    from perception.export.quantize import (
        DEFAULT_FORMAT,
        DEFAULT_OPS,
        DEFAULT_WEIGHT_BITS,
        check_int8_setting,
    )

    if args.int8 and not args.calib:
        raise PerceptionError("--int8 needs --calib DIR (a v1 dataset of calibration images)")
    fmt, ops = args.int8_format or DEFAULT_FORMAT, args.int8_ops or DEFAULT_OPS
    bits = args.int8_weight_bits or DEFAULT_WEIGHT_BITS
    if args.int8:  # before anything is written
        check_int8_setting(fmt, ops, bits)
    loaded = load_model(args.weights)
    out = Path(args.out)
    fp32_out = out.with_suffix(".fp32.onnx") if args.int8 else out
    path = export_onnx(
        loaded,
        fp32_out,
        opset=args.opset,
        dynamic_batch=args.dynamic,
        dynamic_hw=args.dynamic and not args.nms,
        nms=args.nms,
        fp16=args.fp16 and not args.int8,
    )
    tol = {"rtol": 1e-2, "atol": 1e-2} if args.fp16 and not args.int8 else {}
    print(f"{path}: onnxruntime vs PyTorch (max abs, max rel)")
    print(format_differences(verify_onnx(path, loaded.model, **tol)))
    if args.int8:
        int8 = quantize_int8(
            path, out, args.calib, args.calib_images, fmt=fmt, ops=ops, weight_bits=bits
        )
        print(f"{int8}: INT8 {fmt}, {ops} operators, {bits}-bit weights")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from perception.inference import Predictor
    from perception.inference.sources import predict_source

    predictor = Predictor(
        args.weights,
        device=args.device,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        backend=args.backend,
        precision=args.precision,
        compile=args.compile,
    )
    summary = predict_source(
        predictor,
        args.source,
        args.out,
        save_raw=args.save_raw,
        overwrite=args.overwrite,
        camera=args.camera,
        hfov=args.hfov,
    )
    print(
        f"predicted {summary.images} image(s), {summary.detections} detection(s); "
        f"wrote {len(summary.outputs)} file(s) to {args.out}"
    )
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="overlays (and raw outputs) for an image, folder or video")
    p.add_argument("--weights", required=True, help=".safetensors, .ckpt or exported .onnx")
    p.add_argument("--source", required=True, help="an image, a folder of images or a video")
    p.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    p.add_argument(
        "--backend", choices=["auto", "torch", "onnx"], default="auto", help="auto: by file type"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    p.add_argument("--conf", type=float, default=0.25, help="detection score threshold")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=positive_int, default=300, help="boxes kept per image")
    add_precision_arg(
        p, "torch backend precision (bf16: fast on CPUs with AMX or AVX512-BF16, and GPUs)"
    )
    add_compile_arg(
        p, "run the torch backend under torch.compile in this mode (first frames compile)"
    )
    p.add_argument("--save-raw", action="store_true", help="also write each Prediction as .npz")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_camera_args(p, "the source images")
    p.set_defaults(func=_cmd_predict)


def _cmd_demo(args: argparse.Namespace) -> int:
    from perception.demo import run_demo
    from perception.evaluation.evaluate import format_table

    s = run_demo(
        args.out,
        args.weights,
        num=args.num,
        size=args.size,
        source=args.source,
        camera=args.camera,
        hfov=args.hfov,
    )
    print(format_table({k: float("nan") if v is None else v for k, v in s.metrics.items()}))
    print(
        f"demo: {s.weights} on {s.scenes} held-out synthetic scenes in {s.seconds:.1f} s\n"
        f"  ground truth | prediction | depth: {s.out}/demo.jpg\n"
        f"  overlays: {s.out}/overlays/   metrics: {s.out}/metrics.json"
    )
    if args.source is not None:
        print(f"  your images ({s.source_images}): {s.out}/source/")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the released model on fresh synthetic scenes (and yours)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument(
        "--weights",
        default=None,
        help=".safetensors, .ckpt or .onnx (default: the release in weights/)",
    )
    p.add_argument("--source", default=None, help="also predict this image, folder or video")
    p.add_argument("--num", type=positive_int, default=24, help="synthetic scenes to render")
    p.add_argument("--size", type=size, default=(384, 640), help="scene size HxW")
    add_camera_args(p, "the --source images")
    p.set_defaults(func=_cmd_demo)


def _cmd_bench(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from perception.benchmark import format_report, run_bench, write_doc_section, write_report

    report = run_bench(
        args.weights,
        size=args.size,
        device=args.device,
        batch=args.batch,
        iters=args.iters,
        onnx=not args.no_onnx,
        calib=args.calib,
        data=args.data,
        eval_images=args.eval_images,
        train_steps=args.train_steps,
        threads=args.threads,
        workers=args.workers,
        peer=args.peer,
        **({"int8": args.int8} if args.int8 else {}),  # else run_bench's default
        frame=args.frame,
        compile=args.compile,
        rounds=args.rounds,
    )
    print(format_report(report))
    write_report(report, args.json)
    print(f"wrote {args.json}")
    if args.doc:
        command = shlex.join(["perception", *sys.argv[1:]])
        doc = write_doc_section(report, args.doc, command)
        print(f"wrote the {report['device_type']} section of {doc}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency/throughput per runtime (+ accuracy), table + JSON")
    p.add_argument("--weights", required=True, help=".ckpt or .safetensors")
    p.add_argument("--size", type=size, default=None, help="input HxW (default: the weights')")
    p.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    p.add_argument("--batch", type=positive_int, default=8, help="throughput batch size")
    p.add_argument("--iters", type=positive_int, default=20, help="timed calls per row")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows")
    p.add_argument("--calib", default=None, help="v1 dataset for INT8 calibration")
    p.add_argument(
        "--int8",
        type=lambda text: text.split(","),
        default=None,
        help="INT8 settings to time: format:ops (qdq|qoperator : conv|all), comma-separated, "
        "or all (default: the export's, qdq:all)",
    )
    p.add_argument("--data", default=None, help="v1 dataset: accuracy per runtime (+ training)")
    p.add_argument(
        "--frame", type=size, default=(720, 1280), help="camera frame HxW of the Predictor rows"
    )
    p.add_argument("--eval-images", type=positive_int, default=200, help="images per accuracy row")
    p.add_argument("--train-steps", type=int, default=0, help="timed training steps (0: skip)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads per runtime")
    p.add_argument("--workers", type=int, default=2, help="data workers for training rows")
    p.add_argument(
        "--peer",
        default=None,
        help="another network timed beside ours: module:function (or file.py:function) "
        "returning an nn.Module, e.g. torchvision.models:resnet50",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="also time ours and the --peer eager, and onnxruntime fp32 and INT8, at batch 1 "
        "in this many alternating rounds (the median ratio holds on a busy machine)",
    )
    add_compile_arg(
        p,
        "also time the torch rows under torch.compile in this mode (reduce-overhead: CUDA "
        "graphs on a GPU)",
    )
    p.add_argument("--json", default="runs/bench/bench.json", help="where to write the JSON")
    p.add_argument(
        "--doc",
        default=None,
        help="also write the table into this Markdown file, in a section marked by the "
        "device type (replaced on the next run, the rest of the file kept)",
    )
    p.set_defaults(func=_cmd_bench)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="ONNX export, verified against PyTorch with onnxruntime")
    p.add_argument("--weights", required=True, help=".ckpt or .safetensors")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--fp16", action="store_true", help="fp16 internals, fp32 inputs/outputs")
    p.add_argument("--int8", action="store_true", help="static INT8, needs --calib")
    p.add_argument(
        "--int8-format",
        default=None,
        help="qdq (portable Q/DQ pairs; the default) or qoperator (onnxruntime's fused "
        "integer operators)",
    )
    p.add_argument(
        "--int8-ops",
        default=None,
        help="all (every operator with an INT8 kernel; the default) or conv (Conv/MatMul/"
        "Gemm only)",
    )
    p.add_argument(
        "--int8-weight-bits",
        type=int,
        default=None,
        help="7 (the default: x86 CPUs without VNNI saturate with 8-bit weights) or 8 "
        "(TensorRT, ARM, CPUs with VNNI)",
    )
    p.add_argument("--calib", default=None, help="v1 dataset with calibration images")
    p.add_argument("--calib-images", type=positive_int, default=64, help="INT8 calibration images")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch (and H/W without --nms)")
    p.add_argument("--nms", action="store_true", help="decode + class-aware NMS in the graph")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or later)")
    p.set_defaults(func=_cmd_export)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train with a LightningCLI YAML config",
        add_help=False,
        description="Everything after 'train' goes to LightningCLI: --config configs/X.yaml, "
        "dotted overrides such as --model.lr 1e-3, --print_config, --ckpt_path to resume.",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="metrics table (and JSON) of weights on a dataset")
    p.add_argument("--weights", required=True, help=".safetensors, .ckpt or exported .onnx")
    p.add_argument("--data", required=True, help="v1 dataset root")
    p.add_argument("--json", default=None, help="write the metric keys here")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N samples only")
    p.add_argument(
        "--depth-regions",
        action="store_true",
        help="also depth errors on the road, inside labeled boxes and elsewhere "
        "(images labeled for every task)",
    )
    add_precision_arg(
        p, "torch weights in this precision, as the Predictor runs them (BatchNorm folded)"
    )
    p.set_defaults(func=_cmd_eval)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_demo,
    add_synth,
    add_convert,
    add_check_data,
    _add_train,
    _add_eval,
    _add_predict,
    _add_export,
    _add_bench,
    add_features,
    add_compare,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perception", description="Multi-task driving-scene perception."
    )
    from perception import __version__

    parser.add_argument("--version", action="version", version=f"perception {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # every subcommand's help shows its defaults
        command.formatter_class = DefaultsFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns (and, as a console script, exits with) its exit code."""
    from perception.errors import PerceptionError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":  # everything after 'train' belongs to LightningCLI
        args.rest = [*extra, *args.rest]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except PerceptionError as err:
        print(f"perception {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"perception {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
