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

from perception.ops.cpus import default_threads, usable_cpus

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
        "cpu_family_model": cpu["family_model"],
        "cpu_count": usable_cpus(),
        "isa": [name for flag, name in ISA_FLAGS.items() if flag in cpu["flags"]],
        "torch_threads": torch.get_num_threads(),
        "ort_threads": default_threads(threads),
        "python": platform.python_version(),
        **{lib: _version(lib) for lib in LIBRARIES},
        "torch": torch.__version__,  # with its build tag (+cpu, +cu130)
    }


def cpu_info(path: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU model name, family / model numbers and feature flags (Linux
    ``/proc/cpuinfo``); elsewhere the model ``platform`` knows and no flags.

    The numbers tell CPU generations apart where a virtual machine's name does not
    ("AMD EPYC" is Zen 3 at family 25 and Zen 5 at family 26)."""
    found: dict[str, str] = {}
    keys = {"model name": "model", "cpu family": "family", "model": "number", "flags": "flags"}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            name = keys.get(key.strip())
            if name is not None:
                found.setdefault(name, value.strip())
            if not line.strip() and found:  # the first processor's block is enough
                break
    except OSError:
        pass
    family, number = found.get("family"), found.get("number")
    return {
        "model": found.get("model") or platform.processor() or platform.machine(),
        "family_model": f"family {family}, model {number}" if family and number else None,
        "flags": set(found.get("flags", "").split()),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
