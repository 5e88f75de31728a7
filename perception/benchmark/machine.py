"""What the bench ran on: a speed figure means nothing without the machine.

The CPU model and core count, the instruction-set extensions that decide which kernels
run (AVX2, AVX-512, VNNI for INT8, AMX and AVX512-BF16 for bf16), thread settings and
the versions of the libraries that do the work.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# /proc/cpuinfo flag -> the name users know (in the order they matter for inference)
ISA_FLAGS: dict[str, str] = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}
LIBRARIES = ("torch", "onnxruntime", "timm", "numpy", "lightning")


def describe_machine(dev: torch.device, threads: int | None = None) -> dict[str, Any]:
    """JSON-ready description of the device, the CPU and the libraries."""
    cpu = cpu_info()
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu["model"],
        "cpu": cpu["model"],
        "cpu_count": os.cpu_count(),
        "isa": [name for flag, name in ISA_FLAGS.items() if flag in cpu["flags"]],
        "torch_threads": torch.get_num_threads(),
        "ort_threads": threads or min(4, os.cpu_count() or 1),
        "python": platform.python_version(),
        **{lib: _version(lib) for lib in LIBRARIES},
        "torch": torch.__version__,  # with its build tag (+cpu, +cu130)
    }


def cpu_info(path: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU model name and its feature flags (Linux ``/proc/cpuinfo``); elsewhere the
    model ``platform`` knows and no flags."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and model:
                break
    except OSError:
        pass
    return {"model": model, "flags": flags}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
