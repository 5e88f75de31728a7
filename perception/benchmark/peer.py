"""A peer network timed in the same run as ours: ``perception bench --peer module:function``.

Speed figures from different machines, builds or thread settings do not compare, so the
bench times any ``nn.Module`` a user can build (YOLOP, HybridNets, their own network)
beside ours: the same input size, precision, device, threads and timing loop, one
runtime at a time. ``function`` is called without arguments and must return the module;
a few lines of Python wrap a peer whose constructor needs some.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from perception.errors import PerceptionError


def load_factory(spec: str) -> tuple[str, Callable[[], nn.Module]]:
    """``"package.module:function"`` (or ``"path/to/file.py:function"``) -> its name and
    the function. Every mistake is one error naming the part that is wrong."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise PerceptionError(f"--peer {spec!r}: expected module:function, e.g. mypkg.nets:yolop")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise PerceptionError(f"--peer {spec!r}: no file {path}")
            sys.path.insert(0, str(path.parent.resolve()))
            module_name = path.stem
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise PerceptionError(f"--peer {spec!r}: cannot import {module_name!r}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise PerceptionError(f"--peer {spec!r}: {module_name} has no function {attr!r}")
    return attr, factory


def build_peer(spec: str) -> tuple[str, nn.Module]:
    """Call the factory and check that it gave a module that runs on an image batch."""
    name, factory = load_factory(spec)
    model = factory()
    if not isinstance(model, nn.Module):
        raise PerceptionError(
            f"--peer {spec!r}: {name}() returned {type(model).__name__}, not a torch nn.Module"
        )
    return name, model


def check_runs(spec: str, model: nn.Module, size: tuple[int, int]) -> None:
    """One forward pass at ``size``: a peer that cannot take the input fails here, named."""
    try:
        with torch.inference_mode():
            model.eval()(torch.rand(1, 3, *size))
    except Exception as err:  # the peer's own code: report whatever it raised, in one line
        message = " ".join(str(err).split())[:300]
        raise PerceptionError(
            f"--peer {spec!r}: forward pass on a 1x3x{size[0]}x{size[1]} batch failed: "
            f"{type(err).__name__}: {message}"
        ) from None
