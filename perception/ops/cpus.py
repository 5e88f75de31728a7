"""How many CPUs this process may use, and the threads a CPU runtime gets by default.

``os.cpu_count()`` counts the machine's CPUs; under ``taskset`` or a container's CPU set
the process may run on fewer, and threads or processes sized to the machine then
contend for those few.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The logical CPUs this process may run on (its affinity mask, where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform (macOS)
        return os.cpu_count() or 1


def default_threads(threads: int | None = None, cap: int = 4) -> int:
    """``threads``, or the usable CPUs up to ``cap``: onnxruntime's intra-op threads, and
    what the bench reports they were."""
    return threads or max(1, min(cap, usable_cpus()))
