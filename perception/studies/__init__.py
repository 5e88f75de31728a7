"""``perception compare``: the studies behind the design (docs/why-deep.md).

Each study is a module ``perception.studies.<name>`` with
``run(out, budget=1.0, seeds=(0, 1)) -> Result`` (``studies.report``); ``run_study``
imports it by name, runs it and saves its JSON and Markdown beside its plot.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from perception.errors import PerceptionError
from perception.studies.report import Result, save

STUDIES: tuple[str, ...] = (
    "shared",
    "deep_vs_wide",
    "gradients",
    "hierarchy",
    "activations",
    "depth_losses",
    "optimizers",
)


def run_study(name: str, out: Path, budget: float = 1.0, seeds: Sequence[int] = (0, 1)) -> Result:
    """Run study ``name`` into ``out`` (``<name>.png``, ``.json``, ``.md``); its ``Result``.

    Raises:
        PerceptionError: ``name`` is not one of ``STUDIES``, or no budget or seed.
    """
    if name not in STUDIES:
        raise PerceptionError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    if not budget > 0 or not seeds:
        raise PerceptionError(f"study {name}: need budget > 0 and a seed, got {budget}, {seeds}")
    module = importlib.import_module(f"perception.studies.{name}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = module.run(out, budget=budget, seeds=tuple(seeds))
    save(result, out)
    return result
