"""``perception synth``, ``convert`` and ``check-data``: the commands that make and check
datasets (heavy imports happen when a command runs)."""

from __future__ import annotations

import argparse
import os

from perception.cli_args import positive_int, size
from perception.ops.cpus import usable_cpus


def _cmd_synth(args: argparse.Namespace) -> int:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one render process per core; no BLAS threads
    from perception.data.synthetic.writer import write_dataset

    root = write_dataset(
        args.out,
        num=args.num,
        seed=args.seed,
        size=args.size,
        workers=args.workers,
        preview=args.preview,
        focal_range=tuple(args.focal_range),
        tasks=args.tasks,
    )
    size, labels = f"{args.size[0]}x{args.size[1]}", ",".join(args.tasks)
    print(f"synth: {args.num} images of {size} labeled {labels} in {root}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from perception.data.formats.convert import LANE_WIDTH, Options, convert

    options = Options(
        split=args.split,
        lane_width=args.lane_width or LANE_WIDTH,
        dontcare=args.dontcare,
        alternative=args.alternative,
        depth_maps=args.depth_maps,
        limit=args.limit,
    )
    summary = convert(args.format, args.src, args.out, options, args.classes, args.overwrite)
    print(f"convert: wrote {args.out}")
    for line in summary.lines():
        print(f"  {line}")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from perception.data.check import check_dataset, print_report

    problems, num_samples = check_dataset(args.root)
    print_report(problems, num_samples)
    return 1 if problems else 0


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="render a synthetic driving dataset (v1 format)")
    p.add_argument("--out", required=True, help="output dataset root (must not hold a dataset)")
    p.add_argument("--num", type=positive_int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--size", type=size, default=(384, 640), help="image size HxW")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=usable_cpus(),
        help="render processes (default: every CPU this process may use)",
    )
    p.add_argument("--preview", default=None, help="also write a contact sheet PNG here")
    p.add_argument(
        "--focal-range",
        type=float,
        nargs=2,
        default=(0.6, 1.1),
        metavar=("MIN", "MAX"),
        help="focal length as a multiple of the image width (default 0.6 1.1); e.g. "
        "1.2 1.5 renders lenses longer than any in the default training data",
    )
    p.add_argument(
        "--tasks",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        default=["det", "lane", "drivable", "depth"],
        help="labels to write, e.g. det,lane,drivable (default: all four); the others are "
        "left out, as in a real dataset that labels only some tasks",
    )
    p.set_defaults(func=_cmd_synth)


def add_convert(sub: argparse._SubParsersAction) -> None:
    from perception.data.formats import FORMATS  # names only: --help stays instant

    p = sub.add_parser("convert", help="convert a public driving dataset to the v1 format")
    p.add_argument("--format", required=True, choices=FORMATS, help="the source dataset")
    p.add_argument("--src", required=True, help="the dataset's root, as published")
    p.add_argument("--out", required=True, help="output v1 dataset root (must be empty)")
    p.add_argument("--split", default="train", help="train, val, test (default: train)")
    p.add_argument("--classes", default=None, help="class map YAML (default: the five classes)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset at --out")
    p.add_argument("--limit", type=positive_int, default=None, help="first N samples only")
    p.add_argument("--lane-width", type=positive_int, default=None, help="lane line px (default 8)")
    p.add_argument(
        "--dontcare", choices=("drop", "ignore"), default="drop", help="KITTI DontCare boxes"
    )
    p.add_argument(
        "--alternative",
        choices=("drivable", "background", "ignore"),
        default="drivable",
        help="what BDD100K's alternative (adjacent-lane) area becomes",
    )
    p.add_argument("--depth-maps", default=None, help="KITTI: annotated depth maps folder")
    p.set_defaults(func=_cmd_convert)


def add_check_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="validate a v1 dataset, one line per problem")
    p.add_argument("root", help="dataset root holding dataset.yaml and manifest.jsonl")
    p.set_defaults(func=_cmd_check_data)
