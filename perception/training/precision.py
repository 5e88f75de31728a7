"""Which training precision a machine should use by default.

bf16 autocast halves memory traffic and, where the hardware multiplies bf16 natively,
runs convolutions several times faster: NVIDIA GPUs since Ampere, and x86 CPUs with
AVX512-BF16 or AMX (Intel Xeon since Cooper Lake / Sapphire Rapids). On a 2-core Xeon
with AMX, ``perception bench`` measured resnet18 training at 3.1x the fp32 speed in
bf16 + channels_last.
Elsewhere (older x86, most AMD EPYC before Zen 4) bf16 is emulated and *slower*, so fp32
stays the default there. bf16 keeps fp32's exponent range, so unlike fp16 it needs no
loss scaling; Lightning's ``bf16-mixed`` keeps the weights and optimizer state in fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no ``/proc``)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_CPU_FLAGS)


def default_precision(cuda: bool | None = None, flags: set[str] | None = None) -> str:
    """``"bf16-mixed"`` on a GPU or a CPU with native bf16, else ``"32-true"``."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "bf16-mixed" if cuda or cpu_has_native_bf16(flags) else "32-true"
