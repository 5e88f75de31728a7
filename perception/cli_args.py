"""Argument types shared by the ``perception`` subcommands (argparse only: importing
this never loads torch or cv2)."""

from __future__ import annotations

import argparse

from perception.structures import COMPILE_MODES, PRECISION_NAMES


def size(text: str) -> tuple[int, int]:
    """``HxW`` -> ``(H, W)``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like 384x640 (HxW), got {text!r}"
        ) from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small (at least 32x32)")
    return h, w


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def camera(text: str) -> tuple[float, float, float, float]:
    """``fx,fy,cx,cy`` -> floats (pixels of the input images)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[0] <= 0 or values[1] <= 0:
        raise argparse.ArgumentTypeError(
            f"camera must be fx,fy,cx,cy in pixels with fx, fy > 0, got {text!r}"
        )
    return values  # type: ignore[return-value]


def hfov(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 180.0:
        raise argparse.ArgumentTypeError(f"hfov must be in (0, 180) degrees, got {text}")
    return value


def add_camera_args(p: argparse.ArgumentParser, whose: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--camera",
        type=camera,
        default=None,
        metavar="FX,FY,CX,CY",
        help=f"intrinsics of {whose} in their own pixels (metric depth depends on them)",
    )
    group.add_argument(
        "--hfov",
        type=hfov,
        default=None,
        metavar="DEG",
        help=f"or the horizontal field of view of {whose} (default: the weights')",
    )


def add_precision_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``--precision`` of the torch path (fp32 by default)."""
    p.add_argument("--precision", choices=PRECISION_NAMES, default="fp32", help=help)


def add_compile_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``--compile MODE``: a ``torch.compile`` mode, or none (eager) by default."""
    p.add_argument("--compile", choices=COMPILE_MODES, default=None, help=help)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that states each option's default, unless the help already says it or there
    is none to state (``None``, ``False``); an image size reads as HxW."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        quiet = default is None or default is False or default == argparse.SUPPRESS
        if "default" in text or quiet or not action.option_strings:
            return text
        if isinstance(default, tuple) and len(default) == 2:
            default = f"{default[0]}x{default[1]}"
        elif isinstance(default, list | tuple):
            default = " ".join(map(str, default))
        return f"{text} (default: {default})".strip()
