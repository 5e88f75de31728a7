"""``perception compare`` and ``perception features``: the evidence behind the design
(docs/why-deep.md). Heavy imports happen when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from perception.cli_args import positive_int


def _cmd_compare(args: argparse.Namespace) -> int:
    from perception.studies import STUDIES, run_study
    from perception.studies.report import markdown_table

    names = STUDIES if args.study == "all" else (args.study,)
    for name in names:
        result = run_study(name, Path(args.out), budget=args.budget, seeds=args.seeds)
        print(f"compare {name}: {Path(args.out) / result.plot}, {name}.json, {name}.md")
        print(markdown_table(result))
    return 0


def add_compare(sub: argparse._SubParsersAction) -> None:
    from perception.studies import STUDIES  # names only: --help stays instant

    p = sub.add_parser("compare", help="the why-deep studies: a table, a plot and a JSON each")
    p.add_argument("--study", required=True, choices=(*STUDIES, "all"), help="which study")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="scales steps and data (1.0: all studies in about 2 h on 2 CPU cores)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per arm")
    p.set_defaults(func=_cmd_compare)


def _cmd_features(args: argparse.Namespace) -> int:
    from perception.analysis.features import feature_figure

    path = feature_figure(args.weights, args.source, args.out, top_k=args.top_k)
    print(f"features: {path}")
    return 0


def add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features", help="the strongest feature maps of the lower, middle and higher stages"
    )
    p.add_argument("--weights", required=True, help=".safetensors or .ckpt")
    p.add_argument("--source", required=True, help="an image")
    p.add_argument("--out", default=None, help="PNG (default: <image>_features.png)")
    p.add_argument("--top-k", type=positive_int, default=4, help="maps per stage")
    p.set_defaults(func=_cmd_features)
